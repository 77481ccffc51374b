"""Failures mid-run: a node process killed -9 and a NATS server restarted, with real processes.

Three node processes (`python -m flowtrail.cluster`, two in us-east, one in eu-west) write to
one Parquet lake (`--sink lake`); the feeder replays the simulator's flows paced by received
time. A third of the way in, one us-east node gets SIGKILL; halfway, one of the three NATS
servers is killed -9 and started again. At the end the rows go through the idempotent Store
(as a shared store would take them) and must equal the single-node replay: every flow once,
same remote_workload. And the lake answers as the single node's store does: `flowtrail query
--lake` gives the same dependencies and health as `--db` over the replay, although the node
that took over the killed one's batches stored some rows again.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from flowtrail.cluster.bus import SECOND, Bus, BusConfig
from flowtrail.cluster.feed import feed_paced
from flowtrail.cluster.natslab import NatsLab
from flowtrail.collector.sink import read_parquet_sink
from flowtrail.engine.attributor import Settings
from flowtrail.engine.replay import replay
from flowtrail.lab.wait import ready_line, stop_all
from flowtrail.query.command import query
from flowtrail.sim.simulation import simulate
from flowtrail.store import Store
from flowtrail.tables import write_table

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(360)]

KEY = ("exporter", "flow_id", "state", "end_ns")


def _start_node(lab: NatsLab, tmp: Path, region: str, name: str) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "flowtrail.cluster"]
    for url in lab.urls:
        args += ["--nats", url]
    args += ["--region", region, "--name", name, "--regions", str(tmp / "regions.parquet")]
    args += ["--sink", "lake", "--out", str(tmp / "out"), "--ack-wait", "2s"]
    args += ["--trust-received", "--no-events", "--status-file", str(tmp / f"{name}.json")]
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 (the child owns it)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log)
    log.close()
    return proc


def _wait_ready(proc: subprocess.Popen[bytes], tmp: Path, name: str) -> None:
    ready_line(proc, tmp / f"{name}.log", 60, name)


def _status(tmp: Path, name: str) -> dict[str, int]:
    path = tmp / f"{name}.json"
    return dict(json.loads(path.read_text())) if path.exists() else {}


def _keyed(table: pa.Table) -> dict[tuple[object, ...], object]:
    cols = [table.column(k).to_pylist() for k in KEY]
    rw = table.column("remote_workload").to_pylist()
    return dict(zip(zip(*cols, strict=True), rw, strict=True))


def test_node_killed_and_nats_server_restarted_mid_run(nats_lab: NatsLab, tmp_path: Path) -> None:
    sim = simulate("churny", 5, flows=3_000)
    flows, regions = sim.flows, sim.regions
    n = flows.num_rows
    write_table(regions, tmp_path / "regions.parquet")
    offline = replay(flows, None, regions, settings=Settings(use_events=False)).table
    region_names = sorted(set(regions.column("region").to_pylist()))
    names = {"east-0": "us-east", "east-1": "us-east", "west-0": "eu-west"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    events: list[str] = []

    async def main() -> None:
        feeder = Bus(BusConfig(servers=nats_lab.urls, replicas=3))
        await feeder.connect()
        try:
            await feeder.ensure_streams(region_names)
            for name, region in names.items():
                procs[name] = _start_node(nats_lab, tmp_path, region, name)
            for name, proc in procs.items():
                await asyncio.to_thread(_wait_ready, proc, tmp_path, name)

            async def trouble(i: int, seconds: int) -> None:
                if i == seconds // 3:
                    procs["east-0"].kill()  # SIGKILL: no goodbye, its held batches unacked
                    procs["east-0"].wait(10)
                    events.append(f"node killed at second {i}/{seconds}")
                if i == seconds // 2:
                    await asyncio.to_thread(nats_lab.restart, 1)  # kill -9, then start again
                    events.append(f"nats server n1 restarted at second {i}/{seconds}")

            await feed_paced(feeder, flows, regions, on_second=trouble)
            # The clock moves on (a mark per region every 0.2 s) until every row is stored.
            mark = int(pc.max(flows.column("received_ns")).as_py()) + 200 * SECOND
            deadline = time.monotonic() + 90
            k = 0
            while True:
                for region in region_names:
                    await feeder.publish_clock(region, mark + k * SECOND, f"mark-{region}-{k}")
                k += 1
                live = [_status(tmp_path, m) for m in ("east-1", "west-0")]
                written = sum(s.get("rows_written", 0) for s in live)
                if written >= n * 2 // 3 and all(s.get("held_batches", 1) == 0 for s in live):
                    got = read_parquet_sink(tmp_path / "out")
                    keys = pa.table([got.column(c) for c in KEY], names=list(KEY))
                    if keys.group_by(list(KEY)).aggregate([]).num_rows >= n:
                        break
                assert time.monotonic() < deadline, f"not all stored: {live}"
                await asyncio.sleep(0.2)
        finally:
            await feeder.close()

    try:
        asyncio.run(main())
    except Exception as exc:  # say what the node processes said, not just that we waited
        logs = {m: (tmp_path / f"{m}.log").read_text()[-1500:] for m in names}
        raise AssertionError(f"{exc}; node logs: {logs}") from exc
    finally:
        stop_all(procs.values())
    assert len(events) == 2, events
    assert procs["east-1"].returncode == 0 and procs["west-0"].returncode == 0, [
        (tmp_path / f"{m}.log").read_text()[-2000:] for m in ("east-1", "west-0")
    ]
    survivor = _status(tmp_path, "east-1")
    assert survivor["batches_redelivered"] > 0, survivor  # it took over the dead node's work

    # The lake's files hold the store's columns (`extra` JSON beside the contract's).
    written = read_parquet_sink(tmp_path / "out").drop_columns(["extra"])
    with Store(tmp_path / "all.duckdb", retention_ns=None) as store:
        store.write(written)  # duplicates from the killed node's unacked batches drop here
        stored = store.read()
    copies: dict[tuple[object, ...], set[object]] = {}
    for key, value in zip(
        zip(*[written.column(c).to_pylist() for c in KEY], strict=True),
        written.column("remote_workload").to_pylist(),
        strict=True,
    ):
        copies.setdefault(key, set()).add(value)
    assert all(len(v) == 1 for v in copies.values())  # a re-decided row agrees with itself
    got, want = _keyed(stored), _keyed(offline)
    assert stored.num_rows == n == len(want)  # none lost, none duplicated
    assert got.keys() == want.keys()
    differ = [k for k in want if got[k] != want[k]]
    assert not differ, [(k, got[k], want[k]) for k in differ[:3]]
    with Store(tmp_path / "single.duckdb", retention_ns=None) as single:
        single.write(offline)
    for sub in ("dependencies", "health"):
        lake = CliRunner().invoke(query, [sub, "--lake", str(tmp_path / "out"), "--format", "json"])
        one = CliRunner().invoke(query, [sub, "--db", str(tmp_path / "single.duckdb"),
                                         "--format", "json"])  # fmt: skip
        assert lake.exit_code == 0, lake.output
        # How long rows waited is the deciding node's clock, not an answer: left out.
        got_rows, want_rows = (
            [{k: v for k, v in r.items() if not k.startswith("wait_")} for r in json.loads(x)]
            for x in (lake.output, one.output)
        )
        assert got_rows == want_rows, sub
    print(f"{events}; rows written {written.num_rows} for {n} flows; survivor {survivor}")
