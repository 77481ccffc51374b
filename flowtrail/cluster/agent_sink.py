"""The agent's cluster sink: `flowtrail agent --sink nats --out nats://H1:4222,... --region R`.

`NatsExporter` implements the agent's exporter interface (flowtrail.agent.exporter.Exporter:
a `name` and a synchronous `export(table, batch_id)` that delivers or raises ExportError /
OSError), so the agent's Delivery spools and retries it like any other destination. Each
batch is published to the region's work stream (`<prefix>.work.<region>`, the subject the
region's collector nodes take work from) through `Bus.publish`, which waits for JetStream's
publish ack and retries under the same id.

* Batch ids: `Nats-Msg-Id` = `<exporter>:<batch id>`, the exporter name taken from the
  batch's own `exporter` column. Delivery's batch ids are unique only per host; with the
  agent's name in front they are unique across agents, and a batch re-sent after a lost
  ack (the spool's retry) is stored once inside the stream's duplicate window.
* nats-py is asyncio: one private event loop runs in a daemon thread and every call is
  submitted to it with `asyncio.run_coroutine_threadsafe` and waited for at most
  `timeout_s`, so a NATS outage costs the agent loop that long per attempt, never a hang.
* The connection is made on the first export (an agent starts even while NATS is down:
  its batches wait in the spool) and then kept; nats-py reconnects by itself.
* Streams are the nodes' to create. A missing work stream fails the export (the batch is
  spooled) with an error that says so.
* A batch bigger than the servers' max_payload is split in halves (ids get `.a` / `.b`),
  as the collector client does on HTTP 413. The split depends only on the batch, so a
  re-sent batch splits the same way and its parts are deduplicated too.

Secrets come from the environment like the collector sink's: FLOWTRAIL_NATS_CREDS (a NATS
credentials file), FLOWTRAIL_NATS_CAFILE (CA bundle for TLS to the servers) and, for servers
that verify clients, FLOWTRAIL_NATS_CERT / FLOWTRAIL_NATS_KEY (the agent's certificate and key).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import nats.errors
import pyarrow as pa
import pyarrow.compute as pc
from nats.js.errors import NoStreamResponseError, NotFoundError

from flowtrail.cluster.bus import Bus, BusConfig, check_region, encode
from flowtrail.errors import ExportError, InputError

CREDS_ENV = "FLOWTRAIL_NATS_CREDS"
CAFILE_ENV = "FLOWTRAIL_NATS_CAFILE"
CERT_ENV = "FLOWTRAIL_NATS_CERT"  # client certificate, for servers that verify clients
KEY_ENV = "FLOWTRAIL_NATS_KEY"
SCHEMES = ("nats://", "tls://")

T = TypeVar("T")


def parse_servers(target: str | None) -> list[str]:
    """`nats://h1:4222,nats://h2:4222` (the agent's --out) → server URLs."""
    if not target:
        raise InputError("--sink nats needs --out nats://HOST:PORT[,nats://HOST:PORT...]")
    servers = [s.strip() for s in target.split(",") if s.strip()]
    bad = [s for s in servers if not s.startswith(SCHEMES) or len(s) <= len("nats://")]
    if not servers or bad:
        raise InputError(
            f"--out {target!r}: expected nats://HOST:PORT (or tls://), comma-separated"
        )
    return servers


def _env_file(var: str) -> str | None:
    value = os.environ.get(var)
    if not value:
        return None
    if not Path(value).is_file():
        raise InputError(f"{var}={value}: no such file")
    return value


class NatsExporter:
    """Publishes each batch to `<prefix>.work.<region>` and waits for JetStream's ack."""

    name = "nats"

    def __init__(self, config: BusConfig, region: str, *, timeout_s: float = 10.0) -> None:
        if timeout_s <= 0:
            raise InputError(f"nats sink timeout {timeout_s}: must be positive")
        self.region = check_region(region)
        self.timeout_s = timeout_s
        self.stats = {
            "published_batches": 0,
            "published_rows": 0,
            "duplicate_batches": 0,  # JetStream had the id already: a re-send, stored once
            "split_batches": 0,
            "disconnects": 0,
            "reconnects": 0,
            "connection_errors": 0,
        }
        self.last_error: str | None = None
        callbacks: dict[str, Any] = {
            # nats-py's default error callback logs a traceback per failed reconnect attempt
            # (every 0.2 s per server during an outage): count and remember instead.
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "closed_cb": self._on_closed,
        }
        self.config = replace(config, connect_options={**callbacks, **config.connect_options})
        self._bus = Bus(self.config)
        self.subject = self._bus.work_subject(self.region)
        self._connected = False
        self._lost = False  # the client closed for good (it stopped reconnecting)
        self._closed = False
        self._lock = threading.Lock()  # one export at a time from the agent's side
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="flowtrail-nats-sink", daemon=True
        )
        self._thread.start()

    @classmethod
    def from_environment(cls, target: str | None, region: str | None) -> NatsExporter:
        """Factory for the agent's exporter registry: servers from --out, region from
        --region, credentials and CA from FLOWTRAIL_NATS_CREDS / FLOWTRAIL_NATS_CAFILE, a
        client certificate from FLOWTRAIL_NATS_CERT / FLOWTRAIL_NATS_KEY."""
        servers = parse_servers(target)
        if not region:
            raise InputError(
                "--sink nats needs --region NAME: batches go to that region's work stream"
            )
        cert, key = _env_file(CERT_ENV), _env_file(KEY_ENV)
        if bool(cert) != bool(key):
            raise InputError(f"{CERT_ENV} and {KEY_ENV} go together")
        config = BusConfig(
            servers=servers,
            # Bounded so that one export stays well inside the exporter's timeout: a
            # failing destination is the spool's to retry, with backoff, not ours.
            publish_timeout_s=2.0,
            publish_attempts=3,
            creds_file=_env_file(CREDS_ENV),
            tls_ca_file=_env_file(CAFILE_ENV),
            tls_cert_file=cert,
            tls_key_file=key,
        )
        return cls(config, region)

    # -- nats-py callbacks (run in the sink's loop thread) ---------------------------------

    async def _on_error(self, exc: Exception) -> None:
        self.stats["connection_errors"] += 1
        self.last_error = f"{type(exc).__name__}: {exc}"

    async def _on_disconnected(self) -> None:
        self.stats["disconnects"] += 1

    async def _on_reconnected(self) -> None:
        self.stats["reconnects"] += 1

    async def _on_closed(self) -> None:
        self._lost = True

    # -- the exporter interface ------------------------------------------------------------

    def export(self, table: pa.Table, batch_id: str, kind: str = "flows") -> None:
        """`kind` dns_answers: onto the region's evidence stream, which every cluster node reads
        and learns answers from (docs/cluster.md), instead of this exporter's subject."""
        if table.num_rows == 0:
            return  # nothing to deliver (and no exporter name to prefix the id with)
        if kind not in ("flows", "dns_answers"):
            raise ExportError(f"NATS sink: cannot send {kind!r} (flows or dns_answers)")
        # flows' ids as before (a re-send dedups alike); answers' apart from them and events'
        tag = "" if kind == "flows" else "dns:"
        msg_id = f"{_exporter_name(table)}:{tag}{batch_id}"
        subject = self.subject if kind == "flows" else self._bus.evidence_subject(self.region)
        self._call(self._send(table, msg_id, kind), f"publish {msg_id} to {subject}")

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the connection and stop the loop thread; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._loop.is_running():
            for coro in (self._bus.close(), _cancel_other_tasks()):
                fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
                try:
                    fut.result(timeout_s)
                except Exception:  # a close that fails or hangs must not keep the agent
                    fut.cancel()
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> NatsExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inside the loop -------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T], what: str) -> T:
        with self._lock:
            if self._closed:
                coro.close()
                raise ExportError(f"NATS sink closed: cannot {what}")
            fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
            try:
                return fut.result(self.timeout_s)
            except TimeoutError as exc:  # (an OSError: before the clause below)
                if fut.done():  # the coroutine's own timeout, not ours
                    raise ExportError(f"NATS: {what}: timed out: {exc}") from exc
                fut.cancel()
                raise ExportError(
                    f"NATS {','.join(self.config.servers)}: {what}: no answer within "
                    f"{self.timeout_s:g} s"
                    + (f" (last connection error: {self.last_error})" if self.last_error else "")
                ) from None
            except (ExportError, OSError):
                raise
            except Exception as exc:
                # nats-py raises several unrelated types; for the agent every one of them is
                # a failed delivery to spool and retry, never a reason to stop capturing.
                raise ExportError(f"NATS: {what}: {type(exc).__name__}: {exc}") from exc

    async def _send(self, table: pa.Table, msg_id: str, kind: str = "flows") -> None:
        if self._lost or not self._connected:
            if self._connected:
                await self._bus.close()
            self._lost = False
            self._connected = False
            await self._bus.connect()
            self._connected = True
        await self._publish(table, msg_id, kind)

    async def _publish(self, table: pa.Table, msg_id: str, kind: str = "flows") -> None:
        try:
            if kind == "dns_answers":
                ack = await self._bus.publish_dns_answers(self.region, table, msg_id)
            else:
                ack = await self._bus.publish(self.subject, encode(table), msg_id)
        except InputError as exc:  # JetStream refused the message (HTTP-400-like)
            raise ExportError(str(exc)) from exc
        except ExportError as exc:
            cause = exc.__cause__
            if isinstance(cause, nats.errors.MaxPayloadError) and table.num_rows > 1:
                self.stats["split_batches"] += 1
                half = table.num_rows // 2
                await self._publish(table.slice(0, half), f"{msg_id}.a", kind)
                await self._publish(table.slice(half), f"{msg_id}.b", kind)
                return
            if isinstance(cause, NoStreamResponseError | nats.errors.NoRespondersError):
                subject = (
                    self._bus.evidence_subject(self.region)
                    if kind == "dns_answers"
                    else self.subject
                )
                await self._explain_missing_stream(exc, subject)
            raise
        self.stats["published_batches"] += 1
        self.stats["published_rows"] += table.num_rows
        self.stats["duplicate_batches"] += int(bool(ack.duplicate))

    async def _explain_missing_stream(self, exc: ExportError, subject: str) -> None:
        """No responders: usually no stream takes the subject. Say so when that is it."""
        try:
            await self._bus.js.find_stream_name_by_subject(subject)
        except NotFoundError:
            raise ExportError(
                f"NATS: no JetStream stream takes {subject}: the region's streams "
                f"must exist first (a `flowtrail cluster-node --region {self.region}` creates "
                "it; check --region)"
            ) from exc
        except Exception:
            return  # the probe failed too: the original error says enough


def _exporter_name(table: pa.Table) -> str:
    """The batch's exporter (all of an agent's rows share it); `-` when the column lacks it."""
    if "exporter" not in table.column_names:
        return "-"
    first = pc.drop_null(table.column("exporter"))
    return str(first[0].as_py()) if len(first) else "-"


async def _cancel_other_tasks() -> None:
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def register(region: str | None) -> None:
    """Make `flowtrail agent --sink nats --out nats://HOST:PORT[,...] --region R` available.

    The region is bound here (the command's --region), so the registry's factory keeps its
    one-argument signature: `factory(--out value)`."""
    from flowtrail.agent.exporter import register_exporter

    register_exporter("nats", lambda target: NatsExporter.from_environment(target, region))
