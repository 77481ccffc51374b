"""Agent → collector → store on the real kernel: both ends of a connection come out named.

Two network namespaces joined by a veth pair (unique names, test-only addresses) and two
cgroups (a Kubernetes-pod-like one and a systemd-service-like one) under
/sys/fs/cgroup/unified/flowtrail-coll-<tag>/. A real agent (BPF capture) runs in this
process and sends its batches through CollectorExporter over TLS with its token to a real
collector process, whose DuckDB store must then hold both rows with each other's workload as
remote_workload. Everything created is removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from test_collector_e2e import Proc, token

pytestmark = pytest.mark.kernel

CGROUP2 = Path("/sys/fs/cgroup/unified")

WORKER = r"""
import ctypes, json, os, socket, sys
spec = json.loads(sys.argv[1])
with open(spec["cgroup"] + "/cgroup.procs", "w") as f:
    f.write("0")
fd = os.open("/run/netns/" + spec["netns"], os.O_RDONLY)
if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
    raise OSError(ctypes.get_errno(), "setns")
if spec["role"] == "server":
    ls = socket.socket()
    ls.bind((spec["ip"], spec["port"]))
    ls.listen(1)
    print("ready", flush=True)
    c, _ = ls.accept()
    n = 0
    while n < spec["bytes"]:
        n += len(c.recv(65536))
    c.sendall(b"ok")
    c.close()
else:
    c = socket.socket()
    c.bind((spec["bind"], 0))
    c.connect((spec["ip"], spec["port"]))
    c.sendall(b"x" * spec["bytes"])
    c.recv(2)
    c.close()
    print("done", flush=True)
"""


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


def test_agent_sends_over_tls_and_both_ends_are_attributed(tmp_path: Path) -> None:
    from flowtrail.agent.capture import Capture
    from flowtrail.agent.conntrack import NatResolver
    from flowtrail.agent.exporter import Delivery
    from flowtrail.agent.identity import IdentityChain
    from flowtrail.agent.netlink import NetnsIndex
    from flowtrail.agent.runner import Agent, AgentConfig
    from flowtrail.agent.snapshots import Snapshotter
    from flowtrail.collector.client import CollectorExporter

    store = pytest.importorskip("flowtrail.store")
    tag = uuid.uuid4().hex[:8]
    net = random.randint(0, 255)
    cns, sns, ifc, ifs = f"ftco-c-{tag}", f"ftco-s-{tag}", f"ftcc{tag}", f"ftcs{tag}"
    cip, sip = f"10.215.{net}.1", f"10.215.{net}.2"
    root = CGROUP2 / f"flowtrail-coll-{tag}"
    pod_uid = str(uuid.uuid4())
    pod = (
        root / "kubepods.slice" / "kubepods-besteffort.slice"
        / f"kubepods-besteffort-pod{pod_uid.replace('-', '_')}.slice"
        / f"cri-containerd-{uuid.uuid4().hex}{uuid.uuid4().hex}.scope"
    )  # fmt: skip
    svc = root / "system.slice" / f"db-{tag}.service"
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    proc = Proc(tmp_path, ["lab-host"])
    stop = threading.Event()
    thread: threading.Thread | None = None
    capture = None
    try:
        sh("ip", "netns", "add", cns)
        sh("ip", "netns", "add", sns)
        sh("ip", "link", "add", ifc, "netns", cns, "type", "veth", "peer", ifs, "netns", sns)
        for ns, ifname, ip in ((cns, ifc, cip), (sns, ifs, sip)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", ifname)
            sh("ip", "-n", ns, "link", "set", ifname, "up")
        pod.mkdir(parents=True)
        svc.mkdir(parents=True)
        capture = Capture()
        capture.start()
        netns = NetnsIndex()
        exporter = CollectorExporter(proc.url, token("lab-host"), proc.cafile)
        agent = Agent(
            capture,
            AgentConfig(exporter="lab-host", region="lab", interval_s=1.0, poll_ms=100),
            IdentityChain.build(host_workload="lab-host-itself"),
            Delivery(exporter),
            nat=NatResolver(netns),
            snapshotter=Snapshotter(netns),
        )
        thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        thread.start()

        port = random.randint(20000, 50000)
        spec = {"cgroup": str(svc), "netns": sns, "ip": sip, "port": port, "bytes": 50_000}
        server = subprocess.Popen(
            [sys.executable, str(worker), json.dumps({**spec, "role": "server"})],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = {"role": "client", "cgroup": str(pod), "netns": cns, "ip": sip, "port": port,
                  "bind": cip, "bytes": 50_000}  # fmt: skip
        subprocess.run([sys.executable, str(worker), json.dumps(client)], check=True, timeout=30)
        server.wait(timeout=30)
        time.sleep(3)  # two agent intervals: the rows leave the agent
    finally:
        stop.set()
        if thread is not None:
            thread.join(15)
        if capture is not None:
            capture.close()
        for ns in (cns, sns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if root.exists():
            for d in sorted(
                (p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
            ):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                root.rmdir()
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
