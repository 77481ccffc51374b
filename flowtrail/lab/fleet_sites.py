"""Two arrangements beside the kernel lab's fleet of hosts: a NAT gateway and overlapping networks.

* **A NAT gateway.** A router namespace `ft<tag>-gw` on the fleet's bridge at `<net>.20`, with
  two LAN namespaces behind it (`ft<tag>-l0`, `ft<tag>-l1`, one client workload each, on
  10.217.<n>.1 and 10.218.<n>.1) whose connections it masquerades to its own address, as a
  home router or a Docker host does. The router has a workload of its own that holds
  connections open to the fleet's services, so `<net>.20` has heartbeats while it translates
  the LAN's connections. Each namespace picks ephemeral ports from its own range, so
  masquerade never has to change a port and the router's address and a port name one
  caller at a time (the truth for that address is per port, from what the servers logged:
  who really called from it, see flowtrail/lab/workload.py).
* **Overlapping host-local networks.** Two isolated namespace pairs (`ft<tag>-oa1/oa2` and
  `ft<tag>-ob1/ob2`) both on 10.219.<n>.1 and .2, each pair alone on its veth link with no
  route out and captured by a different host's agent, as two hosts' container bridges. Each
  side runs a workload that calls the other; pair B's `.2` workload is stopped halfway, so
  pair B's later calls to `.2` are refused while pair A's `.2` still has an owner. The truth
  for these addresses is per exporter.

The gateway's namespaces are captured by the last host's agent, pair A by host 0's, pair B by
host 1's (flowtrail/lab/kernel_demo.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flowtrail.lab.netns import LabError, sh

ROUTER_OCTET = 20
# Ephemeral ports per namespace: disjoint, so a translated port keeps the one its caller chose.
ROUTER_PORTS = (50000, 54999)
LAN_PORTS = ((40000, 44999), (45000, 49999))


@dataclass(frozen=True)
class Site:
    """One fixed workload of these arrangements: where it runs and which agent sees it."""

    name: str
    ip: str
    netns: str
    host: int  # the host whose agent captures its namespace
    targets: str  # its targets file
    host_local: bool  # its address is owned on that host only
    long_share: float = 0.05


def octets(net: str) -> str:
    """`<n>`: the fleet's third octet, shared by every network of one fleet."""
    return net.split(".")[2]


def gateway_sites(tag: str, net: str, hosts: int, targets: str) -> list[Site]:
    n = octets(net)
    last = hosts - 1
    router = Site("router", f"{net}.{ROUTER_OCTET}", f"ft{tag}-gw", last, targets, False, 1.0)
    lans = [
        Site(f"lan-{i}", f"10.{217 + i}.{n}.1", f"ft{tag}-l{i}", last, targets, True)
        for i in range(len(LAN_PORTS))
    ]
    return [router, *lans]


def build_gateway(router: Site, lans: list[Site]) -> None:
    """The router's namespace is already on the bridge (its `eth0`): each LAN namespace on a
    veth of its own behind it; masquerade what leaves `eth0` from the LANs. The fleet deletes
    every namespace when it closes."""
    sh("ip", "netns", "exec", router.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    _port_range(router.netns, ROUTER_PORTS)
    sources = []
    for i, lan in enumerate(lans):
        inside, outside = f"lan{i}", f"eth{i + 1}"
        prefix = lan.ip.rsplit(".", 1)[0]
        sh("ip", "netns", "add", lan.netns)
        sh("ip", "link", "add", inside, "netns", lan.netns, "type", "veth", "peer", outside,
           "netns", router.netns)  # fmt: skip
        sh("ip", "-n", lan.netns, "addr", "add", f"{lan.ip}/24", "dev", inside)
        sh("ip", "-n", router.netns, "addr", "add", f"{prefix}.254/24", "dev", outside)
        for ns, dev in ((lan.netns, inside), (lan.netns, "lo"), (router.netns, outside)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", lan.netns, "route", "add", "default", "via", f"{prefix}.254")
        _port_range(lan.netns, LAN_PORTS[i])
        sources.append(f"{prefix}.0/24")
    rules = (
        "table ip ftgw {\n chain post {\n  type nat hook postrouting priority 100;\n"
        f'  ip saddr {{ {", ".join(sources)} }} oifname "eth0" masquerade\n }}\n}}\n'
    )
    sh("ip", "netns", "exec", router.netns, "nft", "-f", "-", stdin=rules)


def _port_range(netns: str, ports: tuple[int, int]) -> None:
    sh("ip", "netns", "exec", netns, "sysctl", "-qw",
       f"net.ipv4.ip_local_port_range={ports[0]} {ports[1]}")  # fmt: skip


def overlap_sites(tag: str, net: str, run_dir: Path) -> list[Site]:
    """Pair A (host 0) and pair B (host 1): `<pair>-1` on .1 and `<pair>-2` on .2 of one /24."""
    prefix = f"10.219.{octets(net)}"
    sites = []
    for host, pair in enumerate(("a", "b")):
        targets = str(run_dir / f"targets-{pair}.json")
        for k in (1, 2):
            ns = f"ft{tag}-o{pair}{k}"
            sites.append(Site(f"net{pair}-{k}", f"{prefix}.{k}", ns, host, targets, True))
    return sites


def build_overlap(sites: list[Site]) -> None:
    """Each pair's two namespaces on one veth link, no route out."""
    for first, second in (sites[0:2], sites[2:4]):
        sh("ip", "netns", "add", first.netns)
        sh("ip", "netns", "add", second.netns)
        sh("ip", "link", "add", "eth0", "netns", first.netns, "type", "veth", "peer", "eth0",
           "netns", second.netns)  # fmt: skip
        for site in (first, second):
            sh("ip", "-n", site.netns, "addr", "add", f"{site.ip}/24", "dev", "eth0")
            sh("ip", "-n", site.netns, "link", "set", "eth0", "up")
            sh("ip", "-n", site.netns, "link", "set", "lo", "up")
        write_targets(first.targets, [first.ip, second.ip])


def write_targets(path: str, ips: list[str]) -> None:
    from flowtrail.lab.workload import SERVICE_PORT

    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps([[ip, SERVICE_PORT] for ip in ips]))
    tmp.replace(path)


def callers_from(
    accepted_dir: Path, ip: str, name: Callable[[str], str], margin_ns: int
) -> list[tuple[int, str, int, int]]:
    """Truth for a translated address, per port: (port, workload, from_ns, to_ns).

    From every server's log of who called (flowtrail/lab/workload.py): a connection from
    `ip`:port belongs to the workload that says it made it (`name` gives its name in the
    truth), from `margin_ns` before its
    connect began (the agents' and the lab's clocks differ by a little) to when the server
    read that (after the server's row began). Consecutive uses of a port by one caller are
    joined; two callers on one port at once would make the port no key: refused.
    """
    seen: dict[int, list[tuple[int, int, str]]] = {}
    for f in sorted(accepted_dir.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            if not line:
                continue
            peer, port, caller, t, logged = json.loads(line)
            if peer == ip:
                seen.setdefault(int(port), []).append((int(t), int(logged), name(caller)))
    out: list[tuple[int, str, int, int]] = []
    for port, uses in sorted(seen.items()):
        uses.sort()
        runs: list[list[int | str]] = []
        for t, logged, who in uses:
            start = t - margin_ns
            if runs and int(runs[-1][2]) >= start:
                if runs[-1][0] != who:
                    raise LabError(f"{ip}:{port} called by {runs[-1][0]} and {who} at once")
                runs[-1][2] = max(int(runs[-1][2]), logged)
                continue
            runs.append([who, start, logged])
        out += [(port, str(w), int(a), int(b)) for w, a, b in runs]
    return out
