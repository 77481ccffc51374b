"""The addresses an exporter may claim as its own `local_ip`: a list of IPv4/IPv6 prefixes.

Every row an agent sends says "this connection's local end was me"; with a local workload it
is also evidence that the workload owned that address. A host that lies could name another
host's address (a load balancer's) as its own. A token (or a cluster node's claims file) may
therefore carry the prefixes its host may claim; rows outside them are refused.

Host-scoped addresses (loopback, link-local) are always allowed: the engine keys them per
exporter, so a claim of one can never speak for another host.

Written as a comma list: `10.0.1.0/24,10.0.2.7,fd00:1::/64` (a bare address is a /32 or /128).
Checking is vectorised: canonical IPv4 (nearly every row) in one compiled pass and a binary
search over merged intervals; anything else (IPv6) once per distinct value.
"""

from __future__ import annotations

import ipaddress

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.errors import InputError
from flowtrail.ipv4text import parse_ipv4

B = npt.NDArray[np.bool_]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Always claimable: they mean something different on every host (see engine/ipkeys.py).
HOST_SCOPED: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("fe80::/10"),
)


class AddressRanges:
    """A set of prefixes; `allowed(values)` says per row whether the address lies in one.

    compiled=False parses IPv4 text without numba (flowtrail/ipv4text.py): the agent's way."""

    def __init__(self, networks: list[Network], *, compiled: bool = True) -> None:
        self.networks = tuple(networks)
        self.compiled = compiled
        v4 = sorted(
            (int(n.network_address), int(n.broadcast_address))
            for n in (*networks, *HOST_SCOPED)
            if n.version == 4
        )
        # Merge overlapping or touching intervals so one searchsorted finds the only candidate.
        lo: list[int] = []
        hi: list[int] = []
        for a, b in v4:
            if lo and a <= hi[-1] + 1:
                hi[-1] = max(hi[-1], b)
            else:
                lo.append(a)
                hi.append(b)
        self._v4_lo = np.array(lo, np.uint32)
        self._v4_hi = np.array(hi, np.uint32)
        self._v6 = tuple(n for n in (*networks, *HOST_SCOPED) if n.version == 6)

    def __str__(self) -> str:
        return ",".join(str(n) for n in self.networks)

    @staticmethod
    def parse(text: str, where: str) -> AddressRanges:
        """`10.0.0.0/8,fd00::/8,...`; errors name `where` and the bad item."""
        networks: list[Network] = []
        for item in text.split(","):
            item = item.strip()
            if not item:
                raise InputError(f"{where}: an empty item in the address list {text!r}")
            try:
                networks.append(ipaddress.ip_network(item, strict=True))
            except ValueError as exc:
                raise InputError(f"{where}: {item!r} is not an address or prefix: {exc}") from exc
        return AddressRanges(networks)

    def allowed(self, values: pa.Array | pa.ChunkedArray) -> B:
        """Per row: is the address inside the ranges? (Nulls and non-addresses: False.)"""
        chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
        parts = [self._allowed_chunk(c) for c in chunks]
        return np.concatenate(parts) if parts else np.zeros(0, bool)

    def _allowed_chunk(self, values: pa.Array) -> B:
        if isinstance(values.type, pa.DictionaryType):
            values = values.cast(values.type.value_type)
        v4, ok = parse_ipv4(values, compiled=self.compiled)
        out = np.zeros(len(values), bool)
        if len(self._v4_lo):
            pos = np.searchsorted(self._v4_lo, v4, side="right") - 1
            inside = (pos >= 0) & (v4 <= self._v4_hi[np.maximum(pos, 0)])
            out = ok & inside
        rest = ~ok
        if values.null_count:
            rest &= np.asarray(values.is_valid().to_numpy(zero_copy_only=False), bool)
        where = np.flatnonzero(rest)
        if len(where):
            encoded = pc.dictionary_encode(values.take(pa.array(where)))
            verdict = np.array(
                [self._allowed_text(t) for t in encoded.dictionary.to_pylist()], bool
            )
            out[where] = verdict[np.asarray(encoded.indices.to_numpy(zero_copy_only=False))]
        return out

    def _allowed_text(self, text: str) -> bool:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return False
        if ip.version == 4:  # non-canonical IPv4 text: the contract refuses it anyway
            return any(ip in n for n in self.networks if n.version == 4)
        return any(ip in n for n in self._v6)


__all__ = ["HOST_SCOPED", "AddressRanges"]
