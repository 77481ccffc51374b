"""Local identity: resolver chain, path parsing, registrations. No privileges needed.

Cgroup ids here are taught to CgroupPaths by hand (`add`) or learned by scanning a plain
directory tree standing in for the cgroup2 mount: real cgroups need root and are exercised in
tests/kernel/test_agent_e2e.py. Batches are hand-built RAW_SCHEMA rows (no capture needed).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pytest

from flowtrail.agent.identity import (
    CgroupPaths,
    IdentityChain,
    Registry,
    container_of,
    kubernetes_pod_uid,
    load_identity_file,
    parse_resolvers,
)
from flowtrail.agent.records import RAW_SCHEMA
from flowtrail.errors import InputError

HOST_NS = 4026531840
POD_NS = 4026532500
UID = "0f3c9a4e-1b2d-4c5e-8f70-123456789abc"
CID = "a" * 64
K8S_SYSTEMD = (
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}"
    f".slice/cri-containerd-{CID}.scope"
)
K8S_CGROUPFS = f"/kubepods/besteffort/pod{UID}/{CID}"


def raw(rows: list[dict[str, object]]) -> pa.Table:
    base: dict[str, object] = {
        "sock_id": 1,
        "family": 4,
        "local_ip": "10.0.0.1",
        "local_port": 40000,
        "remote_ip": "10.0.0.2",
        "remote_port": 80,
        "direction": "outbound",
        "outcome": "established",
        "start_ns": 1,
        "end_ns": 2,
        "bytes_sent": 0,
        "bytes_received": 0,
        "segs_sent": 0,
        "segs_received": 0,
        "retransmits": 0,
        "srtt_us": 0,
        "cgroup_id": 0,
        "netns_ino": HOST_NS,
        "pid": 0,
        "comm": "x",
    }
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=RAW_SCHEMA)


def chain(
    tmp_path: Path, order: tuple[str, ...], registry: Registry | None = None, **kw: object
) -> IdentityChain:
    c = IdentityChain.build(
        order,
        registry=registry,
        cgroup_root=str(tmp_path / "nocgroup"),
        pod_logs=str(tmp_path / "pods"),
        docker_root=str(tmp_path / "docker"),
        host_netns=HOST_NS,
        **kw,  # type: ignore[arg-type]
    )
    c.cgroups.add(101, K8S_SYSTEMD)
    c.cgroups.add(102, K8S_CGROUPFS)
    c.cgroups.add(103, "/system.slice/payments.service")
    c.cgroups.add(104, f"/system.slice/docker-{'b' * 64}.scope")
    c.cgroups.add(105, "/user.slice/user-1000.slice/session-3.scope")
    c.cgroups.add(106, "/system.slice/billing.service/worker")
    return c


def test_kubernetes_paths_both_cgroup_drivers() -> None:
    assert kubernetes_pod_uid(K8S_SYSTEMD) == UID
    assert kubernetes_pod_uid(K8S_CGROUPFS) == UID
    assert kubernetes_pod_uid(f"/system.slice/pod{UID}.slice") is None  # not under kubepods
    assert kubernetes_pod_uid("/kubepods.slice/kubepods-burstable.slice") is None


def test_container_runtime_paths() -> None:
    assert container_of(f"/system.slice/docker-{CID}.scope") == ("docker", CID)
    assert container_of(f"/docker/{CID}") == ("docker", CID)
    assert container_of(f"/x/crio-{CID}.scope") == ("crio", CID)
    assert container_of(f"/x/crio-conmon-{CID}.scope") is None  # the monitor, not the container
    assert container_of(f"/machine.slice/libpod-{CID}.scope/container") == ("podman", CID)
    assert container_of(f"/x/cri-containerd-{CID}.scope") == ("containerd", CID)
    assert container_of("/system.slice/sshd.service") is None


def test_chain_first_answer_wins_and_unknown_is_null(tmp_path: Path) -> None:
    c = chain(tmp_path, ("kubernetes", "container", "systemd", "host"), host_workload="edge-host")
    batch = raw(
        [
            {"cgroup_id": 101, "netns_ino": POD_NS},  # k8s pod (its container scope loses)
            {"cgroup_id": 102, "netns_ino": POD_NS},
            {"cgroup_id": 103},  # systemd service in the host netns: systemd before host
            {"cgroup_id": 104, "netns_ino": POD_NS},  # docker container
            {"cgroup_id": 105, "netns_ino": POD_NS},  # a login session in another netns: nobody
            {"cgroup_id": 105},  # same session, host netns: the host's identity
            {"cgroup_id": 999, "netns_ino": POD_NS},  # unknown cgroup id: null, not a guess
            {"cgroup_id": 106},  # a sub-cgroup of a service is still that service
        ]
    )
    got = c.resolve(batch).to_pylist()
    assert got == [
        f"k8s:pod/{UID}",
        f"k8s:pod/{UID}",
        "systemd:payments.service",
        f"docker:{'b' * 12}",
        None,
        "edge-host",
        None,
        "systemd:billing.service",
    ]
    assert c.stats == {"identity_named": 6, "identity_unnamed": 2}
    assert c.by_resolver["kubernetes"] == 2 and c.by_resolver["host"] == 1


def test_order_is_configurable(tmp_path: Path) -> None:
    batch = raw([{"cgroup_id": 101}])
    assert chain(tmp_path, ("kubernetes", "container")).resolve(batch).to_pylist() == [
        f"k8s:pod/{UID}"
    ]
    assert chain(tmp_path, ("container", "kubernetes")).resolve(batch).to_pylist() == [
        f"containerd:{CID[:12]}"
    ]
    assert chain(tmp_path, ("host",), host_workload="h").resolve(batch).to_pylist() == ["h"]
    with pytest.raises(InputError, match="unknown"):
        parse_resolvers("explicit,dns")


def test_pod_and_docker_names_from_runtime_state(tmp_path: Path) -> None:
    (tmp_path / "pods" / f"shop_cart-7d9f_{UID}").mkdir(parents=True)
    cfg = tmp_path / "docker" / "containers" / ("b" * 64)
    cfg.mkdir(parents=True)
    (cfg / "config.v2.json").write_text('{"Name": "/redis-cache"}')
    c = chain(tmp_path, ("kubernetes", "container"))
    got = c.resolve(raw([{"cgroup_id": 101}, {"cgroup_id": 104}])).to_pylist()
    assert got == ["k8s:shop/cart-7d9f", "docker:redis-cache"]


def test_explicit_registrations_most_specific_first(tmp_path: Path) -> None:
    reg = Registry()
    reg.register("shared-host", ip="10.0.0.1")
    reg.register("api-on-8443", ip="10.0.0.1", port=8443)
    reg.register("billing", cgroup="/system.slice/billing.service")
    reg.register("blue-ns", netns=POD_NS)
    c = chain(tmp_path, ("explicit", "systemd"), registry=reg)
    batch = raw(
        [
            {"local_port": 8443},
            {"local_port": 9000},
            {"local_ip": "10.9.9.9", "cgroup_id": 106},  # subtree of the registered cgroup
            {"local_ip": "10.9.9.9", "cgroup_id": 103},  # unregistered: systemd answers
            {"local_ip": "10.9.9.9", "netns_ino": POD_NS},
            {"local_ip": "10.9.9.9"},
        ]
    )
    assert c.resolve(batch).to_pylist() == [
        "api-on-8443",
        "shared-host",
        "billing",
        "systemd:payments.service",
        "blue-ns",
        None,
    ]
    # Registrations change at run time (the local API); the next batch sees it.
    assert reg.unregister("api-on-8443") == 1
    assert c.resolve(raw([{"local_port": 8443}])).to_pylist() == ["shared-host"]
    with pytest.raises(InputError, match="registered to both"):
        reg.register("someone-else", ip="10.0.0.1")


def test_identity_file_and_reload(tmp_path: Path) -> None:
    f = tmp_path / "identity.toml"
    f.write_text(
        'host = "edge-7"\nresolvers = ["explicit", "host"]\n'
        '[[register]]\nworkload = "payments"\nip = "::FFFF:10.1.2.3"\n'
        '[[register]]\nworkload = "api"\nip = "2001:DB8::1"\nport = 443\n'
    )
    parsed = load_identity_file(f)
    assert parsed.host == "edge-7" and parsed.resolvers == ["explicit", "host"]
    assert [(r.workload, r.ip, r.port) for r in parsed.registrations] == [
        ("payments", "10.1.2.3", None),  # IPv4-mapped written as IPv4, as the contract says
        ("api", "2001:db8::1", 443),
    ]
    reg = Registry(f)
    c = chain(tmp_path, ("explicit", "host"), registry=reg)
    assert c.resolve(raw([{"local_ip": "10.1.2.3", "netns_ino": POD_NS}])).to_pylist() == [
        "payments"
    ]
    f.write_text('[[register]]\nworkload = "ledger"\nip = "10.1.2.3"\n')
    os.utime(f, (time.time() + 5, time.time() + 5))
    assert reg.reload() is True
    assert c.resolve(raw([{"local_ip": "10.1.2.3"}])).to_pylist() == ["ledger"]
    assert reg.reload() is False  # unchanged


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[register]]\nworkload = "a"\nip = "10.0.0.300"\n', "entry 1: 'ip' '10.0.0.300'"),
        ('[[register]]\nworkload = "a"\nport = 80\n', "entry 1: give exactly one"),
        ('[[register]]\nworkload = "a"\nip = "10.0.0.1"\nport = 70000\n', "entry 1: 'port'"),
        ('[[register]]\nworkload = "a"\ncgroup = "x.service"\n', "'cgroup' must be a path"),
        (
            '[[register]]\nworkload = "a"\nip = "1.1.1.1"\n'
            '[[register]]\nworkload = "b"\nip = "1.1.1.1"\n',
            "registered to both",
        ),
        ('hostt = "x"\n', "unknown key"),
        ('[[register]]\nworkload = "a"\nip = "1.1.1.1"\ncolour = 1\n', "entry 1: unknown"),
        ("host = \n", "not valid TOML"),
        ('resolvers = "explicit,magic"\n', "unknown ['magic']"),
    ],
)
def test_identity_file_errors_name_file_and_entry(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(InputError) as err:
        load_identity_file(f)
    assert str(f) in str(err.value)
    assert message in str(err.value)


def test_broken_edit_keeps_last_good_registrations(tmp_path: Path) -> None:
    f = tmp_path / "identity.toml"
    f.write_text('[[register]]\nworkload = "payments"\nip = "10.1.2.3"\n')
    reg = Registry(f)
    c = chain(tmp_path, ("explicit",), registry=reg)
    f.write_text("this is not toml = = =")
    os.utime(f, (time.time() + 5, time.time() + 5))
    c.refresh()  # the periodic upkeep swallows the bad edit, keeping the old set
    assert c.resolve(raw([{"local_ip": "10.1.2.3"}])).to_pylist() == ["payments"]


def test_learned_cgroup_keeps_its_name_after_removal(tmp_path: Path) -> None:
    # A plain directory tree stands in for the cgroup2 mount: ids are inode numbers either way.
    root = tmp_path / "cg"
    svc = root / "system.slice" / "gone.service"
    svc.mkdir(parents=True)
    cg_id = svc.stat().st_ino
    c = IdentityChain.build(("systemd",), cgroup_root=str(root), host_netns=HOST_NS)
    c.refresh()  # the agent's periodic scan learns it while it exists
    svc.rmdir()
    assert not svc.exists()
    assert c.resolve(raw([{"cgroup_id": cg_id}])).to_pylist() == ["systemd:gone.service"]


def test_cgroup_cache_is_bounded() -> None:
    paths = CgroupPaths("/nonexistent", max_cached=3)
    for i in range(1, 6):
        paths.add(i, f"/s{i}.service")
    assert paths.path(5) == "/s5.service"
    assert paths.path(1) is None  # oldest forgotten; unknown stays unknown (null)
