"""The simulated address plan: region prefixes (nested, so longest-prefix match matters) and pools.

Every address the simulator uses lives once in an `AddressBook`; the rest of the simulator
handles addresses as int32 indices into it and turns them into text only when writing tables.
All ranges are private, unique-local or documentation ranges, used as data only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pyarrow as pa

from flowtrail.errors import InputError
from flowtrail.schema import REGIONS

REGION_NAMES = ("us-east", "eu-west")

# (cidr, region). Nesting: eu-west's /12 sits inside us-east's /8, and one of us-east's pod
# subnets sits inside that /12 again; the same for IPv6, LBs and VIPs.
REGION_PREFIXES: tuple[tuple[str, str], ...] = (
    ("10.0.0.0/8", "us-east"),
    ("10.64.0.0/12", "eu-west"),
    ("10.70.0.0/16", "us-east"),
    ("fd00:ab::/32", "us-east"),
    ("fd00:ab:e000::/36", "eu-west"),
    ("198.18.0.0/15", "us-east"),
    ("198.19.0.0/16", "eu-west"),
    ("172.16.0.0/12", "us-east"),
    ("172.24.0.0/16", "eu-west"),
)

# Pools draw from these subnets, interleaved when a region has several.
POD_V4 = {
    "us-east": ("10.1.0.0/16", "10.70.0.0/16", "10.8.0.0/13"),
    "eu-west": ("10.65.0.0/16", "10.72.0.0/13"),
}
POD_V6 = {"us-east": ("fd00:ab:1::/64",), "eu-west": ("fd00:ab:e001::/64",)}
LB_V4 = {"us-east": ("198.18.0.0/16",), "eu-west": ("198.19.0.0/16",)}  # RFC 2544 range
VIP_V4 = {"us-east": ("172.16.0.0/16",), "eu-west": ("172.24.0.0/16",)}
EXTERNAL_V4 = "203.0.113.0/24"  # TEST-NET-3: agent-less callers, deliberately in no region


class AddressBook:
    """Append-only list of canonical address texts; an address's index is its identity."""

    def __init__(self) -> None:
        self._texts: list[str] = []

    def add_pool(self, subnets: tuple[str, ...], size: int, what: str) -> list[int]:
        """Take `size` addresses from the subnets (round-robin) and return their indices."""
        iters = [_hosts(s) for s in subnets]
        out: list[int] = []
        while len(out) < size:
            progressed = False
            for it in iters:
                if len(out) == size:
                    break
                ip = next(it, None)
                if ip is None:
                    continue
                progressed = True
                out.append(len(self._texts))
                self._texts.append(str(ip))
            if not progressed:
                raise InputError(
                    f"the {what} address pool needs {size:,} addresses, more than "
                    f"{', '.join(subnets)} hold: lower --services, --replicas or --pool-slack"
                )
        return out

    def __len__(self) -> int:
        return len(self._texts)

    def texts(self) -> pa.Array:
        return pa.array(self._texts, pa.string())


def _hosts(cidr: str) -> Iterator[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    net = ipaddress.ip_network(cidr)
    for ip in net.hosts():
        # Skip .0/.255-looking IPv4 addresses: legal in a /16, but confusing to read.
        if isinstance(ip, ipaddress.IPv4Address) and int(ip) & 0xFF in (0, 255):
            continue
        yield ip


def regions_table() -> pa.Table:
    cidrs = [c for c, _ in REGION_PREFIXES]
    regions = [r for _, r in REGION_PREFIXES]
    return pa.Table.from_arrays(
        [pa.array(cidrs, pa.string()), pa.array(regions, pa.string())], schema=REGIONS.schema
    )


def region_of(ip: str) -> str | None:
    """Longest-prefix match over REGION_PREFIXES (used by tests and the summary)."""
    addr = ipaddress.ip_address(ip)
    best: tuple[int, str] | None = None
    for cidr, region in REGION_PREFIXES:
        net = ipaddress.ip_network(cidr)
        inside = addr.version == net.version and addr in net
        if inside and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, region)
    return None if best is None else best[1]
