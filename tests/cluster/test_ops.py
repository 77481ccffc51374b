"""Operating a node: readiness after rebuilding, health, /metrics, clock marks, config files,
and publishing control-plane events, against a real 3-server NATS cluster."""

from __future__ import annotations

import asyncio
import json
import re
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from flowtrail.cluster.bus import CLOCK, SECOND, Bus, BusConfig
from flowtrail.cluster.command import _serve
from flowtrail.cluster.natslab import NatsLab
from flowtrail.cluster.node import ClusterNode, NodeConfig
from flowtrail.cluster.ops import serve
from flowtrail.engine.attributor import Settings
from flowtrail.errors import InputError
from flowtrail.lab.wait import eventually
from flowtrail.sim.simulation import simulate
from flowtrail.store import Store
from flowtrail.tables import write_table

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]
REGION = "us-east"


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def _stored_marks(bus: Bus) -> int:
    """Clock marks held by the region's evidence stream (every message read by sequence, so a
    slow delivery cannot end the count early)."""
    state = await bus.evidence_state(REGION)
    stream = bus.evidence_stream(REGION)
    marks = 0
    for seq in range(int(state.first_seq), int(state.last_seq) + 1):
        msg = await bus.js.get_msg(stream, seq)
        marks += CLOCK in (msg.headers or {})
    return marks


def test_readiness_health_metrics_and_clock_marks(nats_lab: NatsLab, tmp_path: Path) -> None:
    """A node is ready only once it has read the evidence backlog; NATS going away makes it
    unready and coming back ready again; with no traffic, wall-clock marks (one per tick
    whichever node publishes it) still move the clock, so waiting flows get decided."""
    sim = simulate("churny", 7, flows=600)
    backlog = 1500
    lonely = sim.flows.slice(0, 40).drop_columns(["received_ns"])  # nobody's heartbeats

    async def main() -> dict[str, object]:
        config = BusConfig(servers=nats_lab.urls, replicas=3)
        feeder = Bus(config)
        await feeder.connect()
        await feeder.ensure_streams([REGION])
        one = sim.events.slice(0, 5)
        await asyncio.gather(
            *(feeder.publish_events(REGION, one, f"old-{i}") for i in range(backlog))
        )
        settings = Settings(max_wait_ns=3 * SECOND)
        nodes, buses, servers, runs = [], [], [], []
        stop = asyncio.Event()
        for i in range(2):
            bus = Bus(config)
            await bus.connect()
            buses.append(bus)
            store = Store(tmp_path / f"n{i}.duckdb", retention_ns=None)
            node = ClusterNode(bus, NodeConfig(REGION, f"n{i}", settings=settings), None, store)
            nodes.append(node)
        node = nodes[0]
        began = time.monotonic()
        run = asyncio.create_task(node.run(stop))
        runs.append(run)
        ops = serve(node.status, lambda: node.status_age_s, lambda: not run.done(), "127.0.0.1", 0)
        servers.append(ops)
        out: dict[str, object] = {}
        try:
            first_ready: dict[str, object] = {}

            def ready() -> bool:
                code, _ = _get(ops.port, "/readyz")
                if code == 200 and not first_ready:
                    first_ready.update(node.status())
                return code == 200

            before = _get(ops.port, "/readyz")
            out["unready_before"] = before
            await eventually(ready, 60, "/readyz 200")
            out["read_when_ready"] = first_ready["evidence_messages"]
            out["health"] = _get(ops.port, "/healthz")[0]

            runs.append(asyncio.create_task(nodes[1].run(stop)))
            await feeder.publish_batch(REGION, lonely, "lonely")
            await eventually(
                lambda: sum(n.stats["rows_written"] for n in nodes) >= lonely.num_rows,
                60,
                "lonely rows decided by the clock marks alone",
            )
            # At least two marks stored (the bound below is checked once they are), waited
            # for, not slept for.
            deadline = time.monotonic() + 30
            while (stored := await _stored_marks(feeder)) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            out["stored_marks"] = stored
            out["seconds"] = time.monotonic() - began
            out["published"] = sum(n.stats["clock_marks_published"] for n in nodes)
            out["metrics"] = _get(ops.port, "/metrics")[1]

            for i in range(3):
                nats_lab.kill(i)
            await eventually(lambda: _get(ops.port, "/readyz")[0] == 503, 20, "/readyz 503")
            out["unready_without_nats"] = _get(ops.port, "/readyz")[1]
            out["health_without_nats"] = _get(ops.port, "/healthz")[0]
            nats_lab.start()  # all at once: a lone JetStream server waits for a quorum
            await eventually(lambda: _get(ops.port, "/readyz")[0] == 200, 60, "ready again")
        finally:
            stop.set()
            await asyncio.gather(*runs, return_exceptions=True)
            out["health_after_stop"] = _get(ops.port, "/healthz")[0]
            for s in servers:
                s.stop()
            for bus in [*buses, feeder]:
                await bus.close()
        for r in runs:
            r.result()
        return out

    out = asyncio.run(main())
    code, body = out["unready_before"]  # type: ignore[misc]
    assert code == 503 and "consumers not attached yet" in body
    assert int(out["read_when_ready"]) >= 1500  # type: ignore[call-overload]  # backlog read first
    assert out["health"] == 200
    # Both nodes publish marks (one id per tick); the stream keeps at most one per tick.
    published, stored = out["published"], out["stored_marks"]
    assert isinstance(published, int) and isinstance(stored, int)
    assert 2 <= stored <= float(out["seconds"]) + 1  # type: ignore[arg-type]
    assert published >= stored
    metrics = str(out["metrics"])
    assert "flowtrail_node_caught_up 1.0" in metrics
    assert "flowtrail_node_event_messages_total 1500.0" in metrics
    held = re.search(r"^flowtrail_node_event_bytes (\S+)$", metrics, re.M)
    assert held is not None and float(held.group(1)) > 0  # the events it read are held
    assert "flowtrail_node_events_forgotten_total 0.0" in metrics  # all within the retention
    assert 'flowtrail_node_decided_flows_total{source="unattributed"}' in metrics
    assert 'flowtrail_node_info{incarnation="n0/' in metrics
    assert "not connected to NATS" in str(out["unready_without_nats"])
    assert out["health_without_nats"] == 200  # alive: restarting it would not bring NATS back
    assert out["health_after_stop"] == 503


def _node_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "flowtrail.cluster", *args]


def test_config_file_endpoints_and_cluster_events_cli(nats_lab: NatsLab, tmp_path: Path) -> None:
    sim = simulate("churny", 8, flows=300)
    events = sim.events.slice(0, 30)
    write_table(events, tmp_path / "events.parquet")
    write_table(sim.regions, tmp_path / "regions.parquet")
    servers = ", ".join(f'"{u}"' for u in nats_lab.urls)
    config = tmp_path / "node.toml"
    config.write_text(
        f'[nats]\nservers = [{servers}]\nregions = "{tmp_path / "regions.parquet"}"\n'
        f'[node]\nregion = "{REGION}"\nname = "cfg-node"\nsink = "parquet"\n'
        f'out = "{tmp_path / "out"}"\nack-wait = "5s"\nlisten = "127.0.0.1:0"\n'
    )
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nregoin = "us-east"\n')
    refused = subprocess.run(
        _node_cmd("--config", str(bad)), capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "bad.toml" in refused.stderr and "'regoin'" in refused.stderr

    proc = subprocess.Popen(
        _node_cmd("--config", str(config), "--name", "from-flag"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        got, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if got else b""
        assert b"ready" in line, proc.stderr.read1() if proc.stderr else b""  # type: ignore[union-attr]
        hello = json.loads(line)
        assert hello["ready"].startswith("from-flag/")  # the flag overrides the file
        port = int(hello["listen"])

        def ready() -> bool:
            return _get(port, "/readyz")[0] == 200

        deadline = time.monotonic() + 30
        while not ready():
            assert time.monotonic() < deadline, _get(port, "/readyz")
            time.sleep(0.1)
        publish = ["-m", "flowtrail", "cluster-events", str(tmp_path / "events.parquet")]
        publish += ["--config", str(config)]
        results = [
            subprocess.run([sys.executable, *publish], capture_output=True, text=True, timeout=60)
            for _ in range(2)
        ]
        for result in results:
            assert result.returncode == 0, result.stderr
        nowhere = subprocess.run(
            [sys.executable, *publish[:4], "--nats", nats_lab.urls[0], "--region", "nowhere"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert nowhere.returncode != 0
        assert "flowtrail cluster-node --region nowhere" in nowhere.stderr, nowhere.stderr
        first, second = (json.loads(r.stdout) for r in results)
        assert not any(v["duplicate"] for v in first.values())
        assert all(v["duplicate"] for v in second.values())  # said, not silently dropped
        sent = {region: v["rows"] for region, v in first.items()}
        assert {region: v["rows"] for region, v in second.items()} == sent
        assert sum(sent.values()) >= events.num_rows and REGION in sent
        # Other events published after the duplicates: once the node has read them, it has
        # read whatever the second publish might have added before them (one stream, in
        # order). Its count must then be the first publish's plus these, nothing more.
        write_table(sim.events.slice(30, 30), tmp_path / "later.parquet")
        later_cmd = [sys.executable, *publish[:3], str(tmp_path / "later.parquet"), *publish[4:]]
        later = subprocess.run(later_cmd, capture_output=True, text=True, timeout=60)
        assert later.returncode == 0, later.stderr
        more = json.loads(later.stdout)[REGION]["rows"]
        assert more > 0
        want = f"flowtrail_node_event_rows_total {float(sent[REGION] + more)}"
        deadline = time.monotonic() + 30
        while want not in (got := _get(port, "/metrics")[1]):
            assert time.monotonic() < deadline, got[-3000:]
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0


def test_cluster_events_usage_errors_name_what_is_missing(tmp_path: Path) -> None:
    sim = simulate("churny", 9, flows=100)
    write_table(sim.events.slice(0, 3), tmp_path / "e.parquet")
    base = [sys.executable, "-m", "flowtrail", "cluster-events", str(tmp_path / "e.parquet")]
    for extra, missing in (
        ([], "--regions FILE or --region NAME"),
        (["--region", REGION], "--nats"),
    ):
        result = subprocess.run(
            base + extra, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"}
        )
        assert result.returncode == 2, result.stderr
        assert missing in result.stderr


def test_carry_events_must_leave_room_within_the_evidence_retention(tmp_path: Path) -> None:
    args = ["--nats", "nats://127.0.0.1:1", "--region", REGION, "--name", "n"]
    args += ["--out", str(tmp_path / "o.duckdb"), "--evidence-retention", "30m"]
    result = subprocess.run(
        _node_cmd(*args, "--carry-events", "20m"), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "--carry-events" in result.stderr and "half of --evidence-retention" in result.stderr
    assert not (tmp_path / "o.duckdb").exists()  # refused before anything was started


def test_a_node_that_cannot_attach_exits_with_the_error(
    nats_lab: NatsLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection (attaching fails only after ~90 s of retries against a real server,
    too slow for a test): the error ends `cluster-node` at once instead of leaving it waiting
    for a readiness that never comes (it then ignored SIGTERM)."""

    async def refuse(self: Bus, region: str) -> object:
        raise InputError(f"NATS refused work consumer of {region}: injected")

    monkeypatch.setattr(Bus, "work_consumer", refuse)
    bus_config = BusConfig(servers=nats_lab.urls, replicas=3)
    node_config = NodeConfig(REGION, "doomed", settings=Settings(use_events=False))
    sink = Store(tmp_path / "n.duckdb", retention_ns=None)

    async def main() -> None:
        await asyncio.wait_for(_serve(bus_config, node_config, None, sink, None, None), 30)

    with pytest.raises(InputError, match="injected"):
        asyncio.run(main())
