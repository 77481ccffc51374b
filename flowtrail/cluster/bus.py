"""The NATS JetStream wiring of cluster mode: streams, subjects, publishing, consumers.

Per region three streams (file storage, replicated):

- work (`<prefix>.work.<region>`): agents' flow batches as Arrow IPC. One durable pull
  consumer, shared by the region's collector nodes, hands each batch to one node; the node
  acks only once the batch is fully handled, so a node that dies leaves its batches to be
  redelivered to another. `Nats-Msg-Id` = the batch id lets JetStream drop a re-sent batch
  inside its duplicate window (an agent that retried after a lost publish ack).
- evidence (`<prefix>.evidence.<region>`): every batch of the region once more, as handled
  by the node that took it, with a header naming that node. Every node reads it all, in one
  order, from `now - retention` on (re)start: that is how ownership knowledge is shared
  and rebuilt, with no database of the node's own. The control plane's `events` tables
  and clock marks travel here too, so every node applies them at the same place in the
  same order.
- dead letters (`<prefix>.deadletter.<region>`): work batches a node refused (an extra column
  no sink can hold, a broken contract, unreadable Arrow) or whose decided rows the sink
  refused, with the reason in a header. Acked in the work stream once moved here, so no
  node takes them again; kept as long as work batches, for inspection.

A region split by connection (`--partitions`) has three more: rows, members and progress
(see `Bus.ensure_partition_streams`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import nats
import pyarrow as pa
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    PubAck,
    StorageType,
    StreamConfig,
    StreamState,
)
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

from flowtrail.collector.ipcsize import inflated_bytes
from flowtrail.errors import CapabilityError, ExportError, InputError

log = logging.getLogger("flowtrail.cluster")
SECOND = 1_000_000_000
MSG_ID = "Nats-Msg-Id"
OWNER = "Flowtrail-Owner"  # evidence: the node (incarnation) that decides this batch's rows
CLOCK = "Flowtrail-Clock"  # evidence: a clock mark (ns), no rows
EVENTS = "Flowtrail-Events"  # evidence: a control-plane `events` table, not flows
DNS = "Flowtrail-Dns"  # evidence: an agent's `dns_answers` table, not flows
FORWARDED_FROM = "Flowtrail-Forwarded-From"  # work: rows another region handed over
REASON = "Flowtrail-Reason"  # dead letters: why the batch was put aside
NODE = "Flowtrail-Node"  # dead letters: the node (incarnation) that put it aside
PIECE = "Flowtrail-Piece"  # dead letters: "i/n" when a body too big for one message is split
# Split by connection (NodeConfig.partitions): a runs message on the evidence stream names the
# rows messages of its batch, "<P>:<p>=<seq>,...", P the region's partition count and seq the
# rows stream's sequence of partition p's rows; and its rows' largest received_ns (the clock).
ROWS = "Flowtrail-Rows"
RECEIVED = "Flowtrail-Received"
WORK_DURABLE = "collectors"
JETSTREAM_NOT_ENABLED = 10039  # a 503 like an election's, but retrying never helps
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_region(region: str) -> str:
    """Region names become parts of subjects and stream names: keep them to a safe alphabet."""
    if not _NAME_RE.match(region):
        raise InputError(f"region {region!r}: use 1-64 of A-Z a-z 0-9 _ - (it names NATS streams)")
    return region


@dataclass(frozen=True)
class BusConfig:
    servers: list[str]
    prefix: str = "flowtrail"
    replicas: int = 3
    evidence_retention_ns: int = 1800 * SECOND  # how far back a (re)starting node replays
    work_retention_ns: int = 24 * 3600 * SECOND
    duplicate_window_ns: int = 120 * SECOND
    ack_wait_ns: int = 30 * SECOND  # a silent node's batches go to another after this
    max_ack_pending: int = 20_000  # batches a region's nodes may hold while rows wait
    publish_timeout_s: float = 5.0
    connect_timeout_s: float = 30.0  # the first connection; later ones are retried forever
    # With backoff (0.1 s doubling to 2 s): ~50 s, enough for a stream leader election after
    # a server dies (8 tries, ~9 s, was sometimes too short on a loaded machine).
    publish_attempts: int = 30
    creds_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None  # client certificate, for servers that verify clients
    tls_key_file: str | None = None
    connect_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.servers:
            raise InputError("--nats: at least one server URL is needed")
        if not _NAME_RE.match(self.prefix):
            raise InputError(f"--nats-prefix {self.prefix!r}: use A-Z a-z 0-9 _ -")
        if self.replicas not in (1, 3, 5):
            raise InputError(f"--replicas {self.replicas}: must be 1, 3 or 5")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise InputError("--tls-cert and --tls-key go together")
        if self.creds_file and importlib.util.find_spec("nkeys") is None:
            # nats-py signs the server's nonce with the creds file's seed through nkeys (a
            # dependency of flowtrail: this is for installs that left it out).
            raise CapabilityError(
                "a NATS credentials file needs the nkeys package: pip install 'nats-py[nkeys]'"
            )
        split_auth(self.servers)  # the URLs' credentials must agree


def split_auth(servers: list[str]) -> tuple[list[str], str | None, str | None]:
    """Server URLs without their user:password part, and that user and password decoded.

    nats-py takes user:password from the URL it is connecting to without %-decoding it, and
    the servers a cluster announces (added to the client's list as bare host:port) get no
    credentials at all: after a failover the client could land on one and be refused. So
    the credentials are taken out of the URLs and given to the client once, for every
    server; which also keeps them out of error messages. A user alone is a token.
    """
    bare: list[str] = []
    auths: set[tuple[str | None, str | None]] = set()
    for url in servers:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            bare.append(url)
            continue
        user = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        auths.add((user, password))
        bare.append(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl())
    if len(auths) > 1:
        raise InputError("--nats: the server URLs carry different user:password parts")
    user, password = auths.pop() if auths else (None, None)
    return bare, user, password


def check_creds(path: str) -> None:
    """Refuse a credentials file nats-py could not use, naming it (never its secrets).

    nats-py reads the file only while connecting, and then a missing one is retried until
    the connect bound, one without a seed crashes the client (TypeError) and one without a
    JWT hangs it. It takes the line after each BEGIN marker as is, so CRLF line ends break
    it too.
    """
    import nkeys  # type: ignore[import-untyped]

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"--creds {path}: {exc.strerror or exc}") from exc
    lines = data.split(b"\n")

    def after(marker: bytes) -> bytes | None:
        for i, line in enumerate(lines[:-1]):
            if marker in line:
                return lines[i + 1]
        return None

    jwt, seed = after(b"BEGIN NATS USER JWT"), after(b"BEGIN USER NKEY SEED")
    what = "a NATS credentials file (as nsc writes them)"
    if b"\r" in data:
        raise InputError(f"--creds {path}: has CRLF line ends; nats-py reads only LF")
    if jwt is None or jwt.count(b".") != 2:
        raise InputError(f"--creds {path}: no user JWT after a BEGIN NATS USER JWT line: {what}")
    if seed is None:
        raise InputError(f"--creds {path}: no BEGIN USER NKEY SEED line: {what}")
    try:
        user = bytes(nkeys.from_seed(bytearray(seed)).public_key).decode()
    except Exception as exc:  # nkeys raises its own errors, binascii's, nacl's
        raise InputError(f"--creds {path}: the user nkey seed is not valid: {what}") from exc
    try:
        claims = json.loads(base64.urlsafe_b64decode(jwt.split(b".")[1] + b"=="))
        subject = claims["sub"]
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"--creds {path}: the user JWT does not decode: {what}") from exc
    if subject != user:
        # The server would say only "Authorization Violation".
        raise InputError(f"--creds {path}: the nkey seed is not that of the JWT's user {subject}")


def explain(error: str) -> str:
    """A connection error, with what to do about the usual TLS and authorization ones."""
    hints = (
        ("CERTIFICATE_VERIFY_FAILED", "the servers' certificate is not trusted: give the CA "
         "that signed it (--tls-ca, FLOWTRAIL_NATS_CAFILE)"),
        ("ALERT_BAD_CERTIFICATE", "the servers refused this client's certificate (or its "
         "lack of one): give --tls-cert and --tls-key signed by a CA the servers trust"),
        ("ALERT_CERTIFICATE_REQUIRED", "the servers want a client certificate: give "
         "--tls-cert and --tls-key"),
        ("Authorization Violation", "the servers refused the credentials: check the "
         "user:password in the URL, or --creds"),
    )  # fmt: skip
    for marker, hint in hints:
        if marker in error:
            return f"{error} ({hint})"
    return error


async def _log_nats_error(exc: Exception) -> None:
    log.warning("NATS: %s", exc or type(exc).__name__)


async def _log_reconnected() -> None:
    log.info("NATS: reconnected")


def encode(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


# What one message may become once read. Work batches are at most NATS's max_payload (1 MiB by
# default) on the wire; with buffer compression a few KiB can declare gigabytes.
MAX_INFLATED_BYTES = 64 << 20


def decode(payload: bytes, max_inflated: int = MAX_INFLATED_BYTES) -> pa.Table:
    """The message's table; ValueError, before anything is decompressed, when its buffers
    declare more than `max_inflated` bytes (a compression bomb) or it cannot be walked."""
    size = inflated_bytes(payload)
    if size > max_inflated:
        raise ValueError(f"decompresses to {size} bytes, the limit is {max_inflated}")
    with pa.ipc.open_stream(pa.py_buffer(payload)) as reader:
        return reader.read_all()


def stream_time_ns(msg: Msg) -> int:
    """When JetStream stored the message (its own clock), in ns since the epoch."""
    ts = msg.metadata.timestamp
    return int(ts.timestamp()) * SECOND + ts.microsecond * 1000 if ts else 0


class Bus:
    """One connection to the NATS cluster and the streams of the regions it serves."""

    def __init__(self, config: BusConfig) -> None:
        self.config = config
        self._errors: dict[str, None] = {}  # the client's latest distinct connection errors
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._closing = False
        self.stats = {"published": 0, "publish_retries": 0, "duplicates": 0}

    # -- names ---------------------------------------------------------------------------

    def work_subject(self, region: str) -> str:
        return f"{self.config.prefix}.work.{check_region(region)}"

    def evidence_subject(self, region: str) -> str:
        return f"{self.config.prefix}.evidence.{check_region(region)}"

    def dead_letter_subject(self, region: str) -> str:
        return f"{self.config.prefix}.deadletter.{check_region(region)}"

    def dead_letter_stream(self, region: str) -> str:
        return f"{self.config.prefix}_deadletter_{check_region(region)}"

    def work_stream(self, region: str) -> str:
        return f"{self.config.prefix}_work_{check_region(region)}"

    def evidence_stream(self, region: str) -> str:
        return f"{self.config.prefix}_evidence_{check_region(region)}"

    def rows_subject(self, region: str, partition: int) -> str:
        return f"{self.config.prefix}.rows.{check_region(region)}.{partition}"

    def rows_stream(self, region: str) -> str:
        return f"{self.config.prefix}_rows_{check_region(region)}"

    def members_stream(self, region: str) -> str:
        return f"{self.config.prefix}_members_{check_region(region)}"

    def member_subject(self, region: str, incarnation: str) -> str:
        # hex: an incarnation may hold characters a subject token may not
        return f"{self.config.prefix}.members.{check_region(region)}.{incarnation.encode().hex()}"

    def progress_stream(self, region: str) -> str:
        return f"{self.config.prefix}_progress_{check_region(region)}"

    def progress_subject(self, region: str, partition: int) -> str:
        return f"{self.config.prefix}.progress.{check_region(region)}.{partition}"

    # -- connection ----------------------------------------------------------------------

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("Bus.connect() first")
        return self._js

    async def connect(self) -> None:
        servers, user, password = split_auth(self.config.servers)
        options: dict[str, Any] = {
            "servers": servers,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.2,
            # One line per problem, not nats-py's default traceback every 0.2 s per server.
            "error_cb": _log_nats_error,
            "disconnected_cb": self._log_disconnected,
            "reconnected_cb": _log_reconnected,
            **self.config.connect_options,
        }
        if password is not None:
            options.update(user=user, password=password)
        elif user is not None:
            options["token"] = user
        report = options["error_cb"]

        async def remember_error(exc: Exception) -> None:
            # A refused TLS handshake or login is often followed by a broken pipe or a
            # reset: keep a few distinct ones, so the first-connect error names the cause.
            what = str(exc) or type(exc).__name__
            self._errors.pop(what, None)
            self._errors[what] = None
            while len(self._errors) > 3:
                del self._errors[next(iter(self._errors))]
            await report(exc)

        options["error_cb"] = remember_error
        self._errors.clear()
        if self.config.creds_file:
            check_creds(self.config.creds_file)
            options["user_credentials"] = self.config.creds_file
        if self.config.tls_ca_file or self.config.tls_cert_file:
            import ssl

            try:
                context = ssl.create_default_context(cafile=self.config.tls_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise InputError(f"--tls-ca {self.config.tls_ca_file}: {exc}") from exc
            if self.config.tls_cert_file and self.config.tls_key_file:
                try:
                    context.load_cert_chain(self.config.tls_cert_file, self.config.tls_key_file)
                except (OSError, ssl.SSLError) as exc:
                    raise InputError(
                        f"--tls-cert {self.config.tls_cert_file} / --tls-key "
                        f"{self.config.tls_key_file}: {exc}"
                    ) from exc
            options["tls"] = context
        try:
            self._nc = await _connect_within(options, self.config.connect_timeout_s)
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            why = str(exc) or f"no answer in {self.config.connect_timeout_s:g} s"
            seen = [e for e in self._errors if e not in why]
            if seen:
                why += f"; errors seen: {' | '.join(seen)}"
            raise ExportError(
                f"NATS: cannot connect to {', '.join(servers)}: {explain(why)}"
            ) from exc
        self._js = self._nc.jetstream(timeout=self.config.publish_timeout_s)

    async def _log_disconnected(self) -> None:
        if not self._closing:
            log.warning("NATS: disconnected; reconnecting")

    async def close(self) -> None:
        self._closing = True
        # close, not drain: draining an ordered consumer makes the client recreate it and
        # then time out (nats-py 2.16); every ack this process owes is sent explicitly.
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.close()
            except (OSError, nats.errors.Error) as exc:  # the server went away meanwhile
                log.debug("closing the NATS connection: %s", exc)
        self._nc = self._js = None

    async def ensure_streams(self, regions: list[str], attempts: int = 50) -> None:
        """Create (or keep) each region's streams; retries while the cluster elects."""
        c = self.config
        for region in regions:
            for name, subject, age in (
                (self.work_stream(region), self.work_subject(region), c.work_retention_ns),
                (
                    self.evidence_stream(region),
                    self.evidence_subject(region),
                    c.evidence_retention_ns,
                ),
                (
                    self.dead_letter_stream(region),
                    self.dead_letter_subject(region),
                    c.work_retention_ns,
                ),
            ):
                cfg = StreamConfig(
                    name=name,
                    subjects=[subject],
                    storage=StorageType.FILE,
                    num_replicas=c.replicas,
                    max_age=age / SECOND,
                    duplicate_window=c.duplicate_window_ns / SECOND,
                    discard=DiscardPolicy.OLD,
                )
                try:
                    await self._retry(lambda cfg=cfg: self.js.add_stream(cfg), attempts, name)
                except InputError as exc:  # typically: it exists with other settings
                    raise InputError(
                        f"{exc} (an existing stream keeps its settings: --replicas, "
                        "--evidence-retention and --nats-prefix must match it, or delete it)"
                    ) from exc

    async def ensure_partition_streams(
        self, region: str, partitions: int, member_ttl_ns: int, attempts: int = 50
    ) -> None:
        """The streams of a region split by connection (docs/cluster.md):

        - rows (`<prefix>.rows.<region>.<p>`): each batch's rows, one message per partition,
          kept as long as evidence (runs messages point at them by sequence);
        - members (`<prefix>.members.<region>.<node>`): one message per live node, renewed
          well within `member_ttl_ns`, the stream's max age: a node that stops renewing
          (kill -9) drops out when its last message expires;
        - progress (`<prefix>.progress.<region>.<p>`): per partition, the evidence sequence
          below which every decided row was written, so a node taking a partition over does
          not write those rows again.
        The partition count is kept in the rows stream's description; a node configured with
        another count is refused (partitions would be owned twice or never).
        """
        c = self.config
        described = f"partitions={partitions}"
        for name, subject, age, per_subject, description in (
            (
                self.rows_stream(region),
                f"{c.prefix}.rows.{region}.*",
                c.evidence_retention_ns,
                -1,
                described,
            ),
            (
                self.members_stream(region),
                f"{c.prefix}.members.{region}.*",
                member_ttl_ns,
                1,
                None,
            ),
            (self.progress_stream(region), f"{c.prefix}.progress.{region}.*", 0, 1, None),
        ):
            cfg = StreamConfig(
                name=name,
                subjects=[subject],
                storage=StorageType.FILE,
                num_replicas=c.replicas,
                max_age=age / SECOND,
                max_msgs_per_subject=per_subject,
                duplicate_window=min(c.duplicate_window_ns, age or c.duplicate_window_ns) / SECOND,
                discard=DiscardPolicy.OLD,
                description=description,
            )
            try:
                await self._retry(lambda cfg=cfg: self.js.add_stream(cfg), attempts, name)
            except InputError as exc:
                raise InputError(
                    f"{exc} (an existing stream keeps its settings: --partitions, "
                    "--member-ttl, --replicas and --evidence-retention must match it)"
                ) from exc

    async def get_rows(self, region: str, seq: int) -> bytes | None:
        """A rows message by its sequence; None once it has aged out of the stream."""
        stream = self.rows_stream(region)

        async def get() -> bytes | None:
            try:
                msg = await self.js.get_msg(stream, seq)
            except NotFoundError:
                return None
            return bytes(msg.data or b"")

        got: bytes | None = await self._retry(get, 50, f"rows {seq} of {stream}")
        return got

    async def members(self, region: str) -> list[str]:
        """The incarnations of the region's live nodes (their member messages not expired)."""
        stream = self.members_stream(region)
        info = await self._retry(
            lambda: self.js.stream_info(stream, subjects_filter=">"), 50, f"members of {region}"
        )
        subjects = info.state.subjects or {}
        return sorted(bytes.fromhex(s.rsplit(".", 1)[1]).decode() for s in subjects)

    async def progress(self, region: str, partitions: int) -> list[int]:
        """Per partition, the evidence sequence below which its rows were written (0: none)."""
        done = [0] * partitions
        for p in range(partitions):
            subject = self.progress_subject(region, p)

            async def last(subject: str = subject) -> int:
                try:
                    msg = await self.js.get_msg(self.progress_stream(region), subject=subject)
                except NotFoundError:
                    return 0
                return int(msg.data or b"0")

            done[p] = await self._retry(last, 50, f"progress of {subject}")
        return done

    async def _retry(self, call: Any, attempts: int, what: str) -> Any:
        delay = 0.1
        for attempt in range(attempts):
            try:
                return await call()
            except (TimeoutError, NoStreamResponseError, APIError, nats.errors.Error) as exc:
                if isinstance(exc, APIError) and exc.code == 400:
                    raise InputError(f"NATS refused {what}: {exc}") from exc
                if isinstance(exc, APIError) and exc.err_code == JETSTREAM_NOT_ENABLED:
                    raise InputError(
                        f"NATS refused {what}: JetStream is not enabled for this account "
                        "(grant it JetStream limits, e.g. nsc edit account --js-disk-storage -1)"
                    ) from exc
                if isinstance(exc, nats.errors.MaxPayloadError):  # the same size fails again
                    raise ExportError(f"NATS refused {what}: {exc}") from exc
                if attempt == attempts - 1:
                    raise ExportError(f"NATS: {what} failed after {attempts} tries: {exc}") from exc
                self.stats["publish_retries"] += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    # -- publishing ----------------------------------------------------------------------

    async def publish(
        self, subject: str, payload: bytes, msg_id: str, headers: dict[str, str] | None = None
    ) -> PubAck:
        """Publish and wait for JetStream's ack; retried with the same id (deduplicated)."""
        hdrs = {MSG_ID: msg_id, **(headers or {})}
        ack: PubAck = await self._retry(
            lambda: self.js.publish(
                subject, payload, timeout=self.config.publish_timeout_s, headers=hdrs
            ),
            self.config.publish_attempts,
            f"publish {msg_id} to {subject}",
        )
        self.stats["published"] += 1
        if ack.duplicate:
            self.stats["duplicates"] += 1
        return ack

    async def publish_batch(self, region: str, table: pa.Table, batch_id: str) -> PubAck:
        """An agent's batch into a region's work stream (at least once; dedup by batch id)."""
        return await self.publish(self.work_subject(region), encode(table), batch_id)

    async def publish_clock(self, region: str, now_ns: int, mark_id: str) -> PubAck:
        """A clock mark on the evidence stream: nodes' data clocks advance to now_ns."""
        return await self.publish(
            self.evidence_subject(region), b"", mark_id, {CLOCK: str(int(now_ns))}
        )

    async def publish_events(self, region: str, events: pa.Table, batch_id: str) -> PubAck:
        """A control-plane `events` table onto a region's evidence stream (dedup by id)."""
        return await self.publish(
            self.evidence_subject(region), encode(events), batch_id, {EVENTS: "1"}
        )

    async def publish_dns_answers(self, region: str, answers: pa.Table, batch_id: str) -> PubAck:
        """An agent's `dns_answers` table onto a region's evidence stream (dedup by id): every
        node learns them, as it learns events."""
        return await self.publish(
            self.evidence_subject(region), encode(answers), batch_id, {DNS: "1"}
        )

    @property
    def max_payload(self) -> int:
        """The largest message the servers take (their max_payload; 1 MiB by default)."""
        return int(self._nc.max_payload) if self._nc is not None else 1 << 20

    async def consumer_ack_wait_s(
        self, sub: JetStreamContext.PullSubscription, fallback_ns: int
    ) -> float:
        """The ack wait the shared consumer really has: whoever created it set it, and a
        node's own --ack-wait does not change an existing consumer."""
        try:
            info = await sub.consumer_info()
            got = info.config.ack_wait
        except Exception as exc:  # a server restarting: our own setting will do
            log.debug("consumer info failed: %s", exc)
            got = None
        mine = fallback_ns / SECOND
        if got is not None and abs(got - mine) > 0.001:
            log.warning("the work consumer's ack wait is %.1f s, not --ack-wait %.1f s", got, mine)
        return float(got) if got else mine

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def evidence_state(self, region: str) -> StreamState:
        """A region's evidence stream now: messages, first and last sequence (retried
        through a leader election)."""
        info = await self._retry(
            lambda: self.js.stream_info(self.evidence_stream(region)), 50, "stream info"
        )
        state: StreamState = info.state
        return state

    async def evidence_last_seq(self, region: str) -> int:
        """The sequence of the newest message in a region's evidence stream (0: none)."""
        return int((await self.evidence_state(region)).last_seq)

    async def require_streams(self, regions: list[str]) -> None:
        """Refuse at once, saying why, when a region has no streams (no node created them)."""
        for region in regions:
            try:
                await self.js.stream_info(self.evidence_stream(region))
            except NotFoundError as exc:
                raise ExportError(
                    f"no stream {self.evidence_stream(region)} on the NATS servers: start a "
                    f"`flowtrail cluster-node --region {region}` first (nodes create them)"
                ) from exc

    async def evidence_count(self, region: str) -> int:
        """Messages in a region's evidence stream now."""
        return int((await self.evidence_state(region)).messages)

    # -- consuming -----------------------------------------------------------------------

    async def work_consumer(self, region: str) -> JetStreamContext.PullSubscription:
        """The region's shared durable pull consumer: each batch goes to one node."""
        c = self.config
        cfg = ConsumerConfig(
            durable_name=WORK_DURABLE,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=c.ack_wait_ns / SECOND,
            max_ack_pending=c.max_ack_pending,
            max_deliver=-1,
        )
        sub: JetStreamContext.PullSubscription = await self._retry(
            lambda: self.js.pull_subscribe(
                self.work_subject(region),
                durable=WORK_DURABLE,
                stream=self.work_stream(region),
                config=cfg,
            ),
            50,
            f"work consumer of {region}",
        )
        return sub

    async def evidence_consumer(
        self, region: str, since_ns: int | None = None
    ) -> JetStreamContext.PushSubscription:
        """An ordered, ephemeral view of the whole evidence stream, from since_ns on.

        Ordered consumers are recreated by the client after a gap or a server loss, so a
        node sees every message once, in stream order.
        """
        if since_ns is None:
            policy, start = DeliverPolicy.ALL, None
        else:
            policy = DeliverPolicy.BY_START_TIME
            start = datetime.fromtimestamp(since_ns / SECOND, UTC)
        cfg = ConsumerConfig(deliver_policy=policy, opt_start_time=start)
        sub: JetStreamContext.PushSubscription = await self._retry(
            lambda: self.js.subscribe(
                self.evidence_subject(region),
                stream=self.evidence_stream(region),
                ordered_consumer=True,
                config=cfg,
                idle_heartbeat=2.0,
            ),
            50,
            f"evidence consumer of {region}",
        )
        return sub


async def _connect_within(options: dict[str, Any], timeout_s: float) -> Client:
    """A first connection, or TimeoutError after `timeout_s`.

    nats-py retries a first connection forever when reconnects are unlimited, and a
    cancellation that lands while it tidies up after a failed try is swallowed (its _close
    catches CancelledError), so asyncio.wait_for could wait on it for good: seen as a node
    refused by the servers still running 90 s past a 3 s bound. Cancel until it ends.
    The same when the caller gives up first (the agent's sink bounds each export): a
    connect left running would open a connection nobody uses once the servers answer.
    """
    nc = Client()
    task = asyncio.ensure_future(nc.connect(**options))
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        await _abandon(nc, task)
        raise
    if task in done:
        task.result()  # its error, if the servers refused us for good
        return nc
    await _abandon(nc, task)
    raise TimeoutError


async def _abandon(nc: Client, task: asyncio.Future[None]) -> None:
    """End a first connect that is no longer wanted, and its client."""
    for _ in range(50):  # ~10 s; should it never end, it is left behind
        task.cancel()
        await asyncio.wait({task}, timeout=0.2)
        if task.done():
            with contextlib.suppress(BaseException):  # its outcome no longer matters
                task.result()
            break
    # Closing may wait on that same left-behind task: bound it too, without waiting for a
    # cancellation it might swallow (asyncio.wait, not wait_for).
    closing = asyncio.ensure_future(nc.close())
    await asyncio.wait({closing}, timeout=5)
    if closing.done():
        with contextlib.suppress(BaseException):
            closing.result()
    else:
        closing.cancel()
