"""A cluster node whose store cannot be written stops, and its batches go to another node.

docs/cluster.md: "sink write fails: the exception stops the node; nothing was acked, so the
batches go to another node". Two node processes of one region over a real 3-server NATS
cluster. The first keeps its DuckDB store on a small tmpfs that the test fills (a real
ENOSPC on DuckDB's commit; mounting needs root, hence the `kernel` marker) and runs alone
until it has taken the batch and failed to store it: it must exit with an error naming the
cause. The second, started then, must get the batch again and store every row exactly as
the offline replay attributes it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flowtrail.cluster.bus import SECOND, Bus, BusConfig
from flowtrail.cluster.feed import feed_paced
from flowtrail.cluster.natslab import NatsLab
from flowtrail.engine.attributor import Settings
from flowtrail.engine.replay import replay
from flowtrail.lab.wait import ready_line, stop_all
from flowtrail.sim.simulation import simulate
from flowtrail.store import Store
from flowtrail.tables import write_table

pytestmark = [pytest.mark.cluster, pytest.mark.kernel, pytest.mark.timeout(300)]

KEY = ("exporter", "flow_id", "state", "end_ns")
REGION = "us-east"


def start_node(lab: NatsLab, tmp: Path, name: str, out: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "flowtrail.cluster"]
    for url in lab.urls:
        args += ["--nats", url]
    args += ["--region", REGION, "--name", name, "--regions", str(tmp / "regions.parquet")]
    args += ["--sink", "store", "--out", str(out), "--ack-wait", "2s"]
    args += ["--trust-received", "--no-events", "--status-file", str(tmp / f"{name}.json")]
    with open(tmp / f"{name}.log", "wb") as log:
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log)


def keyed(table: pa.Table) -> dict[tuple[object, ...], object]:
    cols = [table.column(k).to_pylist() for k in KEY]
    rw = table.column("remote_workload").to_pylist()
    return dict(zip(zip(*cols, strict=True), rw, strict=True))


def test_node_with_a_full_store_stops_and_another_takes_its_batches(
    nats_lab: NatsLab, tmp_path: Path
) -> None:
    sim = simulate("churny", 3, flows=1500, duration=120)
    # One region holds every address: its nodes decide every row.
    flows = sim.flows.set_column(
        sim.flows.column_names.index("region"), "region", pa.array([REGION] * sim.flows.num_rows)
    )
    regions = pa.table({"cidr": ["0.0.0.0/0", "::/0"], "region": [REGION, REGION]})
    write_table(regions, tmp_path / "regions.parquet")
    # All rows received in one second: one batch, taken by whichever node runs then.
    last = pc.max(flows["received_ns"]).as_py()
    flows = flows.set_column(
        flows.column_names.index("received_ns"), "received_ns", pa.array([last] * len(flows))
    )
    n = flows.num_rows
    mark, marks = last + 200 * SECOND, [0]
    feeder = Bus(BusConfig(servers=nats_lab.urls, replicas=3))
    offline = replay(flows, None, regions, settings=Settings(use_events=False)).table

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        outs = {"east-full": small / "east-full.duckdb", "east-ok": tmp_path / "east-ok.duckdb"}

        async def clock_until(done: Callable[[], bool], what: str) -> None:
            """Move the region's clock on (a mark every 0.3 s) until `done()`."""
            deadline = time.monotonic() + 120
            while not done():
                assert time.monotonic() < deadline, f"timed out waiting until {what}"
                marks[0] += 1
                await feeder.publish_clock(REGION, mark + marks[0] * SECOND, f"mark-{marks[0]}")
                await asyncio.sleep(0.3)

        async def main() -> None:
            await feeder.connect()
            try:
                await feeder.ensure_streams([REGION])
                # The full node alone first, so that it surely takes the batch.
                procs["east-full"] = start_node(nats_lab, tmp_path, "east-full", outs["east-full"])
                await asyncio.to_thread(ready_line, procs["east-full"],
                                        tmp_path / "east-full.log", 60, "east-full")  # fmt: skip
                with open(small / "filler", "wb") as f:  # its store: no room left
                    try:
                        while True:
                            f.write(b"\0" * 65536)
                            f.flush()
                    except OSError as exc:
                        assert exc.errno == 28, exc
                await feed_paced(feeder, flows, regions)
                await clock_until(lambda: procs["east-full"].poll() is not None, "east-full stops")
                procs["east-ok"] = start_node(nats_lab, tmp_path, "east-ok", outs["east-ok"])
                await asyncio.to_thread(ready_line, procs["east-ok"],
                                        tmp_path / "east-ok.log", 60, "east-ok")  # fmt: skip
                await clock_until(lambda: stored_rows(tmp_path, "east-ok") >= n, "all stored")
            finally:
                await feeder.close()

        try:
            asyncio.run(main())
        except Exception as exc:
            logs = {m: p.read_text()[-1500:] for m in outs if (p := tmp_path / f"{m}.log").exists()}
            raise AssertionError(f"{exc}; node logs: {logs}") from exc
        finally:
            stop_all(procs.values())
        full_log = (tmp_path / "east-full.log").read_text()
        assert procs["east-full"].returncode != 0, full_log
        assert "No space left on device" in full_log, full_log[-2000:]
        assert procs["east-ok"].returncode == 0
        with Store(outs["east-ok"]) as store:
            stored = store.read()
        got, want = keyed(stored), keyed(offline)
        assert stored.num_rows == n == len(want)
        differ = [k for k in want if got.get(k, "missing") != want[k]]
        assert not differ, [(k, got.get(k), want[k]) for k in differ[:3]]
    finally:
        stop_all(procs.values())
        subprocess.run(["umount", "-l", str(small)], check=False)


def stored_rows(tmp: Path, name: str) -> int:
    """Rows the node has newly stored, from its status file (its store is locked while it runs)."""
    path = tmp / f"{name}.json"
    return int(json.loads(path.read_text()).get("rows_stored", 0)) if path.exists() else 0
