"""Which partition of a region decides a row: a hash of its connection's two endpoints.

Both ends' rows of one connection must meet on the node that decides them, because the other
end's own row (the peer row) names 99% of flows. The engine matches a row with its peer by the
reversed 4-tuple, remote side NAT-resolved (flowtrail/engine/peers.py). So the key here is the
unordered pair of those same endpoints: (local address, local port) and (NAT-resolved remote
address, port). Two rows the engine could ever match have equal keys, hence one partition;
rows whose endpoints do not mirror each other (NAT seen from one end only, SNAT by a gateway)
land apart, but the engine would not match them either: they are named by ownership ranges,
which every node holds (flowtrail/cluster/runs.py). Splitting by this key never changes an
answer, it only decides where the answer is computed.

The hash must be the same on every node and every run, so it is computed from the addresses'
text (IPv4 by value, as the engine keys them; anything else by its text, as the engine interns
it), never from a process's interned keys. Host-scoped addresses (loopback, link-local) are
hashed with their exporter, as the engine keys them per host.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.engine.hashindex import mix64
from flowtrail.engine.ipkeys import HOST_SCOPED
from flowtrail.ipv4text import parse_ipv4

U64 = npt.NDArray[np.uint64]
I32 = npt.NDArray[np.int32]

_V4_LOCAL = (127, 0xA9FE)  # 127.0.0.0/8 (by first octet), 169.254.0.0/16 (by two)
_M1 = np.uint64(0x9E3779B97F4A7C15)


def _text_hash(texts: list[str | None]) -> U64:
    """A stable 64-bit hash per text (blake2b), above 2**32 so it never equals an IPv4 value."""
    out = np.zeros(len(texts), np.uint64)
    for i, text in enumerate(texts):
        if text is not None:
            digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
            out[i] = np.uint64(int.from_bytes(digest, "little") | (1 << 63))
    return out


def address_values(ip: pa.Array | pa.ChunkedArray, exporter: pa.Array | pa.ChunkedArray) -> U64:
    """A stable value per address: IPv4 by value, others by a hash of their text; host-scoped
    addresses by a hash of "exporter|address" (they mean something else on every host)."""
    if isinstance(ip, pa.ChunkedArray):
        ip = ip.combine_chunks() if ip.num_chunks != 1 else ip.chunk(0)
    if isinstance(exporter, pa.ChunkedArray):
        exporter = exporter.combine_chunks() if exporter.num_chunks != 1 else exporter.chunk(0)
    if pa.types.is_dictionary(ip.type):
        ip = ip.cast(pa.string())
    v4, ok = parse_ipv4(ip)
    out = v4.astype(np.uint64)
    scoped = ok & (
        ((v4 >> np.uint32(24)) == _V4_LOCAL[0]) | ((v4 >> np.uint32(16)) == _V4_LOCAL[1])
    )
    rest = ~ok
    if rest.any():
        pos = np.flatnonzero(rest)
        texts = ip.take(pa.array(pos))
        encoded = pc.dictionary_encode(texts)
        out[pos] = _text_hash(encoded.dictionary.to_pylist())[
            np.asarray(pc.fill_null(encoded.indices, 0).to_numpy(zero_copy_only=False))
        ]
        local = pc.fill_null(pc.match_substring_regex(texts, HOST_SCOPED), False)
        scoped[pos] = np.asarray(local.to_numpy(zero_copy_only=False), bool)
    if scoped.any():
        pos = np.flatnonzero(scoped)
        taken = pa.array(pos)
        joined = pc.binary_join_element_wise(
            pc.cast(pc.take(exporter, taken), pa.string()), pc.take(ip, taken), "|"
        )
        encoded = pc.dictionary_encode(joined)
        out[pos] = _text_hash(encoded.dictionary.to_pylist())[
            np.asarray(encoded.indices.to_numpy(zero_copy_only=False))
        ]
    return out


def _endpoint(value: U64, port: I32) -> U64:
    with np.errstate(over="ignore"):
        return mix64(value * _M1 + port.astype(np.uint64))


def connection_hashes(table: pa.Table) -> U64:
    """Per row of a contract flows table: a hash of its connection's unordered endpoint pair
    (remote side NAT-resolved, as flowtrail/engine/replay.py's flow_arrays resolves it)."""
    if table.num_rows == 0:
        return np.empty(0, np.uint64)
    exporter = table.column("exporter")
    remote_ip = table.column("remote_ip")
    remote_port = table.column("remote_port")
    names = table.column_names
    if "nat_remote_ip" in names:
        nat_ip = table.column("nat_remote_ip")
        use_nat = pc.is_valid(nat_ip)
        remote_ip = pc.if_else(use_nat, nat_ip, remote_ip)
        if "nat_remote_port" in names:
            nat_port = pc.coalesce(table.column("nat_remote_port"), remote_port)
            remote_port = pc.if_else(use_nat, nat_port, remote_port)
    local = _endpoint(
        address_values(table.column("local_ip"), exporter),
        np.asarray(table.column("local_port").to_numpy(), np.int32),
    )
    remote = _endpoint(
        address_values(remote_ip, exporter), np.asarray(remote_port.to_numpy(), np.int32)
    )
    low, high = np.minimum(local, remote), np.maximum(local, remote)
    with np.errstate(over="ignore"):
        return mix64(mix64(low) * _M1 + high)


def partitions(table: pa.Table, count: int) -> npt.NDArray[np.int32]:
    """The partition (0..count-1) that decides each row."""
    if count < 1:
        raise ValueError(f"partition count {count}: must be at least 1")
    return (connection_hashes(table) % np.uint64(count)).astype(np.int32)
