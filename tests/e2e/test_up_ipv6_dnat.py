"""IPv6 through a DNAT VIP, from the kernel to the collector's decision (root, real kernel).

A real `flowtrail up` (eBPF agent, collector, store, query API) watches IPv6 connections in
the namespace lab. The client's namespace translates a VIP with nftables (`ip6` nat, output
hook), as a ClusterIP would: the client's socket sees [vip]:80, conntrack knows the backend.
The client's row must carry the backend as nat_remote_ip and be attributed to the server's
workload from heartbeats; the server's row names the client.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from urllib.request import urlopen

import pytest

from flowtrail.lab import Client, Lab, Server
from flowtrail.lab.netns import NAT_OUTPUT, nft_chain
from flowtrail.lab.wait import started, until

pytestmark = pytest.mark.kernel

CONNECTIONS = 2
BACKEND_PORT = 8080


def test_ipv6_connection_through_dnat_is_attributed_to_the_backend(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "up.log"
    with Lab("v6") as net:
        client_cgroup, server_cgroup = net.cgroup("web"), net.service_cgroup(f"api-{net.tag}")
        client_name, server_name = f"web-{net.tag}", f"systemd:{server_cgroup.name}"
        identity = tmp_path / "identity.toml"
        identity.write_text(
            f'[[register]]\nworkload = "{client_name}"\ncgroup = "/{net.root.name}/web"\n'
        )
        # A VIP in the link's /64 that no interface has: only the DNAT rule answers for it.
        vip = str(ipaddress.IPv6Address(net.server.ip6) + 0x60)
        rule = f"ip6 daddr {vip} tcp dport 80 dnat to [{net.server.ip6}]:{BACKEND_PORT}"
        nft_chain(net.client.netns, f"ip6 ftnat6{net.tag}", "out", NAT_OUTPUT, rule)

        with open(log, "wb") as out:
            p = subprocess.Popen(
                [sys.executable, "-m", "flowtrail.up", "--data", str(data),
                 "--port-collector", "0", "--port-api", "0", "--interval", "1s",
                 "--max-wait", "10s", "--identity", str(identity),
                 "--exporter", f"v6-{net.tag}"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            started(p, (data / "up.json").exists, log, 45, "flowtrail up")
            api = json.loads((data / "up.json").read_text())["api"]
            server = net.serve(
                net.server.at(server_cgroup),
                Server(net.server.ip6, BACKEND_PORT, recv=700, send=300, accepts=CONNECTIONS),
            )
            client = net.spawn(
                net.client.at(client_cgroup),
                Client(vip, 80, send=700, recv=300, connections=CONNECTIONS),
            )
            assert client.stdout is not None and client.stdout.readline().strip() == "done"
            assert client.wait(10) == 0 and server.wait(10) == 0

            def closed() -> list[dict[str, Any]]:
                query = urlencode({"port": BACKEND_PORT, "since": "5m", "limit": 100})
                with urlopen(f"{api}/api/flows?{query}", timeout=10) as r:
                    rows: list[dict[str, Any]] = json.loads(r.read())
                mine = (net.client.ip6, net.server.ip6)
                return [
                    r for r in rows
                    if r["state"] == "closed" and r["local_ip"] in mine
                    and r["remote_source"] != "unattributed"
                ]  # fmt: skip

            rows = until(closed, lambda rows: len(rows) >= 2 * CONNECTIONS, 40, 0.5)
        finally:
            p.send_signal(signal.SIGINT)
            assert p.wait(60) == 0, log.read_text()[-3000:]

    assert len(rows) == 2 * CONNECTIONS, (rows, log.read_text()[-3000:])
    outbound = [r for r in rows if r["direction"] == "outbound"]
    inbound = [r for r in rows if r["direction"] == "inbound"]
    assert len(outbound) == len(inbound) == CONNECTIONS, rows
    for r in outbound:
        assert (r["local_ip"], r["remote_ip"], r["remote_port"]) == (net.client.ip6, vip, 80), r
        assert (r["nat_remote_ip"], r["nat_remote_port"]) == (net.server.ip6, BACKEND_PORT), r
        assert (r["local_workload"], r["remote_workload"]) == (client_name, server_name), r
        assert r["remote_source"] == "heartbeat", r
    for r in inbound:
        assert (r["local_ip"], r["local_port"], r["remote_ip"]) == (
            net.server.ip6, BACKEND_PORT, net.client.ip6
        ), r  # fmt: skip
        assert (r["local_workload"], r["remote_workload"]) == (server_name, client_name), r
        assert r["remote_source"] == "heartbeat", r
