"""The agent's NATS sink against a real 3-server nats-server cluster, and a real agent into a
real cluster node.

Unit level: `NatsExporter` publishes to the region's work stream (read back equal through a
durable consumer), a re-sent batch id is stored once while the same id from another agent is
not, a batch over max_payload is split, a missing stream is an ExportError that says so (and
Delivery spools the batch until the stream exists), `dns_answers` batches go to a subject of
their own (spooled until a stream takes it), and with every NATS server stopped an
export fails within its timeout, then works again once the servers are back.

End to end (root, real eBPF): `flowtrail agent --sink nats` exports every second while the
test opens TCP connections on 127.0.0.1; a `flowtrail cluster-node` process takes the
batches from the work stream and writes them to a Parquet directory, where the test finds
its own connections by port, named by the host workload and the agent's exporter name.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from flowtrail.agent import exporter as exporter_module
from flowtrail.agent.command import dns_exporter
from flowtrail.agent.exporter import Delivery, Spool, make_exporter
from flowtrail.cli import main as cli_main
from flowtrail.cluster.agent_sink import CAFILE_ENV, NatsExporter, register
from flowtrail.cluster.bus import DNS, MSG_ID, Bus, BusConfig, decode
from flowtrail.cluster.natslab import NatsLab, create_streams_with, read_work_with, with_bus
from flowtrail.collector.sink import read_parquet_sink
from flowtrail.errors import ExportError, InputError
from flowtrail.lab.wait import stop_all, until
from flowtrail.schema import FLOWS

pytestmark = pytest.mark.timeout(120)
REGION = "us-east"
SECOND = 1_000_000_000
T = TypeVar("T")


def _flows(exporter: str, n: int, tag: str = "", pad: int = 0) -> pa.Table:
    t0 = 1_700_000_000 * SECOND
    rows = [
        {
            "flow_id": f"{exporter}:{tag}{i}",
            "exporter": exporter,
            "region": REGION,
            "local_ip": "10.0.0.1",
            "local_port": 40000 + i,
            "remote_ip": "10.0.0.2",
            "remote_port": 443,
            "direction": "outbound",
            "start_ns": t0 + i,
            "end_ns": t0 + i + SECOND,
            "state": "closed",
            "bytes_sent": i,
            "bytes_received": 2 * i,
            "local_workload": "x" * pad or "svc-a",
        }
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows, schema=FLOWS.schema)


def _exporter(lab: NatsLab, region: str = REGION, timeout_s: float = 10.0) -> NatsExporter:
    config = BusConfig(servers=lab.urls, publish_timeout_s=2.0, publish_attempts=3)
    return NatsExporter(config, region, timeout_s=timeout_s)


def _config(lab: NatsLab) -> BusConfig:
    return BusConfig(servers=lab.urls, replicas=3)


def _create_streams(lab: NatsLab, *regions: str) -> None:
    create_streams_with(_config(lab), list(regions))


def _read_work(lab: NatsLab, region: str = REGION) -> list[tuple[str, pa.Table]]:
    """Every batch waiting in the region's work stream, through the nodes' durable consumer."""
    return read_work_with(_config(lab), region)


def _messages(lab: NatsLab, region: str = REGION) -> int:
    async def count(bus: Bus) -> int:
        info = await bus.js.stream_info(bus.work_stream(region))
        return int(info.state.messages)

    return with_bus(_config(lab), count)


# -- unit level, real NATS ------------------------------------------------------------------


@pytest.mark.cluster
def test_published_batch_read_back_equal_with_exporter_prefixed_id(nats_lab: NatsLab) -> None:
    _create_streams(nats_lab, REGION)
    table = _flows("agent-a", 25)
    with _exporter(nats_lab) as sink:
        sink.export(table, "0001-77-000001")
        assert sink.stats["published_batches"] == 1 and sink.stats["published_rows"] == 25
    ((msg_id, got),) = _read_work(nats_lab)
    assert msg_id == "agent-a:0001-77-000001"
    assert got.equals(table)


@pytest.mark.cluster
def test_same_batch_id_stored_once_but_not_across_agents(nats_lab: NatsLab) -> None:
    _create_streams(nats_lab, REGION)
    with _exporter(nats_lab) as sink:
        sink.export(_flows("agent-a", 3), "batch-1")
        sink.export(_flows("agent-a", 3), "batch-1")  # a re-send after a lost ack
        assert sink.stats["duplicate_batches"] == 1
        sink.export(_flows("agent-b", 4), "batch-1")  # another host's batch, same local id
        sink.export(_flows("agent-b", 0), "batch-2")  # nothing to send: not published
    assert _messages(nats_lab) == 2
    got = dict(_read_work(nats_lab))
    assert sorted(got) == ["agent-a:batch-1", "agent-b:batch-1"]
    assert got["agent-b:batch-1"].num_rows == 4


@pytest.mark.cluster
def test_batch_over_max_payload_is_split(nats_lab: NatsLab) -> None:
    _create_streams(nats_lab, REGION)
    table = _flows("agent-a", 12, pad=1_000_000)  # ~12 MB; the lab's max_payload is 8 MB
    with _exporter(nats_lab) as sink:
        sink.export(table, "big")
        assert sink.stats["split_batches"] == 1
        sink.export(table, "big")  # the same split again: every part deduplicated
        assert sink.stats["duplicate_batches"] == 2
    got = _read_work(nats_lab)
    assert [i for i, _ in got] == ["agent-a:big.a", "agent-a:big.b"]
    assert pa.concat_tables([t for _, t in got]).equals(table)


@pytest.mark.cluster
def test_missing_stream_is_an_export_error_and_the_batch_waits_in_the_spool(
    nats_lab: NatsLab, tmp_path: Path
) -> None:
    table = _flows("agent-a", 5)
    with _exporter(nats_lab) as sink:
        subject = re.escape("flowtrail.work.us-east")
        with pytest.raises(ExportError, match=f"no JetStream stream takes {subject}"):
            sink.export(table, "early")
        delivery = Delivery(sink, Spool(tmp_path / "spool", 1 << 20), backoff_s=0.01)
        delivery.submit(table, "early")
        assert delivery.metrics()["spooled_batches"] == 1
        _create_streams(nats_lab, REGION)  # a node comes up and creates the streams
        assert delivery.retry(force=True) == 1
    ((msg_id, got),) = _read_work(nats_lab)
    assert msg_id == "agent-a:early" and got.equals(table)


@pytest.mark.cluster
def test_the_agents_dns_answers_reach_the_evidence_stream_once_it_exists(
    nats_lab: NatsLab, tmp_path: Path
) -> None:
    """The agent's DNS exporter for --sink nats: answers go onto the region's evidence stream
    (which every node learns from), marked as answers, never into the flows' work stream;
    spooled while the region's streams do not exist yet."""
    table = pa.table({"exporter": ["agent-a"] * 3, "query_name": ["a.test", "b.test", "c.test"]})
    sink = dns_exporter("nats", ",".join(nats_lab.urls), REGION, None)
    try:
        delivery = Delivery(sink, Spool(tmp_path / "spool", 1 << 20), backoff_s=0.01)
        delivery.submit(table, "d1")
        assert "no JetStream stream takes flowtrail.evidence.us-east" in (delivery.last_error or "")
        assert delivery.metrics()["spooled_rows"] == 3
        _create_streams(nats_lab, REGION)
        assert delivery.retry(force=True) == 1
    finally:
        sink.close()  # type: ignore[attr-defined]  # Exporter has no close; this one does
    assert _messages(nats_lab) == 0  # the flows' work stream holds none of it

    async def last(bus: Bus) -> tuple[dict[str, str], pa.Table]:
        stream = bus.evidence_stream(REGION)
        info = await bus.js.stream_info(stream)
        msg = await bus.js.get_msg(stream, info.state.last_seq)
        return dict(msg.headers or {}), decode(msg.data)

    headers, got = with_bus(_config(nats_lab), last)
    assert headers.get(DNS) == "1" and headers.get(MSG_ID) == "agent-a:dns:d1"
    assert got.equals(table)


@pytest.mark.cluster
def test_export_fails_within_its_timeout_while_nats_is_down_then_recovers(
    nats_lab: NatsLab,
) -> None:
    _create_streams(nats_lab, REGION)
    timeout_s = 3.0
    with _exporter(nats_lab, timeout_s=timeout_s) as sink:
        sink.export(_flows("agent-a", 2), "before")
        nats_lab.stop()  # every server gone
        # Each export ends at the sink's own timeout ("no answer within"), not when the
        # bus's publish tries run out (~6 s here) nor never; the bound only guards a hang.
        for batch_id in ("during-1", "during-2"):
            t0 = time.monotonic()
            with pytest.raises(ExportError, match=f"no answer within {timeout_s:g} s"):
                sink.export(_flows("agent-a", 2, tag=batch_id), batch_id)
            assert time.monotonic() - t0 < timeout_s + 60
        # A sink that never connected fails the same way (its first connect cannot finish).
        with _exporter(nats_lab, timeout_s=timeout_s) as fresh:
            t0 = time.monotonic()
            with pytest.raises(ExportError, match=f"no answer within {timeout_s:g} s"):
                fresh.export(_flows("agent-a", 1), "never")
            assert time.monotonic() - t0 < timeout_s + 60
        nats_lab.start()  # same ports and stores: the client reconnects by itself
        deadline = time.monotonic() + 45
        while True:  # until the R3 stream has a leader again
            try:
                sink.export(_flows("agent-a", 2, tag="after"), "after")
                break
            except ExportError:
                assert time.monotonic() < deadline, sink.last_error
                time.sleep(0.5)
        assert sink.stats["disconnects"] >= 1 and sink.stats["reconnects"] >= 1
    ids = [i for i, _ in _read_work(nats_lab)]
    assert ids[0] == "agent-a:before" and ids[-1] == "agent-a:after"


def _tasks_in(sink: NatsExporter) -> int:
    """Tasks running in the sink's event loop (besides the one counting them)."""

    async def count() -> int:
        return len(asyncio.all_tasks()) - 1

    return asyncio.run_coroutine_threadsafe(count(), sink._loop).result(10)


def _client_connections(lab: NatsLab) -> int:
    port = lab.servers[0].monitor_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/connz", timeout=10) as answer:
        return int(json.load(answer)["num_connections"])


@pytest.mark.cluster
def test_exports_cut_while_connecting_leave_no_connect_behind(tmp_path: Path) -> None:
    """An agent that starts while NATS is down: each export's first connect is cut at the
    export's timeout. None may live on: each would go on trying the servers and, once they
    answer, hold a connection nobody uses."""
    lab = NatsLab(tmp_path / "nats", size=1)  # not started yet: nothing answers
    config = BusConfig(servers=lab.urls, replicas=1)
    sink = NatsExporter(config, REGION, timeout_s=1.0)
    try:
        for i in range(3):
            with pytest.raises(ExportError, match="no answer within 1 s"):
                sink.export(_flows("agent-a", 1), f"down-{i}")
        # A cut connect is ended in the sink's loop, just after its export gave up.
        left = until(lambda: _tasks_in(sink), lambda n: n == 0, timeout_s=30)
        assert left == 0, f"{left} tasks still running in the sink's loop"
        lab.start()
        create_streams_with(config, [REGION])
        deadline = time.monotonic() + 45
        while True:
            try:
                sink.export(_flows("agent-a", 1), "up")
                break
            except ExportError:
                assert time.monotonic() < deadline, sink.last_error
                time.sleep(0.2)  # the next try, not a wait for something
        # One client: the sink's (the stream-creating one closes; the server notices soon).
        assert until(lambda: _client_connections(lab), lambda n: n <= 1, timeout_s=30) == 1
    finally:
        sink.close()
        lab.stop()


def test_close_is_prompt_and_final() -> None:
    sink = NatsExporter(BusConfig(servers=["nats://127.0.0.1:1"]), REGION, timeout_s=1.0)
    sink.close()
    sink.close()  # idempotent
    with pytest.raises(ExportError, match="closed"):
        sink.export(_flows("agent-a", 1), "late")


# -- configuration (no NATS needed) ----------------------------------------------------------


def test_factory_needs_region_servers_and_readable_files(monkeypatch: pytest.MonkeyPatch) -> None:
    # The exporter registry is process-wide: whatever this test registers goes with it.
    monkeypatch.setattr(exporter_module, "EXPORTERS", dict(exporter_module.EXPORTERS))
    register(None)
    with pytest.raises(InputError, match="--region"):
        make_exporter("nats", "nats://127.0.0.1:4222")
    register(REGION)
    with pytest.raises(InputError, match="--sink nats needs --out"):
        make_exporter("nats", None)
    with pytest.raises(InputError, match="expected nats://"):
        make_exporter("nats", "https://127.0.0.1:4222")
    monkeypatch.setenv(CAFILE_ENV, "/nonexistent/ca.pem")
    with pytest.raises(InputError, match=CAFILE_ENV):
        make_exporter("nats", "nats://127.0.0.1:4222")
    monkeypatch.delenv(CAFILE_ENV)
    register("bad region!")
    with pytest.raises(InputError, match="region"):
        make_exporter("nats", "nats://127.0.0.1:4222")
    register(REGION)
    sink = make_exporter("nats", "nats://127.0.0.1:4222, nats://127.0.0.1:4223")
    assert isinstance(sink, NatsExporter)
    assert sink.config.servers == ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]
    assert sink.subject == "flowtrail.work.us-east"
    sink.close()


def test_cli_without_region_names_the_flag() -> None:
    result = CliRunner().invoke(cli_main, ["agent", "--sink", "nats", "--out", "nats://h:4222"])
    assert result.exit_code == 2
    assert "--region" in result.output


# -- end to end: the real agent (eBPF) into a real cluster node -------------------------------


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from flowtrail.cli import main; main()", *args]


def _wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in {path.name}: {path.read_text(errors='replace')[-3000:]}")


def _clock_mark(lab: NatsLab, mark_id: str) -> None:
    async def mark(bus: Bus) -> None:
        await bus.publish_clock(REGION, time.time_ns(), mark_id)

    with_bus(_config(lab), mark)


def _connections(count: int) -> set[tuple[int, int]]:
    """`count` TCP connections on 127.0.0.1 with a few bytes each way: (client, server) ports."""
    ports = set()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(count)
        sport = listener.getsockname()[1]
        for _ in range(count):
            client = socket.create_connection(("127.0.0.1", sport))
            server, _ = listener.accept()
            client.sendall(b"q" * 300)
            server.recv(4096)
            server.sendall(b"a" * 700)
            client.recv(4096)
            ports.add((client.getsockname()[1], sport))
            client.close()
            server.close()
    return ports


@pytest.mark.kernel
@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_real_agent_publishes_into_a_real_cluster_node(nats_lab: NatsLab, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    exporter, host = f"e2e-agent-{tag}", f"e2e-host-{tag}"
    out = tmp_path / "node-out"
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as f:
            proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    node_args = ["cluster-node", "--region", REGION, "--name", "east-0"]
    for url in nats_lab.urls:
        node_args += ["--nats", url]
    node_args += ["--sink", "parquet", "--out", str(out), "--status-file", str(tmp_path / "n.json")]
    agent_args = ["agent", "--sink", "nats", "--out", ",".join(nats_lab.urls)]
    agent_args += ["--region", REGION, "--interval", "1s", "--exporter", exporter]
    # The host resolver alone: whatever cgroup runs this test, its sockets are the host's.
    agent_args += ["--host-workload", host, "--resolvers", "explicit,host", "--stdout"]
    agent_args += ["--spool", str(tmp_path / "spool"), "--metrics", str(tmp_path / "a.json")]
    try:
        node = spawn(_cli(*node_args), tmp_path / "node.log")
        _wait_for(tmp_path / "node.log", '"ready"', node, 60)  # streams exist now
        agent = spawn(_cli(*agent_args), tmp_path / "agent.log")
        _wait_for(tmp_path / "agent.log", "LOCAL_WORKLOAD", agent, 60)  # capture attached
        ours = _connections(5)
        want = {(c, "outbound") for c, _ in ours} | {(c, "inbound") for c, _ in ours}
        found: dict[tuple[int, str], dict[str, object]] = {}
        deadline = time.monotonic() + 40
        while set(found) != want:
            assert agent.poll() is None and node.poll() is None, "a process died"
            assert time.monotonic() < deadline, f"not stored: {want - set(found)}"
            # A node decides on its data clock; wall-clock marks keep it moving here even
            # when the agent has nothing more to send (docs/cluster.md, Clock).
            _clock_mark(nats_lab, f"mark-{tag}-{time.monotonic_ns()}")
            time.sleep(0.5)
            rows = read_parquet_sink(out)
            if not rows.num_rows:
                continue
            for r in rows.filter(pc.equal(rows.column("exporter"), exporter)).to_pylist():
                # the client's row names its own port locally; the server's names it remotely
                key = (r["local_port"], "outbound")
                if r["direction"] == "inbound":
                    key = (r["remote_port"], "inbound")
                if key in want and r["state"] == "closed":
                    found[key] = r
        for (_port, direction), row in found.items():
            assert row["local_workload"] == host and row["exporter"] == exporter
            # Loopback is named from this host's own rows: the other end is this host too.
            assert (row["remote_workload"], row["remote_source"]) == (host, "heartbeat"), row
            assert row["region"] == REGION and row["outcome"] == "established"
            assert str(row["flow_id"]).startswith(f"{exporter}:")
            assert row["received_ns"] is not None  # stamped by the node
            assert row["local_ip"] == row["remote_ip"] == "127.0.0.1"
            sent, received = (300, 700) if direction == "outbound" else (700, 300)
            assert (row["bytes_sent"], row["bytes_received"]) == (sent, received), row
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(90) == 0, (tmp_path / "agent.log").read_text()[-3000:]
        log = (tmp_path / "agent.log").read_text()
        assert "captured_rows=" in log and "Traceback" not in log
    finally:
        stop_all(procs)
    metrics = json.loads((tmp_path / "a.json").read_text())  # written at exit
    assert metrics["exported_batches"] >= 1 and metrics["export_failures"] == 0, metrics
    assert metrics["spool_pending_batches"] == 0, metrics
