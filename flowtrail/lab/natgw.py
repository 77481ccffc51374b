"""A NAT gateway in the lab: a LAN namespace whose traffic the lab's client namespace masquerades.

    with Lab("nat") as lab, nat_gateway(lab) as lan:
        lab.spawn(lan.at(pod), Client(lab.server.ip, 8080, send=100, recv=200))

The lab's client namespace becomes a router: a second veth pair joins it to a new namespace
`ft<name>-l-<tag>` (the LAN, IPv4 only: 10.<216|217>.<n>.1, router 10.<216|217>.<n>.254, the
same <n> as the lab's own /24), forwarding is switched on there, and an nftables rule
masquerades whatever leaves through the router's uplink (the lab's client interface). The
server sees the router's address, as a server on the internet sees a home router's. The LAN
namespace goes when the block ends (its veth end with it); the router's rules go with the lab.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from flowtrail.lab.netns import End, Lab, nft_chain, sh

NAT_POSTROUTING = "type nat hook postrouting priority 100"


def lan_end(lab: Lab) -> End:
    """The LAN host's end: its namespace, interface and address (no IPv6 behind this NAT)."""
    a, b, c, _ = lab.client.ip.split(".")
    netns = lab.client.netns[: -len(lab.tag) - 3] + f"-l-{lab.tag}"  # ft<name>-c-<tag> → -l-
    return End(netns, f"ftl{lab.tag}", f"{a}.{int(b) + 2}.{c}.1", "")


@contextmanager
def nat_gateway(lab: Lab) -> Iterator[End]:
    """Put a LAN host behind the lab's client namespace, masqueraded to the client's address."""
    lan = lan_end(lab)
    router_lan_ip = lan.ip.rsplit(".", 1)[0] + ".254"
    router_if = f"ftg{lab.tag}"
    sh("ip", "netns", "add", lan.netns)
    try:
        sh("ip", "link", "add", lan.ifname, "netns", lan.netns, "type", "veth", "peer", router_if,
           "netns", lab.client.netns)  # fmt: skip
        sh("ip", "-n", lan.netns, "addr", "add", f"{lan.ip}/24", "dev", lan.ifname)
        sh("ip", "-n", lan.netns, "link", "set", lan.ifname, "up")
        sh("ip", "-n", lan.netns, "link", "set", "lo", "up")
        sh("ip", "-n", lan.netns, "route", "add", "default", "via", router_lan_ip)
        sh("ip", "-n", lab.client.netns, "addr", "add", f"{router_lan_ip}/24", "dev", router_if)
        sh("ip", "-n", lab.client.netns, "link", "set", router_if, "up")
        sh("ip", "netns", "exec", lab.client.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        rule = f'oifname "{lab.client.ifname}" masquerade'
        nft_chain(lab.client.netns, f"ip ftmasq{lab.tag}", "post", NAT_POSTROUTING, rule)
        yield lan
    finally:
        subprocess.run(["ip", "netns", "del", lan.netns], capture_output=True)
