"""Labs that use the same addresses: isolated networks on one host whose ranges overlap.

Two namespace pairs built by `lab_on(name, net)` with one `net` both hold `<net>.1` and
`<net>.2` (and the same IPv6 pair), each pair alone on its veth link with no route out: what
two container bridges, two test sandboxes or two hosts' Docker networks look like to a
collector. Only the addresses are chosen here; `Lab` builds and tears down as usual.
"""

from __future__ import annotations

import random
from dataclasses import replace

from flowtrail.lab.netns import Lab, _v6


def random_net() -> str:
    """`10.<x>.9`, x random: a /24 prefix (without its last octet) for overlapping labs."""
    return f"10.{random.randrange(256)}.9"


def lab_on(name: str, net: str) -> Lab:
    """A Lab whose client is `<net>.1` and server `<net>.2` (IPv6 from the same numbers)."""
    lab = Lab(name)
    second, third = (int(x) for x in net.split(".")[1:3])
    v6 = f"fd00:f11:{second:x}:{third:x}"
    lab.client = replace(lab.client, ip=f"{net}.1", ip6=_v6(f"{v6}::1"))
    lab.server = replace(lab.server, ip=f"{net}.2", ip6=_v6(f"{v6}::2"))
    lab.vip = f"{net}.100"
    return lab
