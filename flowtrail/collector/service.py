"""The collector's core, free of transport: accept batches, attribute them, store the results.

    ingest(kind, token, body, batch_id)   auth → read → limits → checks → log (fsync) → engine
    tick(now)                             decide what can be decided → sink → mark stored
    start() / stop()                      replay the log, then tick every `tick_ns` in a thread

Row ids: every accepted flow row gets a number from the write-ahead log (in a column the
sink never sees). After the sink takes rows, their ids go back into the log as a `stored`
record, so a restart re-feeds every logged row to a fresh engine (rebuilding ownership state
from recent data) but stores only rows not stored before. Ids never repeat: a replay goes on
above the highest id that any record left in the log names, `stored` records included.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.collector.claims import check_claims
from flowtrail.collector.client import ipc_bytes
from flowtrail.collector.door import ROW_ID, Limits, Refusal, check, read_ipc
from flowtrail.collector.ipcsize import inflated_bytes
from flowtrail.collector.metrics import Metrics
from flowtrail.collector.quarantine import Quarantine
from flowtrail.collector.ratelimit import RowRateLimit
from flowtrail.collector.sink import NamedSink, Sink, refuses_rows
from flowtrail.collector.tokens import Tokens
from flowtrail.collector.wal import Record, WriteAheadLog
from flowtrail.engine.attributor import Settings
from flowtrail.engine.replay import split_listening
from flowtrail.engine.stream import COALESCE_ROWS, StreamingAttribution
from flowtrail.schema import FLOWS

log = logging.getLogger(__name__)

SECOND = 1_000_000_000
KINDS = ("flows", "events", "dns_answers")
# What a token must be allowed to send to send each kind: DNS answers come from the agents
# that send flows, with the same token.
KIND_OF_TOKEN = {"flows": "flows", "events": "events", "dns_answers": "flows"}
IN_FLIGHT, DURABLE = 0, 1
# A logged batch was acknowledged: replay re-checks its contract types but not limits that a
# changed configuration may have narrowed since (that would drop acknowledged rows).
REPLAY_LIMITS = Limits(max_rows=2**62, max_future_ns=2**62, max_age_ns=2**62)


@dataclass(frozen=True)
class CollectorConfig:
    limits: Limits = field(default_factory=Limits)
    settings: Settings = field(default_factory=Settings)
    rate_rows_per_s: float = 2_000_000.0
    burst_rows: float = 4_000_000.0
    tick_ns: int = SECOND
    keep_log_ns: int = 15 * 60 * SECOND  # stored rows stay in the log this long, for restarts
    segment_bytes: int = 64 << 20
    segment_age_ns: int = 30 * SECOND
    fsync: bool = True
    quarantine_bytes: int = 256 << 20
    remembered_batches: int = 200_000  # batch ids kept to answer re-sends idempotently


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    retry_after_s: float | None = None

    def json(self) -> bytes:
        return (json.dumps(self.body) + "\n").encode()


@dataclass
class _Segment:
    first_row: int
    outstanding: int = 0  # flow rows not yet stored
    newest_ns: int = 0  # latest receive time of a record in it


class Collector:
    def __init__(
        self,
        config: CollectorConfig,
        *,
        tokens: Tokens,
        wal: WriteAheadLog,
        sink: Sink,
        quarantine: Quarantine,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.config = config
        self.tokens, self.wal, self.sink, self.quarantine = tokens, wal, sink, quarantine
        self.clock = clock
        self.metrics = Metrics()
        self.rate = RowRateLimit(config.rate_rows_per_s, config.burst_rows)
        self.engine = StreamingAttribution(config.settings, coalesce_rows=COALESCE_ROWS)
        self._engine_lock = threading.Lock()
        self._sink_lock = threading.Lock()
        self._seen_lock = threading.Lock()
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._segments: dict[int, _Segment] = {}
        self._backlog: list[pa.Table] = []  # decided, not yet taken by the sink
        self._already_stored = np.empty(0, np.int64)  # replayed rows stored before the crash
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_ns = 0
        self.last_tick_ns = 0
        self.last_sink_error: str | None = None
        self.last_tick_error: str | None = None
        self.unreadable_log_records = 0
        self._next_maintenance = 0
        self.metrics.add_live(self._live)

    # -- lifetime ----------------------------------------------------------------------
    def start(self, *, background: bool = True) -> None:
        self.recover()
        self.started_ns = self.last_tick_ns = self.clock()  # healthy until ticks stall
        if background:
            self._thread = threading.Thread(target=self._loop, name="collector-tick", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.tick(self.clock())  # what is decidable now goes out; the rest waits in the log
        self.wal.close()
        self.sink.close()

    def _loop(self) -> None:
        tick_s = self.config.tick_ns / SECOND
        while not self._stop.wait(tick_s):
            self._guarded_tick()

    def _guarded_tick(self) -> None:
        """One tick whose failure is counted, logged and retried, never the thread's end.

        Everything acknowledged is in the log, so a tick that raises loses nothing: the next one
        tries again. A dead tick thread would only show as stale health, with no cause.
        """
        try:
            self.tick(self.clock())
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if error != self.last_tick_error:  # once per distinct error, not once a tick
                log.exception("collector tick failed (retried next tick)")
            self.last_tick_error = error
            self.metrics.tick_failures.inc()
        else:
            self.last_tick_error = None

    # -- replay ------------------------------------------------------------------------
    def recover(self) -> None:
        """Re-feed the log to the engine; remember which rows were already stored."""
        now = self.clock()
        stored_runs: list[npt.NDArray[np.int64]] = []
        firsts: dict[int, int | None] = {}
        ends: dict[int, int] = {}
        next_row = 0
        lowest: int | None = None
        for rec in self.wal.replay():
            h = rec.header
            kind = str(h.get("kind"))
            firsts.setdefault(rec.segment, None)
            seg = self._segments.setdefault(rec.segment, _Segment(first_row=0))
            if kind == "stored":
                runs = np.frombuffer(rec.body, np.int64).reshape(-1, 2)
                if len(runs):
                    # A mark may outlive the segment of the rows it names: new ids must
                    # start above it, or it would claim them on a later replay.
                    next_row = max(next_row, int((runs[:, 0] + runs[:, 1]).max()))
                name = h.get("name")
                if name is None or (isinstance(self.sink, NamedSink) and self.sink.has(name)):
                    stored_runs.append(runs)
                continue
            received = int(h["recv"])
            raw: pa.Table | None = None
            try:
                where = f"log segment {rec.segment}"
                raw = read_ipc(rec.body, where)
                data = check(kind, raw, h["exporter"], received, REPLAY_LIMITS, where)
            except Refusal as r:
                if raw is None:
                    self.unreadable_log_records += 1  # it passed at the door: the disk changed
                    continue
                # Acknowledged under an older, looser door (an extra column no sink can
                # hold): put aside, never fed to the engine, so it cannot stop storage.
                self._refused_in_log(rec, r, raw.num_rows)
                if kind == "flows" and "row" in h:  # its row ids stay used
                    next_row = ends[rec.segment] = max(next_row, int(h["row"]) + raw.num_rows)
                continue
            seg.newest_ns = max(seg.newest_ns, received)
            self._remember(h["exporter"], h.get("batch"))
            if kind == "flows":
                first = int(h["row"])
                if firsts[rec.segment] is None:
                    firsts[rec.segment] = first
                lowest = first if lowest is None else lowest
                self._submit_flows(data, first, received)
                seg.outstanding += data.num_rows
                ends[rec.segment] = first + data.num_rows
                next_row = max(next_row, ends[rec.segment])
            elif kind == "dns_answers":
                self._submit_dns(data)
            else:
                self._submit_events(data, received)
            self.metrics.rows_replayed.labels(kind).inc(data.num_rows)
        # A segment without flow rows starts where the rows before it ended.
        carry = lowest or 0
        for s in sorted(firsts):
            seg_first = firsts[s]
            self._segments[s].first_row = seg_first if seg_first is not None else carry
            carry = ends.get(s, carry)
        if stored_runs and lowest is not None:
            ids = np.unique(_expand_runs(np.concatenate(stored_runs)))
            ids = ids[ids >= lowest]  # marks for rows of segments already deleted
            self._already_stored = ids
            self._count_stored(ids)
        self.engine.read()  # the state rebuilt from the log, whole
        self.wal.open(now, next_row)
        self._segments.setdefault(self.wal.current_segment, _Segment(first_row=next_row))
        self._forget_old_segments(now)

    def _refused_in_log(self, rec: Record, r: Refusal, rows: int) -> None:
        h = rec.header
        self.metrics.log_refused.labels(r.reason).inc()
        self.metrics.log_refused_rows.labels(r.reason).inc(rows)
        note = {"reason": r.reason, "error": r.message, "exporter": h.get("exporter"),
                "batch": h.get("batch"), "rows": rows, "received_ns": h.get("recv"),
                "from_log_segment": rec.segment}  # fmt: skip
        # Named by the record, so the replays before its segment is deleted keep it once.
        name = f"{int(h['recv']):020d}-log-{rec.segment}-{h.get('row', h.get('batch'))}"
        if self.quarantine.keep(rec.body, note, name=name) is not None:
            self.metrics.quarantined.inc()

    # -- ingest ------------------------------------------------------------------------
    def authenticate(self, kind: str, token: str | None) -> Answer | str:
        """The exporter name for this token and kind, or the refusal to send."""
        ident = self.tokens.lookup(token)
        if ident is None:
            self.metrics.refused.labels("unauthenticated").inc()
            return Answer(401, {"error": "missing or unknown bearer token"})
        if KIND_OF_TOKEN.get(kind, kind) not in ident.kinds:
            self.metrics.refused.labels("forbidden_kind").inc()
            return Answer(
                403, {"error": f"exporter {ident.exporter!r} may not send {kind} (token kinds)"}
            )
        return ident.exporter

    def refuse_unread(self, reason: str, status: int, message: str) -> Answer:
        """A refusal decided before the body was read (size limits, bad requests)."""
        self.metrics.refused.labels(reason).inc()
        return Answer(status, {"error": message, "reason": reason})

    def ingest(
        self,
        kind: str,
        token: str | None,
        body: bytes,
        batch_id: str | None,
        *,
        max_inflated: int | None = None,
    ) -> Answer:
        """`max_inflated`: refuse (413) a body whose batches declare more bytes than this once
        decompressed, before any of it is decompressed."""
        began = time.perf_counter()
        who = self.authenticate(kind, token)
        if isinstance(who, Answer):
            return who
        exporter = who
        now = self.clock()
        where = f"batch {batch_id or '(no id)'} from {exporter}"
        rows = 0
        try:
            if max_inflated is not None:
                _check_inflated(body, max_inflated, where)
            raw = read_ipc(body, where)
            rows = raw.num_rows
            if rows > self.config.limits.max_rows or rows > self.config.burst_rows:
                limit = int(min(self.config.limits.max_rows, self.config.burst_rows))
                raise Refusal(
                    413, "too_many_rows",
                    f"{where}: {rows} rows, the limit is {limit}; send smaller batches",
                    quarantine=False,
                )  # fmt: skip
            wait = self.rate.take(exporter, rows)
            if wait > 0:
                self.metrics.refused.labels("rate_limited").inc()
                self.metrics.refused_rows.labels("rate_limited").inc(rows)
                return Answer(
                    429,
                    {
                        "error": f"{where}: exporter {exporter!r} is over its rate of "
                        f"{self.config.rate_rows_per_s:.0f} rows/s; retry later",
                        "reason": "rate_limited",
                    },
                    retry_after_s=wait,
                )
            data = check(kind, raw, exporter, now, self.config.limits, where)
            claimable = self.tokens.ranges_of(exporter) if kind == "flows" else None
            if claimable is not None:
                check_claims(data, claimable, exporter, where)
        except Refusal as r:
            return self._refused(r, body, exporter, batch_id, rows)
        if batch_id and not self._claim(exporter, batch_id):
            with self._seen_lock:
                state = self._seen.get((exporter, batch_id))
            if state != DURABLE:
                self.metrics.refused.labels("in_flight").inc()
                return Answer(
                    409, {"error": f"{where}: the same batch is being logged now; retry"},
                    retry_after_s=1.0,
                )  # fmt: skip
            self.metrics.duplicates.inc()
            return Answer(200, {"rows": rows, "duplicate": True})
        header = {"kind": kind, "exporter": exporter, "batch": batch_id, "recv": now}
        try:
            done = self.wal.append(header, body, rows if kind == "flows" else 0, now)
            self.wal.sync(done.position)
        except OSError as exc:
            self._unclaim(exporter, batch_id)
            self.metrics.refused.labels("log_failed").inc()
            return Answer(503, {"error": f"cannot log the batch durably: {exc}"})
        if batch_id:
            with self._seen_lock:
                self._seen[(exporter, batch_id)] = DURABLE
        self._note_segment(done.segment, done.first_row, now)
        if kind == "flows":
            self._submit_flows(data, done.first_row, now, segment=done.segment)
        elif kind == "dns_answers":
            self._submit_dns(data)
        else:
            self._submit_events(data, now)
        self.metrics.rows_in.labels(kind).inc(rows)
        self.metrics.batches_in.labels(kind).inc()
        self.metrics.latency.labels(kind).observe(time.perf_counter() - began)
        return Answer(200, {"rows": rows})

    def _refused(
        self, r: Refusal, body: bytes, exporter: str, batch_id: str | None, rows: int
    ) -> Answer:
        self.metrics.refused.labels(r.reason).inc()
        self.metrics.refused_rows.labels(r.reason).inc(rows)
        answer: dict[str, Any] = {"error": r.message, "reason": r.reason}
        if r.quarantine:
            note = {"reason": r.reason, "status": r.status, "error": r.message,
                    "exporter": exporter, "batch": batch_id, "rows": rows,
                    "received_ns": self.clock()}  # fmt: skip
            name = self.quarantine.keep(body, note)
            if name is not None:
                self.metrics.quarantined.inc()
                answer["quarantined_as"] = name
        return Answer(r.status, answer)

    def _claim(self, exporter: str, batch_id: str) -> bool:
        key = (exporter, batch_id)
        with self._seen_lock:
            if key in self._seen:
                return False
            self._seen[key] = IN_FLIGHT
            while len(self._seen) > self.config.remembered_batches:
                self._seen.popitem(last=False)
            return True

    def _unclaim(self, exporter: str, batch_id: str | None) -> None:
        if batch_id:
            with self._seen_lock:
                self._seen.pop((exporter, batch_id), None)

    def _remember(self, exporter: str, batch_id: str | None) -> None:
        if batch_id:
            self._claim(exporter, batch_id)
            with self._seen_lock:
                self._seen[(exporter, batch_id)] = DURABLE

    def _note_segment(self, segment: int, first_row: int, now: int) -> None:
        with self._engine_lock:
            seg = self._segments.setdefault(segment, _Segment(first_row=first_row))
            seg.newest_ns = max(seg.newest_ns, now)

    def _submit_flows(
        self, data: pa.Table, first_row: int, received: int, segment: int | None = None
    ) -> None:
        n = data.num_rows
        # received_ns is this collector's clock, whatever the sender wrote there: it sets
        # how long a flow may wait, so a sender must not be able to stretch or skip that.
        recv = FLOWS.column("received_ns").field
        stamp = pa.array(np.full(n, received, np.int64))
        names = data.column_names
        if recv.name in names:
            data = data.set_column(names.index(recv.name), recv, stamp)
        else:
            data = data.append_column(recv, stamp)
        ids = pa.array(np.arange(first_row, first_row + n, dtype=np.int64))
        data = data.append_column(pa.field(ROW_ID, pa.int64()), ids)
        with self._engine_lock:
            self.engine.submit_flows(data, received)
            if segment is not None:
                self._segments[segment].outstanding += n

    def _submit_events(self, data: pa.Table, received: int) -> None:
        with self._engine_lock:
            self.engine.submit_events(data, received)

    def _submit_dns(self, data: pa.Table) -> None:
        with self._engine_lock:
            self.engine.submit_dns(data)

    # -- decisions -----------------------------------------------------------------------
    def tick(self, now: int) -> int:
        """Decide, store, mark stored; returns rows stored now."""
        with self._engine_lock:
            decided = self.engine.tick(now)
        with self._sink_lock:
            for table in decided:
                table = self._drop_listening(table)
                table = self._drop_already_stored(table)
                if table.num_rows:
                    self._observe(table)
                    self._backlog.append(table)
            stored = self._flush(now)
            self._maintain(now)
        self.last_tick_ns = now
        with self._engine_lock:
            self._forget_old_segments(now)
        return stored

    def _maintain(self, now: int) -> None:
        """Let a sink with retention (the Store) delete what has aged out, once a minute."""
        if now < self._next_maintenance:
            return
        self._next_maintenance = now + 60 * SECOND
        apply = getattr(self.sink, "apply_retention", None)
        if apply is None:
            return
        try:
            self.metrics.rows_expired.inc(int(apply(now)))
        except Exception as exc:  # retention is housekeeping: report, never stop ingest
            self.metrics.sink_failures.inc()
            self.last_sink_error = f"retention: {type(exc).__name__}: {exc}"

    def _drop_listening(self, table: pa.Table) -> pa.Table:
        """Listeners' rows were heartbeats for the engine: done once decided, never stored.
        Not marked in the log, so a restart learns from them again."""
        table, heard = split_listening(table)
        if heard.num_rows:
            with self._engine_lock:
                self._count_stored(np.asarray(heard.column(ROW_ID).to_numpy()))
            self.metrics.rows_listening.inc(heard.num_rows)
        return table

    def _drop_already_stored(self, table: pa.Table) -> pa.Table:
        if len(self._already_stored) == 0:
            return table
        ids = np.asarray(table.column(ROW_ID).to_numpy())
        hit = np.isin(ids, self._already_stored, assume_unique=True)
        if not hit.any():
            return table
        self._already_stored = np.setdiff1d(self._already_stored, ids[hit], assume_unique=True)
        return table.filter(pa.array(~hit))

    def _observe(self, table: pa.Table) -> None:
        waited = np.asarray(
            pc.subtract(table.column("attributed_ns"), table.column("received_ns")).to_numpy()
        )
        self.metrics.wait.observe_ns(np.maximum(waited, 0))

    def _flush(self, now: int) -> int:
        if not self._backlog:
            return 0
        tables = self._backlog
        if len(tables) > 1:
            try:
                together = pa.concat_tables(tables, promote_options="permissive")
            except pa.ArrowException:
                together = None  # extra columns of clashing types: one write each
            if together is not None and self._write(together, now) is None:
                self._backlog = []
                return int(together.num_rows)
        # One at a time: a batch the sink refuses goes aside alone, the others are stored.
        written = 0
        for i, table in enumerate(tables):
            error = self._write(table, now)
            if error is None:
                written += table.num_rows
            elif refuses_rows(error) and self._put_aside(table, error, now):
                continue
            else:  # the sink's own trouble: keep the rows, retry next tick
                self._backlog = tables[i:]
                return written
        self._backlog = []
        return written

    def _write(self, table: pa.Table, now: int) -> Exception | None:
        """Write decided rows and mark them stored; the sink's exception if it failed."""
        ids = np.asarray(table.column(ROW_ID).to_numpy())
        rows = table.drop_columns([ROW_ID])
        try:
            if isinstance(self.sink, NamedSink):
                # Intent first: the file's existence later decides whether these rows
                # were stored.
                name = self.sink.next_name()
                self._log_stored(ids, now, name)
                self.sink.write_named(rows, name)
            else:
                self.sink.write(rows)  # idempotent: a crash before the mark re-writes
                self._log_stored(ids, now, None)
        except Exception as exc:  # classified by the caller (refuses_rows)
            self.metrics.sink_failures.inc()
            self.last_sink_error = f"{type(exc).__name__}: {exc}"
            return exc
        self.last_sink_error = None
        with self._engine_lock:
            self._count_stored(ids)
        self.metrics.rows_out.inc(table.num_rows)
        return None

    def _put_aside(self, table: pa.Table, error: Exception, now: int) -> bool:
        """Decided rows the sink refuses: kept in quarantine with the reason, marked done in
        the log (a restart does not try them again), counted."""
        ids = np.asarray(table.column(ROW_ID).to_numpy())
        rows = table.drop_columns([ROW_ID])
        exporters = pc.unique(rows.column("exporter")).to_pylist()
        note = {"reason": "sink_refused", "error": f"{type(error).__name__}: {error}",
                "exporters": exporters, "rows": rows.num_rows, "decided_ns": now}  # fmt: skip
        try:
            body = ipc_bytes(rows)
        except (pa.ArrowException, ValueError) as exc:  # unwritable even as Arrow: note only
            note["error"] += f"; not kept: {exc}"
            body = b""
        try:
            self._log_stored(ids, now, None)
        except OSError as exc:  # the log cannot take the mark: try again next tick
            self.last_sink_error = f"marking refused rows: {exc}"
            return False
        if self.quarantine.keep(body, note) is not None:
            self.metrics.quarantined.inc()
        with self._engine_lock:
            self._count_stored(ids)
        self.metrics.sink_refused.inc()
        self.metrics.sink_refused_rows.inc(rows.num_rows)
        self.last_sink_error = None  # the sink works; these rows were its only trouble
        return True

    def _log_stored(self, ids: npt.NDArray[np.int64], now: int, name: str | None) -> None:
        runs = _runs(np.sort(ids))
        header: dict[str, Any] = {"kind": "stored", "recv": now}
        if name is not None:
            header["name"] = name
        done = self.wal.append(header, runs.tobytes(), 0, now)
        self.wal.sync(done.position)

    def _count_stored(self, ids: npt.NDArray[np.int64]) -> None:
        if not self._segments or len(ids) == 0:
            return
        segs = sorted(self._segments)
        firsts = np.array([self._segments[s].first_row for s in segs], np.int64)
        which = np.searchsorted(firsts, ids, side="right") - 1
        counts = np.bincount(which[which >= 0], minlength=len(segs))
        for s, n in zip(segs, counts, strict=True):
            self._segments[s].outstanding -= int(n)

    def _forget_old_segments(self, now: int) -> None:
        """Delete the oldest segments once all their rows are stored and they are old enough."""
        for s in sorted(self._segments):
            seg = self._segments[s]
            if s == self.wal.current_segment or seg.outstanding > 0:
                break
            if seg.newest_ns > now - self.config.keep_log_ns:
                break
            self.wal.delete(s)
            del self._segments[s]

    # -- health --------------------------------------------------------------------------
    def _live(self) -> dict[str, object]:
        with self._engine_lock:
            self.engine.read()
            c = self.engine.engine.counters
            waiting = self.engine.waiting
            entries = len(self.engine.engine.ranges)
            decided = dict(c.decided)
            unattributed = dict(c.unattributed)
            segments = len(self._segments)
        decided["unattributed"] = sum(unattributed.values())
        return {
            "waiting_flows": waiting,
            "ownership_entries": entries,
            "wal_bytes": self.wal.bytes_on_disk(),
            "wal_segments": segments,
            "sink_backlog_rows": sum(t.num_rows for t in self._backlog),
            "log_records_unreadable": self.unreadable_log_records + self.wal.torn_records,
            "decided": decided,
            "unattributed": unattributed,
            "wait": self.metrics.wait,
        }

    def health(self) -> Answer:
        now = self.clock()
        stale = self._thread is not None and now - self.last_tick_ns > 10 * self.config.tick_ns
        ok = not stale and self.last_sink_error is None and self.last_tick_error is None
        with self._engine_lock:
            waiting = self.engine.waiting
        body = {
            "ok": ok,
            "waiting_flows": waiting,
            "sink_error": self.last_sink_error,
            "tick_error": self.last_tick_error,
            "last_tick_age_s": (now - self.last_tick_ns) / SECOND if self.last_tick_ns else None,
        }
        return Answer(200 if ok else 503, body)


def _runs(ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Sorted ids → (start, length) pairs of consecutive runs."""
    if len(ids) == 0:
        return np.empty((0, 2), np.int64)
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(ids)]])
    return np.stack([ids[starts], ends - starts], axis=1).astype(np.int64)


def _check_inflated(body: bytes, limit: int, where: str) -> None:
    try:
        size = inflated_bytes(body)
    except ValueError as exc:
        raise Refusal(400, "unreadable", f"{where}: {exc}", quarantine=True) from exc
    if size > limit:
        raise Refusal(
            413, "inflated_too_large",
            f"{where}: decompresses to {size} bytes, the limit is {limit}; send smaller batches",
            quarantine=False,
        )  # fmt: skip


def _expand_runs(runs: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    if len(runs) == 0:
        return np.empty(0, np.int64)
    starts, lengths = runs[:, 0], runs[:, 1]
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    out: npt.NDArray[np.int64] = np.arange(int(lengths.sum()), dtype=np.int64) + offsets
    return out


__all__ = ["FLOWS", "Answer", "Collector", "CollectorConfig"]
