"""Every acknowledged row is stored exactly once, whatever the schedule of restarts.

Hypothesis draws schedules of flow and event batches, clock steps, clean restarts and
crashes (the collector dropped without its last tick) over one data directory. Real
write-ahead log files, real engine, real Parquet sink (the sink that would show a row stored
twice: the Store would silently absorb it); only the clock is the test's, so that waits,
segment ages and --keep-log pass without sleeping.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flowtrail.collector.client import ipc_bytes
from flowtrail.collector.quarantine import Quarantine
from flowtrail.collector.service import Collector, CollectorConfig
from flowtrail.collector.sink import ParquetSink, read_parquet_sink
from flowtrail.collector.tokens import Tokens
from flowtrail.collector.wal import WriteAheadLog
from flowtrail.engine.attributor import Settings

S = 1_000_000_000
EXPORTER, CONTROL = "e1", "cp"
# Flows wait for the event feed's watermark (LAG) longer than stored rows stay in the log
# (KEEP), and segments close faster still: marks land in other segments than their rows.
WAIT, LAG, KEEP, SEGMENT_AGE = 1 * S, 6 * S, 3 * S, 20 * S


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000 * S

    def __call__(self) -> int:
        return self.t


def token(name: str) -> str:
    return f"secret-{name}-0123456789"


def open_collector(data: Path, clock: Clock) -> Collector:
    config = CollectorConfig(
        settings=Settings(max_wait_ns=WAIT, event_lag_ns=LAG, use_events=True),
        keep_log_ns=KEEP,
        tick_ns=S,
    )
    c = Collector(
        config,
        tokens=Tokens.load(data / "tokens"),
        # No fsync: a crash here drops the process, not the page cache.
        wal=WriteAheadLog(data / "wal", segment_age_ns=SEGMENT_AGE, fsync=False),
        sink=ParquetSink(data / "out"),
        quarantine=Quarantine(data / "q", 1 << 20),
        clock=clock,
    )
    c.start(background=False)
    return c


def flows(first: int, n: int, t: int) -> pa.Table:
    ids = range(first, first + n)
    return pa.table({
        "flow_id": [f"f{i}" for i in ids],
        "exporter": [EXPORTER] * n,
        "local_ip": ["10.0.0.1"] * n,
        "local_port": pa.array([10_000 + i for i in ids], pa.int32()),
        "remote_ip": ["192.0.2.7"] * n,
        "remote_port": pa.array([443] * n, pa.int32()),
        "direction": ["outbound"] * n,
        "start_ns": [t - S] * n, "end_ns": [t] * n,
        "state": ["closed"] * n,
        "bytes_sent": [1] * n, "bytes_received": [1] * n,
    })  # fmt: skip


def events(t: int) -> pa.Table:
    return pa.table({"ip": ["10.0.0.9"], "workload": ["web"], "action": ["assign"],
                     "time_ns": [t]})  # fmt: skip


# One phase of a schedule: maybe a flow batch, clock steps, maybe an event batch, more clock
# steps, then a clean restart, a crash (dropped without its last tick) or nothing.
Phase = tuple[int, int, bool, int, str]
phase = st.tuples(
    st.integers(0, 20),
    st.integers(0, 8),
    st.booleans(),
    st.integers(0, 8),
    st.sampled_from(["restart", "crash", "none"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(phase, min_size=1, max_size=8))
# Flows decided after a restart, more than KEEP after arrival: their segment goes, the mark
# stays beside events; the next flows are acknowledged and the collector restarts again.
@example([(5, 0, False, 0, "restart"), (0, 8, True, 0, "restart"), (5, 0, False, 0, "restart")])
def test_every_acknowledged_row_is_stored_exactly_once(schedule: list[Phase]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        (data / "tokens").write_text(
            f"{EXPORTER} {token(EXPORTER)}\n{CONTROL} {token(CONTROL)} events\n"
        )
        clock = Clock()
        c = open_collector(data, clock)
        acked: list[str] = []

        def advance(steps: int) -> None:
            for _ in range(steps):
                clock.t += S
                c.tick(clock.t)

        for n, before, with_events, after, end in schedule:
            if n:
                batch = flows(len(acked), n, clock.t)
                answer = c.ingest("flows", token(EXPORTER), ipc_bytes(batch), f"b{len(acked)}")
                assert answer.status == 200, answer.body
                acked += batch["flow_id"].to_pylist()
            advance(before)
            if with_events:
                answer = c.ingest("events", token(CONTROL), ipc_bytes(events(clock.t)), None)
                assert answer.status == 200, answer.body
            advance(after)
            if end == "restart":
                c.stop()
                c = open_collector(data, clock)
            elif end == "crash":  # everything acknowledged is in the log already
                c.wal.close()
                c = open_collector(data, clock)
        advance((WAIT + LAG) // S + 5)  # long enough for every wait to run out
        c.stop()
        stored = read_parquet_sink(data / "out")
        got = stored["flow_id"].to_pylist() if stored.num_rows else []
        assert sorted(got) == sorted(acked), (
            f"lost {sorted(set(acked) - set(got))}, "
            f"stored twice {sorted({f for f in got if got.count(f) > 1})}"
        )
