"""Pods named by their workload on the real kernel: real cgroups laid out as the kubelet lays
them out (systemd driver with containerd scopes, and the cgroupfs driver), the kubelet's pod
directories as files, real processes making a real connection between two "pods" (network
namespaces), the real agent capturing it, and `flowtrail attribute` naming the remote side.

The kubelet's directories are a temporary tree (the agent is pointed at it): this machine runs
no kubelet, and the agent reads nothing else of it.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowtrail.agent.exporter import Delivery, ParquetDir
from flowtrail.agent.identity import IdentityChain
from flowtrail.lab import Client, Lab, Server
from flowtrail.lab.agent import running_agent
from flowtrail.lab.wait import until

pytestmark = pytest.mark.kernel

CART_POD = "cart-7d9f8b6c5d-x2kqz"  # a Deployment's pod: <deployment>-<hash>-<suffix>


def kubelet_pod_dir(root: Path, uid: str, pod: str, namespace: str) -> None:
    base = root / uid
    base.mkdir(parents=True)
    (base / "etc-hosts").write_text(
        f"# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n\n10.244.0.9\t{pod}\n"
    )
    token = base / "volumes" / "kubernetes.io~projected" / "kube-api-access-q8x7p"
    token.mkdir(parents=True)
    (token / "namespace").write_text(namespace)


def rows(out: Path) -> list[dict[str, Any]]:
    return [r for f in sorted(out.glob("flows-*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_pods_are_named_by_workload_with_the_pod_in_its_column(tmp_path: Path) -> None:
    out, logs, kubelet = tmp_path / "out", tmp_path / "log-pods", tmp_path / "kubelet-pods"
    cart_uid, db_uid = str(uuid.uuid4()), str(uuid.uuid4())
    # The cart pod is known by its log directory, the StatefulSet's db-0 only by the kubelet's
    # pod directory (its logs rotated away).
    (logs / f"shop_{CART_POD}_{cart_uid}" / "cart").mkdir(parents=True)
    kubelet_pod_dir(kubelet, db_uid, "db-0", "data")
    identity = IdentityChain.build(
        host_workload="lab-host", pod_logs=str(logs), kubelet_pods=str(kubelet)
    )
    with Lab("k8s") as net:
        cart = net.client.at(net.pod_cgroup(cart_uid, driver="systemd"))
        db = net.server.at(net.pod_cgroup(db_uid, qos="besteffort", driver="cgroupfs"))
        with running_agent(Delivery(ParquetDir(out)), identity=identity) as agent:

            def losses() -> int:
                m = agent.metrics()
                return sum(v for k, v in m.items() if k.startswith("capture_drop_"))

            for _ in range(3):  # a busy host may lose a record, but only a counted one
                before = losses()
                port, cport = net.port(), net.port()
                srv = net.serve(db, Server(net.server.ip, port, recv=1000, send=10))
                spec = Client(ip=net.server.ip, port=port, bind=net.client.ip, bind_port=cport,
                              send=1000, recv=10)  # fmt: skip
                cli = net.spawn(cart, spec)
                assert cli.wait(timeout=30) == 0 and srv.wait(timeout=30) == 0
                ends = {port, cport}

                def mine(ends: set[int] = ends) -> list[dict[str, Any]]:
                    return [r for r in rows(out) if {r["local_port"], r["remote_port"]} == ends]

                got = until(mine, lambda rs: len(rs) >= 2, 30)
                if len(got) >= 2:
                    break
                assert losses() > before, f"a row of port {port} missing, no capture loss counted"
            else:
                pytest.fail("rows lost to counted capture drops on all 3 tries: host too busy")
    by_dir = {r["direction"]: r for r in got}
    assert len(got) == 2, got
    assert by_dir["outbound"]["local_workload"] == "k8s:shop/cart"
    assert by_dir["outbound"]["local_pod"] == CART_POD
    assert by_dir["inbound"]["local_workload"] == "k8s:data/db"
    assert by_dir["inbound"]["local_pod"] == "db-0"

    # Through attribution: the client's remote side is named from the server's own row, and
    # the pod column rides along untouched.
    flows, attributed = tmp_path / "flows.parquet", tmp_path / "attributed.parquet"
    pq.write_table(
        pa.concat_tables(pq.read_table(f) for f in sorted(out.glob("flows-*.parquet"))), flows
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowtrail",
            "attribute",
            "--flows",
            str(flows),
            "--out",
            str(attributed),
        ],
        capture_output=True,
        text=True,
        timeout=600,  # a first run compiles the engine's kernels (cached after)
    )
    assert done.returncode == 0, done.stderr
    table = pq.read_table(attributed).to_pylist()
    client = next(r for r in table if r["local_port"] == cport and r["direction"] == "outbound")
    assert client["remote_workload"] == "k8s:data/db"
    assert client["local_pod"] == CART_POD
