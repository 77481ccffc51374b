"""Node processes splitting regions by connection, fed the simulator paced by received time,
for the tests of that design (test_partitioned.py)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.cluster.bus import SECOND, Bus, BusConfig
from flowtrail.cluster.feed import feed_paced
from flowtrail.cluster.natslab import NatsLab
from flowtrail.collector.sink import read_parquet_sink
from flowtrail.lab.wait import ready_line, stop_all
from flowtrail.tables import write_table

KEY = ("exporter", "flow_id", "state", "end_ns")
COLUMNS = ("remote_workload", "remote_source", "attributed_ns")
PARTITIONS = 8


def start_node(
    lab: NatsLab, tmp: Path, region: str, name: str, member_ttl: str
) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "flowtrail.cluster"]
    for url in lab.urls:
        args += ["--nats", url]
    args += ["--region", region, "--name", name, "--regions", str(tmp / "regions.parquet")]
    args += ["--sink", "parquet", "--out", str(tmp / "out"), "--ack-wait", "2s"]
    args += ["--partitions", str(PARTITIONS), "--member-ttl", member_ttl]
    args += ["--trust-received", "--no-events", "--status-file", str(tmp / f"{name}.json")]
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 (the child owns it)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log)
    log.close()
    return proc


def status(tmp: Path, name: str) -> dict[str, int]:
    path = tmp / f"{name}.json"
    try:
        return dict(json.loads(path.read_text())) if path.exists() else {}
    except ValueError:  # caught mid-rewrite
        return {}


def keyed(table: pa.Table) -> list[tuple[tuple[object, ...], tuple[object, ...]]]:
    keys = zip(*[table.column(k).to_pylist() for k in KEY], strict=True)
    values = zip(*[table.column(c).to_pylist() for c in COLUMNS], strict=True)
    return list(zip(keys, values, strict=True))


async def _until(cond: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def run_cluster(
    lab: NatsLab,
    tmp: Path,
    flows: pa.Table,
    regions: pa.Table,
    nodes: dict[str, str],
    survivors: list[str],
    trouble: Callable[[dict[str, subprocess.Popen[bytes]], int, int], Awaitable[None]]
    | None = None,
    member_ttl: str = "10s",
) -> pa.Table:
    """Start `nodes` (name -> region), feed `flows`, move the clocks on until every flow is
    written and each region's partitions are all owned by `survivors`; every row written.

    `member_ttl`: a node that has not renewed its member message for this long is taken for
    dead. A short one makes a kill test quick, but on a loaded machine a live node stalled
    past it loses its partitions for a moment (a rebuild elsewhere, rows written twice).
    """
    write_table(regions, tmp / "regions.parquet")
    region_names = sorted(set(regions.column("region").to_pylist()))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    per_region = {r: sum(1 for v in nodes.values() if v == r) for r in region_names}

    async def main() -> None:
        feeder = Bus(BusConfig(servers=lab.urls, replicas=3))
        await feeder.connect()
        try:
            await feeder.ensure_streams(region_names)
            for name, region in nodes.items():
                procs[name] = start_node(lab, tmp, region, name, member_ttl)
            for name, proc in procs.items():
                await asyncio.to_thread(ready_line, proc, tmp / f"{name}.log", 60, name)
            # Every node sees its region's members before rows come.
            await _until(
                lambda: all(
                    status(tmp, m).get("members") == per_region[r] for m, r in nodes.items()
                ),
                "membership settled",
                60,
            )

            async def on_second(i: int, seconds: int) -> None:
                if trouble is not None:
                    await trouble(procs, i, seconds)

            await feed_paced(feeder, flows, regions, on_second=on_second)
            mark = int(pc.max(flows.column("received_ns")).as_py()) + 200 * SECOND
            deadline = time.monotonic() + 120
            k = 0
            while True:
                for region in region_names:
                    await feeder.publish_clock(region, mark + k * SECOND, f"mark-{region}-{k}")
                k += 1
                live = [status(tmp, m) for m in survivors]
                owned = sum(s.get("partitions_owned", 0) for s in live)
                if owned == PARTITIONS * len(region_names) and all(
                    s.get("caught_up") for s in live
                ):
                    got = read_parquet_sink(tmp / "out")
                    keys = pa.table([got.column(c) for c in KEY], names=list(KEY))
                    if keys.group_by(list(KEY)).aggregate([]).num_rows >= flows.num_rows:
                        break
                assert time.monotonic() < deadline, f"not all stored: {live}"
                await asyncio.sleep(0.2)
        finally:
            await feeder.close()

    try:
        asyncio.run(main())
    except Exception as exc:
        logs = {m: (tmp / f"{m}.log").read_text()[-1500:] for m in nodes}
        raise AssertionError(f"{exc}; node logs: {logs}") from exc
    finally:
        # A clean stop ends the last fetch and hands batches back; on a loaded machine five
        # nodes doing so side by side outlasted stop_all's default 15 s (killed: not 0).
        stop_all(procs.values(), grace_s=90)
    for name in survivors:
        code = procs[name].returncode
        assert code == 0, f"{name} exited {code}: " + (tmp / f"{name}.log").read_text()[-2000:]
    return read_parquet_sink(tmp / "out")
