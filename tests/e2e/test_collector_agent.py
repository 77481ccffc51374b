"""Agent → collector → store on the real kernel: both ends of a connection come out named.

The namespace lab (flowtrail/lab/): two network namespaces joined by a veth pair (unique
names, test-only addresses) and two cgroups (a Kubernetes-pod-like one and a
systemd-service-like one) under /sys/fs/cgroup/unified/flowtrail-coll-<tag>/. A real agent
(BPF capture) runs in this process and sends its batches through CollectorExporter over TLS
with its token to a real collector process, whose DuckDB store must then hold both rows with
each other's workload as remote_workload. Everything created is removed at the end.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from test_collector_e2e import Proc, token

from flowtrail.lab import Client, Lab, Server

pytestmark = pytest.mark.kernel


def test_agent_sends_over_tls_and_both_ends_are_attributed(tmp_path: Path) -> None:
    from flowtrail import store  # plainly: a broken store must fail, never skip
    from flowtrail.agent.exporter import Delivery
    from flowtrail.collector.client import CollectorExporter
    from flowtrail.lab.agent import running_agent

    pod_uid = str(uuid.uuid4())
    # The two ends' rows may leave the agent an interval (plus any stall) apart: the first
    # must still be waiting for its heartbeat when the second arrives.
    proc = Proc(tmp_path, ["lab-host"], "--max-wait", "10s")
    exporter = CollectorExporter(proc.url, token("lab-host"), proc.cafile)
    with Lab("coll") as lab:
        pod = lab.client.at(lab.pod_cgroup(pod_uid, qos="besteffort"))
        svc = lab.server.at(lab.service_cgroup(f"db-{lab.tag}"))
        cip, sip, tag = lab.client.ip, lab.server.ip, lab.tag
        with running_agent(Delivery(exporter)) as agent:
            port = lab.port()
            server = lab.serve(svc, Server(sip, port, recv=50_000, send=2))
            client = lab.spawn(pod, Client(sip, port, send=50_000, recv=2, bind=cip))
            assert client.wait(timeout=30) == 0
            server.wait(timeout=30)
            time.sleep(3)  # two agent intervals: the rows leave the agent
    try:
        assert exporter.stats["sent_batches"] > 0, agent.metrics()
        proc.wait_idle()
        assert proc.stop() == 0
    finally:
        if proc.p.poll() is None:
            proc.p.kill()
    with store.Store(tmp_path / "data" / "flows.duckdb") as s:
        rows = s.read("(local_port = ? OR remote_port = ?)", [port, port]).to_pylist()
    rows = [r for r in rows if {r["local_ip"], r["remote_ip"]} == {cip, sip}]
    assert len(rows) == 2, rows
    out = next(r for r in rows if r["direction"] == "outbound")
    inb = next(r for r in rows if r["direction"] == "inbound")
    assert out["local_workload"] == f"k8s:pod/{pod_uid}"
    assert inb["local_workload"] == f"systemd:db-{tag}.service"
    assert (out["remote_workload"], out["remote_source"]) == (inb["local_workload"], "heartbeat")
    assert (inb["remote_workload"], inb["remote_source"]) == (out["local_workload"], "heartbeat")
    assert {r["exporter"] for r in rows} == {"lab-host"}
