"""Row ids across restarts, on real collector processes (HTTPS, write-ahead log, Parquet sink).

A `stored` mark can outlive the flows it names: the flows' segment is deleted once they are
stored and older than --keep-log, while the mark sits in a later segment that event batches
keep young. Row ids handed out after the next restart must not collide with that mark, or
the restart after that treats newly acknowledged rows as stored already.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pytest
from test_collector_e2e import Proc, token

from flowtrail.collector.client import CollectorExporter
from flowtrail.collector.sink import read_parquet_sink
from flowtrail.lab.wait import until

S = 1_000_000_000
SHORT_KEEP_S = 5  # --keep-log of the run whose segment 1 must go
LONG_KEEP = "1h"  # --keep-log of every other run: nothing else is deleted, whatever the load
LAG_S = 15  # --event-lag: flows without heartbeats wait this long, so longer than SHORT_KEEP_S
ARGS = ("--sink", "parquet", "--event-lag", f"{LAG_S}s", "--tick", "200ms")


def flows(first: int, n: int) -> pa.Table:
    """`n` connections of exporter e1 to addresses nobody owns: decided by the event feed."""
    t = time.time_ns()
    ids = range(first, first + n)
    return pa.table({
        "flow_id": [f"f{i}" for i in ids],
        "exporter": ["e1"] * n,
        "local_ip": ["10.0.0.1"] * n,
        "local_port": pa.array([20_000 + i for i in ids], pa.int32()),
        "remote_ip": ["192.0.2.7"] * n,
        "remote_port": pa.array([443] * n, pa.int32()),
        "direction": ["outbound"] * n,
        "start_ns": [t] * n, "end_ns": [t] * n,
        "state": ["closed"] * n,
        "bytes_sent": [1] * n, "bytes_received": [1] * n,
    })  # fmt: skip


def events() -> pa.Table:
    return pa.table({"ip": ["10.0.0.9"], "workload": ["web"], "action": ["assign"],
                     "time_ns": [time.time_ns()]})  # fmt: skip


def metric(proc: Proc, name: str) -> float:
    text = proc.get("/metrics")[1].decode()
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " "))


def segment(tmp: Path, n: int) -> Path:
    return tmp / "data" / "wal" / f"{n:012d}.wal"


@pytest.mark.slow
def test_rows_acknowledged_after_a_mark_outlived_its_flows_are_stored(
    tmp_path: Path, procs: list[Proc]
) -> None:
    def start(keep: str = LONG_KEEP) -> tuple[Proc, CollectorExporter]:
        # Only the second run deletes a segment. The others keep every segment, so the old
        # mark's segment outlives the third run however slowly processes start on a busy box.
        proc = Proc(tmp_path, ["e1"], *ARGS, "--keep-log", keep, events=True)
        procs.append(proc)
        return proc, CollectorExporter(proc.url, token("e1"), proc.cafile)

    first, second = flows(0, 100), flows(100, 100)
    # 1. Flows arrive (segment 1); the collector restarts before they can be decided.
    p1, c1 = start()
    c1.export(first, "first")
    assert metric(p1, "flowtrail_collector_waiting_flows") == 100
    assert p1.stop() == 0
    # 2. Replayed, they are decided more than --keep-log after arrival: the mark goes to
    #    segment 2 and segment 1 is deleted. Events keep segment 2 young.
    p2, c2 = start(f"{SHORT_KEEP_S}s")
    stored = until(lambda: metric(p2, "flowtrail_collector_rows_stored_total"), (100.0).__eq__, 60)
    assert stored == 100
    until(segment(tmp_path, 1).exists, lambda there: not there, 30)
    assert not segment(tmp_path, 1).exists()
    c2.export(events(), "events-1", kind="events")
    assert p2.stop() == 0
    # 3. With no flows record left in the log, new flows are acknowledged; the collector
    #    restarts before they are decided.
    p3, c3 = start()
    c3.export(second, "second")
    assert p3.stop() == 0
    assert segment(tmp_path, 2).exists(), "the scenario needs segment 2 (the old mark) kept"
    # 4. The replay sees the old mark and the new flows together; every acknowledged row
    #    must still be stored.
    p4, _ = start()
    p4.wait_idle(timeout_s=90)
    assert p4.stop() == 0
    out = read_parquet_sink(tmp_path / "data" / "flows")
    got = sorted(out["flow_id"].to_pylist(), key=lambda f: int(f[1:]))
    assert got == [f"f{i}" for i in range(200)], f"{200 - len(set(got))} acknowledged rows lost"
