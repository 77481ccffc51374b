"""Which region owns an address: longest-prefix match over the regions table.

IPv4 is matched vectorised: one sorted array of network values per prefix length, probed
from the longest length down (at most 33 searchsorted passes over the distinct addresses).
IPv6 addresses are few and matched per distinct address against per-length dictionaries.
"""

from __future__ import annotations

import ipaddress

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from flowtrail.engine.ipkeys import NO_KEY, V6_BASE, IpKeys

U64 = npt.NDArray[np.uint64]
I32 = npt.NDArray[np.int32]


class RegionMap:
    def __init__(self, regions: pa.Table | None = None) -> None:
        self.names: list[str] = []
        self._v4: list[tuple[int, U64, I32]] = []  # (length, sorted nets, region ids)
        self._v6: list[tuple[int, dict[int, int]]] = []
        if regions is not None and regions.num_rows:
            self._build(regions)

    def _region_id(self, name: str) -> int:
        if name not in self.names:
            self.names.append(name)
        return self.names.index(name)

    def _build(self, regions: pa.Table) -> None:
        v4: dict[int, dict[int, int]] = {}
        v6: dict[int, dict[int, int]] = {}
        for cidr, region in zip(
            regions.column("cidr").to_pylist(), regions.column("region").to_pylist(), strict=True
        ):
            net = ipaddress.ip_network(cidr, strict=True)
            table = v4 if net.version == 4 else v6
            # The same prefix listed twice: the last row wins, like a routing table update.
            table.setdefault(net.prefixlen, {})[int(net.network_address)] = self._region_id(region)
        for length in sorted(v4, reverse=True):
            nets = np.array(sorted(v4[length]), dtype=np.uint64)
            ids = np.array([v4[length][int(n)] for n in nets], dtype=np.int32)
            self._v4.append((length, nets, ids))
        self._v6 = [(length, v6[length]) for length in sorted(v6, reverse=True)]

    def lookup(self, keys: U64, ipkeys: IpKeys) -> I32:
        """Region id per address key (-1 where no prefix matches)."""
        out = np.full(len(keys), -1, np.int32)
        if not self.names or len(keys) == 0:
            return out
        keys = ipkeys.plain(keys)  # a network's address is placed by its prefix all the same
        distinct, inverse = np.unique(keys, return_inverse=True)
        found = np.full(len(distinct), -1, np.int32)
        is_v4 = distinct < V6_BASE
        for length, nets, ids in self._v4:
            todo = is_v4 & (found < 0)
            if not todo.any():
                break
            mask = np.uint64(((1 << length) - 1) << (32 - length)) if length else np.uint64(0)
            probe = distinct[todo] & mask
            pos = np.minimum(np.searchsorted(nets, probe), len(nets) - 1)
            hit = nets[pos] == probe
            sel = np.flatnonzero(todo)[hit]
            found[sel] = ids[pos[hit]]
        for i in np.flatnonzero(~is_v4 & (distinct != NO_KEY)):
            value = ipkeys.v6_value(int(distinct[i]))
            if value < 0:  # not an address of its own (plain() maps scoped keys away)
                continue
            for length, table in self._v6:
                net = (value >> (128 - length)) << (128 - length) if length else 0
                if net in table:
                    found[i] = table[net]
                    break
        out[:] = found[inverse]
        return out
