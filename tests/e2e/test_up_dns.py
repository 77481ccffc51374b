"""`flowtrail up` names a flow by the DNS answer its workload received, end to end.

The namespace lab (flowtrail/lab/) with dnsmasq (Debian's dnsmasq-base) in the server namespace
answering a made-up name with the server's address. A real `flowtrail up` (eBPF flow and DNS
capture, HTTPS collector, store, query API) watches the client resolve that name and connect to
the address; the API's flow row carries the name as `remote_dns`, beside the owner the
heartbeats give. With `--no-dns` the same exchange leaves `remote_dns` null.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowtrail.lab import Client, Lab, Server
from flowtrail.lab.dnspeer import Resolve, argv, dnsmasq_argv
from flowtrail.lab.wait import until
from tests.e2e.test_up import Up

pytestmark = pytest.mark.kernel


@pytest.fixture
def net() -> Iterator[Lab]:
    with Lab("updns") as lab:
        name = f"api-{lab.tag}.test"
        dnsmasq = subprocess.Popen(
            dnsmasq_argv(lab.server.netns, [lab.server.ip],
                         [f"--host-record={name},{lab.server.ip},300"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        lab.adopt(dnsmasq)
        yield lab


@pytest.mark.parametrize("dns", [True, False], ids=["dns", "no-dns"])
def test_up_names_a_flow_by_the_answer_its_workload_received(
    net: Lab, tmp_path: Path, dns: bool
) -> None:
    name = f"api-{net.tag}.test"
    up = Up(
        tmp_path / "data", "--interval", "1s", "--max-wait", "10s",
        "--exporter", f"updns-{net.tag}", *(() if dns else ("--no-dns",)),
    )  # fmt: skip
    try:
        client = net.client.at(net.cgroup("web"))
        resolver = subprocess.Popen(
            argv(client.netns, client.cgroup, Resolve(net.server.ip, [(name, "A")])),
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        net.adopt(resolver)
        out, _ = resolver.communicate(timeout=60)
        assert resolver.returncode == 0 and out.splitlines()[-1] == "done", out
        port = net.port()
        server = net.serve(net.server.at(net.cgroup("api")), Server(net.server.ip, port, 10, 20))
        peer = net.spawn(client, Client(net.server.ip, port, send=10, recv=20))
        assert peer.wait(60) == 0 and server.wait(60) == 0

        def outbound(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [r for r in rows if r["direction"] == "outbound" and r["state"] == "closed"]

        rows = until(
            lambda: up.get("flows", port=port, since="5m", limit=100),
            lambda rows: len(outbound(rows)) == 1,
            timeout_s=60,
            every_s=0.5,
        )
        (row,) = outbound(rows)
        assert row["remote_dns"] == (name if dns else None), up.output()
        assert row["remote_workload"] is not None  # the server's own row: ownership stays
        said = up.output()
        assert ("DNS capture off" not in said) if dns else ("DNS" not in said), said
    finally:
        up.close()
