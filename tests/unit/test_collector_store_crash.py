"""kill -9 around the collector's write to a store idempotent per batch: every acknowledged
row is stored exactly once after a restart.

The collector logs a batch's name ("these rows go to batch N") before the Store commits the
rows together with N. A real child process runs the collector core (real write-ahead log with
fsync, real engine, real DuckDB Store) and stops at one of two points of its first write, where
the test kills it with SIGKILL: after the name is logged but before the Store's commit, or
right after the commit. A fresh collector then replays the log into the same store. Only the
clock is the test's (so that waits pass without sleeping).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from flowtrail.collector.quarantine import Quarantine
from flowtrail.collector.service import Collector, CollectorConfig
from flowtrail.collector.tokens import Tokens
from flowtrail.collector.wal import WriteAheadLog
from flowtrail.engine.attributor import Settings
from flowtrail.sim.simulation import simulate
from flowtrail.store import PER_BATCH, Store

S = 1_000_000_000
NOW = 1_800_000_000 * S
KEY = ["exporter", "flow_id", "state", "end_ns"]

# The collector as a child: ingests every exporter's batch, then ticks until its first write,
# where the Store announces the point reached and waits to be killed.
CHILD = """
import sys
import pyarrow.parquet as pq
from flowtrail.collector.client import ipc_bytes
from flowtrail.store import PER_BATCH, Store
sys.path.insert(0, sys.argv[3])
from test_collector_store_crash import open_collector, token

data, point = sys.argv[1], sys.argv[2]


class Stopping(Store):
    def write_named(self, table, name):
        if point == "before_commit":
            print("at", point, name, flush=True)
            sys.stdin.readline()  # killed here
        stored = super().write_named(table, name)
        print("at", point, name, flush=True)
        sys.stdin.readline()  # killed here
        return stored


flows = pq.read_table(f"{data}/flows.parquet")
clock = [int(sys.argv[4])]
c = open_collector(data, lambda: clock[0], Stopping(f"{data}/flows.duckdb", idempotence=PER_BATCH))
for e in sorted(set(flows.column("exporter").to_pylist())):
    part = flows.filter(flows.column("exporter").to_numpy(zero_copy_only=False) == e)
    assert c.ingest("flows", token(e), ipc_bytes(part), "b-" + e).status == 200
print("acked", flush=True)
while True:
    clock[0] += 1_000_000_000
    c.tick(clock[0])
"""


def token(exporter: str) -> str:
    return f"secret-{exporter}-0123456789"


def open_collector(data: str | Path, clock: object, store: Store) -> Collector:
    data = Path(data)
    config = CollectorConfig(
        settings=Settings(max_wait_ns=5 * S, use_events=False), keep_log_ns=60 * S
    )
    c = Collector(
        config,
        tokens=Tokens.load(data / "tokens"),
        wal=WriteAheadLog(data / "wal", segment_age_ns=10 * S),
        sink=store,
        quarantine=Quarantine(data / "q", 1 << 20),
        clock=clock,  # type: ignore[arg-type]
    )
    c.start(background=False)
    return c


@pytest.fixture(scope="module")
def flows() -> pa.Table:
    f = simulate("churny", 4, flows=3000).flows.drop_columns(["received_ns"])
    shift = NOW - S - pc.max(f["end_ns"]).as_py()
    for col in ("start_ns", "end_ns"):
        f = f.set_column(f.column_names.index(col), col, pc.add(f[col], shift))
    return f


@pytest.mark.parametrize("point", ["before_commit", "after_commit"])
def test_kill_9_around_the_store_write_stores_every_row_exactly_once(
    tmp_path: Path, flows: pa.Table, point: str
) -> None:
    exporters = sorted(set(flows.column("exporter").to_pylist()))
    (tmp_path / "tokens").write_text("".join(f"{e} {token(e)}\n" for e in exporters))
    pq.write_table(flows, tmp_path / "flows.parquet")
    here = str(Path(__file__).parent)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), point, here, str(NOW)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    watchdog = threading.Timer(120, child.kill)  # a child that never gets there: EOF below
    watchdog.start()
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "acked"
        line = child.stdout.readline().split()
        assert line[:2] == ["at", point], line
        name = line[2]
        child.send_signal(signal.SIGKILL)
    finally:
        watchdog.cancel()
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    store = Store(tmp_path / "flows.duckdb", idempotence=PER_BATCH)
    assert store.has(name) == (point == "after_commit")
    stored_before = store.count()
    assert (stored_before > 0) == (point == "after_commit")
    clock = [NOW + 3600 * S]  # long after: everything replayed is decidable at once
    c = open_collector(tmp_path, lambda: clock[0], store)
    assert c.engine.engine.counters.flows_in == flows.num_rows  # the log was replayed
    for _ in range(10):
        clock[0] += S
        c.tick(clock[0])
    c.stop()
    with Store(tmp_path / "flows.duckdb") as again:
        out = again.read()
    assert out.num_rows == flows.num_rows
    assert out.group_by(KEY).aggregate([]).num_rows == flows.num_rows
    assert sorted(out.column("flow_id").to_pylist()) == sorted(flows.column("flow_id").to_pylist())
