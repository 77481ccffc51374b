"""The collector core, without HTTP: auth, door checks, quarantine, limits, log, replay.

Real write-ahead log files, real engine, real Parquet sink; only the clock is supplied by the
test so that waits and log retention can be stepped through without sleeping.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flowtrail.collector.client import ipc_bytes
from flowtrail.collector.door import Limits
from flowtrail.collector.quarantine import Quarantine
from flowtrail.collector.service import Collector, CollectorConfig
from flowtrail.collector.sink import ParquetSink, read_parquet_sink
from flowtrail.collector.tokens import Tokens
from flowtrail.collector.wal import WriteAheadLog
from flowtrail.engine.attributor import Settings
from flowtrail.errors import InputError
from flowtrail.sim.simulation import simulate

S = 1_000_000_000
NOW = 1_800_000_000 * S
STEP = S  # the collector ticks once a second


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> int:
        return self.t


def sim_flows(n: int = 3000, seed: int = 4) -> pa.Table:
    """Simulator flows moved so they end just before NOW, without received_ns."""
    f = simulate("churny", seed, flows=n).flows.drop_columns(["received_ns"])
    shift = NOW - S - pc.max(f["end_ns"]).as_py()
    for col in ("start_ns", "end_ns"):
        f = f.set_column(f.column_names.index(col), col, pc.add(f[col], shift))
    return f


def by_exporter(f: pa.Table) -> dict[str, pa.Table]:
    return {e: f.filter(pc.equal(f["exporter"], e)) for e in sorted(set(f["exporter"].to_pylist()))}


def token(exporter: str) -> str:
    return f"secret-{exporter}-0123456789"


def make(tmp: Path, flows: pa.Table, clock: Clock, **cfg: object) -> Collector:
    tmp.mkdir(parents=True, exist_ok=True)
    tokens = tmp / "tokens"
    if not tokens.exists():
        lines = [f"{e} {token(e)}\n" for e in by_exporter(flows)] + [f"cp {token('cp')} events\n"]
        tokens.write_text("".join(lines))
    settings = Settings(max_wait_ns=5 * S, use_events=False)
    config = CollectorConfig(settings=settings, keep_log_ns=60 * S, **cfg)  # type: ignore[arg-type]
    c = Collector(
        config,
        tokens=Tokens.load(tokens),
        wal=WriteAheadLog(tmp / "wal", segment_age_ns=10 * S),
        sink=ParquetSink(tmp / "out"),
        quarantine=Quarantine(tmp / "q", 1 << 20),
        clock=clock,
    )
    c.start(background=False)
    return c


def test_batches_are_logged_attributed_and_stored_once(tmp_path: Path) -> None:
    clock = Clock()
    flows = sim_flows()
    c = make(tmp_path, flows, clock)
    for i, (e, part) in enumerate(by_exporter(flows).items()):
        # A sender's own received_ns (here: the epoch) is replaced by the collector's clock.
        part = part.append_column("received_ns", pa.array([1] * part.num_rows, pa.int64()))
        a = c.ingest("flows", token(e), ipc_bytes(part), f"b{i}")
        assert a.status == 200 and a.body["rows"] == part.num_rows
    e0, p0 = next(iter(by_exporter(flows).items()))
    p0 = p0.append_column("received_ns", pa.array([1] * p0.num_rows, pa.int64()))
    again = c.ingest("flows", token(e0), ipc_bytes(p0), "b0")
    assert again.status == 200 and again.body["duplicate"]  # a re-send, acknowledged once
    for _ in range(2 + 5 * S // STEP):
        clock.t += STEP
        c.tick(clock())
    out = read_parquet_sink(tmp_path / "out")
    assert out.num_rows == flows.num_rows
    assert "__flowtrail_row" not in out.column_names
    assert set(out["received_ns"].to_pylist()) == {NOW}
    assert sorted(out["flow_id"].to_pylist()) == sorted(flows["flow_id"].to_pylist())
    assert set(out["remote_source"].to_pylist()) <= {"heartbeat", "unattributed"}
    assert pc.sum(pc.equal(out["remote_source"], "heartbeat")).as_py() > flows.num_rows // 2
    assert c.engine.waiting == 0
    # Once everything is stored and older than keep_log, the log lets go of it.
    clock.t += 120 * S
    c.tick(clock())
    assert c.wal.segments() == [c.wal.current_segment]


def test_refusals_say_why_are_counted_and_quarantined(tmp_path: Path) -> None:
    clock = Clock()
    flows = sim_flows(1000)
    parts = by_exporter(flows)
    (e1, p1), (e2, p2) = list(parts.items())[:2]
    c = make(tmp_path, flows, clock)

    assert c.ingest("flows", None, ipc_bytes(p1), None).status == 401
    assert c.ingest("flows", "not-a-token", ipc_bytes(p1), None).status == 401
    wrong = c.ingest("flows", token(e2), ipc_bytes(p1), "x1")  # e2 sending e1's rows
    assert wrong.status == 403 and "belongs to" in wrong.body["error"]
    bad_port = p1.set_column(
        p1.column_names.index("local_port"), "local_port",
        pa.array([70000] + [1] * (p1.num_rows - 1), pa.int64()),
    )  # fmt: skip
    refused = c.ingest("flows", token(e1), ipc_bytes(bad_port), "x2")
    assert refused.status == 400
    assert "row 1" in refused.body["error"] and "local_port" in refused.body["error"]
    garbage = c.ingest("flows", token(e1), b"\x00not arrow at all", "x3")
    assert garbage.status == 400 and garbage.body["reason"] == "unreadable"
    backwards = p1.set_column(
        p1.column_names.index("end_ns"), "end_ns", pc.subtract(p1["start_ns"], 1)
    )
    backwards_refused = c.ingest("flows", token(e1), ipc_bytes(backwards), "x4").body
    assert backwards_refused["reason"] == "contract"
    assert "row 1, column 'end_ns'" in backwards_refused["error"]
    future = p1.set_column(
        p1.column_names.index("end_ns"), "end_ns", pc.add(p1["end_ns"], 3600 * S)
    )
    assert c.ingest("flows", token(e1), ipc_bytes(future), "x5").status == 400
    assert c.ingest("events", token(e1), ipc_bytes(p1), "x6").status == 403  # not its kind

    # Another exporter carries on untouched.
    assert c.ingest("flows", token(e2), ipc_bytes(p2), "ok").status == 200

    notes = [json.loads(p.read_text()) for p in c.quarantine.entries()]
    reasons = sorted(n["reason"] for n in notes)
    assert reasons == ["contract", "contract", "exporter_mismatch", "time_range", "unreadable"]
    assert all(
        (tmp_path / "q" / (Path(p).stem + ".arrows")).exists() for p in c.quarantine.entries()
    )
    text = c.metrics.text().decode()
    assert 'flowtrail_collector_refused_batches_total{reason="unauthenticated"} 2.0' in text
    assert 'flowtrail_collector_refused_batches_total{reason="exporter_mismatch"} 1.0' in text
    assert f'flowtrail_collector_rows_accepted_total{{kind="flows"}} {p2.num_rows}.0' in text


def test_limits_on_rows_and_rate(tmp_path: Path) -> None:
    clock = Clock()
    flows = sim_flows(2000)
    e, part = max(by_exporter(flows).items(), key=lambda kv: kv[1].num_rows)
    n = part.num_rows
    c = make(tmp_path, flows, clock, limits=Limits(max_rows=n - 1))
    too_big = c.ingest("flows", token(e), ipc_bytes(part), "big")
    assert too_big.status == 413 and str(n - 1) in too_big.body["error"]
    c2 = make(tmp_path / "r", flows, clock, rate_rows_per_s=float(n), burst_rows=float(n))
    half = part.slice(0, n // 2)
    assert c2.ingest("flows", token(e), ipc_bytes(half), "h1").status == 200
    assert c2.ingest("flows", token(e), ipc_bytes(half), "h2").status == 200
    limited = c2.ingest("flows", token(e), ipc_bytes(half), "h3")
    assert limited.status == 429 and limited.retry_after_s and limited.retry_after_s > 0
    assert "rows/s" in limited.body["error"]
    other = next(x for x in by_exporter(flows) if x != e)
    assert c2.ingest("flows", token(other), ipc_bytes(by_exporter(flows)[other]), "o").status == 200


def test_restart_replays_the_log_and_stores_nothing_twice(tmp_path: Path) -> None:
    clock = Clock()
    flows = sim_flows(4000)
    parts = list(by_exporter(flows).items())
    c = make(tmp_path, flows, clock)
    first, second = parts[: len(parts) // 2], parts[len(parts) // 2 :]
    for e, part in first:
        assert c.ingest("flows", token(e), ipc_bytes(part), "1").status == 200
    for _ in range(2 + 5 * S // STEP):  # the first half is decided and stored
        clock.t += STEP
        c.tick(clock())
    stored_before = read_parquet_sink(tmp_path / "out").num_rows
    assert stored_before == sum(p.num_rows for _, p in first)
    for e, part in second:
        assert c.ingest("flows", token(e), ipc_bytes(part), "2").status == 200
    # "Crash": the object is abandoned without stop(); only files remain.
    del c
    clock.t += S
    c2 = make(tmp_path, flows, clock)
    assert c2.engine.engine.counters.flows_in == flows.num_rows  # state rebuilt from the log
    resend = c2.ingest("flows", token(second[0][0]), ipc_bytes(second[0][1]), "2")
    assert resend.body.get("duplicate")  # batch ids survive the restart
    for _ in range(2 + 5 * S // STEP):
        clock.t += STEP
        c2.tick(clock())
    out = read_parquet_sink(tmp_path / "out")
    assert out.num_rows == flows.num_rows
    assert out.group_by(["exporter", "flow_id", "state", "end_ns"]).aggregate([]).num_rows == (
        flows.num_rows
    )


def test_events_need_an_events_token_and_feed_the_engine(tmp_path: Path) -> None:
    clock = Clock()
    flows = sim_flows(500)
    c = make(tmp_path, flows, clock)
    events = pa.table(
        {
            "ip": ["10.9.9.9", "10.9.9.9"],
            "workload": ["lb", "lb"],
            "action": ["assign", "unassign"],
            "time_ns": [NOW - 100 * S, NOW - 10 * S],
        }
    )
    assert c.ingest("events", token("cp"), ipc_bytes(events), "e1").status == 200
    assert c.engine.engine.counters.events_in == 2
    _, part = next(iter(by_exporter(flows).items()))
    assert c.ingest("flows", token("cp"), ipc_bytes(part), "f").status == 403  # events only
    bad = events.set_column(2, "action", pa.array(["assign", "grab"]))
    refused = c.ingest("events", token("cp"), ipc_bytes(bad), "e2")
    assert refused.status == 400 and "row 2" in refused.body["error"]


def test_tokens_file_errors_name_the_line(tmp_path: Path) -> None:
    p = tmp_path / "tokens"
    p.write_text("# comment\nhost-a secret-a-0123456789abc\nhost-b short\n")
    with pytest.raises(InputError, match=r"line 3.*shorter"):
        Tokens.load(p)
    p.write_text("host-a secret-a-0123456789abc\nhost-a secret-b-0123456789abc\n")
    with pytest.raises(InputError, match=r"line 2.*twice"):
        Tokens.load(p)
    p.write_text("host-a secret-a-0123456789abc flows,routes\n")
    with pytest.raises(InputError, match="unknown kind"):
        Tokens.load(p)


def test_narrowed_ranges_do_not_drop_acknowledged_rows_on_replay(tmp_path: Path) -> None:
    """A token's ranges are checked at the door, not again when the log is replayed: rows
    acknowledged under the old ranges are stored after a restart with narrower ones."""
    clock = Clock()
    flows = sim_flows(1000)
    (e1, p1), *_ = by_exporter(flows).items()
    c = make(tmp_path, flows, clock)
    assert c.ingest("flows", token(e1), ipc_bytes(p1), "1").status == 200
    del c  # "crash" before anything is decided
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{e1} {token(e1)} ranges=192.0.2.0/24\n")  # none of its addresses
    clock.t += S
    c2 = make(tmp_path, flows, clock)
    now_refused = c2.ingest("flows", token(e1), ipc_bytes(p1), "2")
    assert now_refused.status == 403 and now_refused.body["reason"] == "address_not_allowed"
    for _ in range(2 + 5 * S // STEP):
        clock.t += STEP
        c2.tick(clock())
    assert read_parquet_sink(tmp_path / "out").num_rows == p1.num_rows


def test_a_tick_that_raises_is_counted_and_retried_not_the_end_of_ticking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No real input makes a tick raise once the door refuses poison, so the engine's tick is
    made to fail here (an injected fault): the loop must survive it, say so in /healthz and
    /metrics, and decide the same rows on the next tick."""
    clock = Clock()
    flows = sim_flows(300)
    c = make(tmp_path, flows, clock)
    for e, part in by_exporter(flows).items():
        assert c.ingest("flows", token(e), ipc_bytes(part), f"b-{e}").status == 200
    real_tick = c.engine.tick
    fail = [True]

    def flaky_tick(now: int) -> object:
        if fail[0]:
            raise RuntimeError("injected engine fault")
        return real_tick(now)

    monkeypatch.setattr(c.engine, "tick", flaky_tick)
    clock.t += 10 * S
    c._guarded_tick()
    c._guarded_tick()
    health = c.health()
    assert health.status == 503
    assert health.body["tick_error"] == "RuntimeError: injected engine fault"
    assert c.metrics.tick_failures._value.get() == 2
    fail[0] = False
    c._guarded_tick()
    assert c.health().status == 200 and c.health().body["tick_error"] is None
    c.stop()
    assert read_parquet_sink(tmp_path / "out").num_rows == flows.num_rows


def test_listeners_rows_name_an_attempt_and_are_stored_nowhere(tmp_path: Path) -> None:
    """A quiet server's listening socket names its address for a refused attempt to it; the
    listener's row itself is not stored, and the log still lets go of its segment."""
    listening = {
        "flow_id": "server:listen:7:10.0.0.2", "exporter": "server", "local_ip": "10.0.0.2",
        "local_port": 8080, "remote_ip": "0.0.0.0", "remote_port": 0, "direction": "inbound",
        "start_ns": NOW - 20 * S, "end_ns": NOW - S, "state": "active", "bytes_sent": 0,
        "bytes_received": 0, "local_workload": "api", "outcome": "listening",
    }  # fmt: skip
    refused = {
        **listening, "flow_id": "client:1", "exporter": "client", "local_ip": "10.0.0.1",
        "local_port": 40000, "remote_ip": "10.0.0.2", "remote_port": 8081,
        "direction": "outbound", "start_ns": NOW - 10 * S, "end_ns": NOW - 10 * S,
        "state": "closed", "local_workload": "web", "outcome": "refused",
    }  # fmt: skip
    heard, tried = pa.Table.from_pylist([listening]), pa.Table.from_pylist([refused])
    clock = Clock()
    c = make(tmp_path, pa.concat_tables([heard, tried]), clock)
    assert c.ingest("flows", token("server"), ipc_bytes(heard), "l1").status == 200
    assert c.ingest("flows", token("client"), ipc_bytes(tried), "c1").status == 200
    for _ in range(2 + 5 * S // STEP):
        clock.t += STEP
        c.tick(clock())
    out = read_parquet_sink(tmp_path / "out")
    assert out["flow_id"].to_pylist() == ["client:1"]
    assert out["remote_workload"].to_pylist() == ["api"]
    assert c.metrics.rows_listening._value.get() == 1
    clock.t += 120 * S
    c.tick(clock())
    assert c.wal.segments() == [c.wal.current_segment]
