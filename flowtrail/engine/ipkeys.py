"""IP text ↔ integer keys, vectorised over Arrow arrays.

An IPv4 address's key is its 32-bit value; an IPv6 address gets an interned key at or above
2**32 (assigned on first sight, stable for the process). Only distinct addresses are parsed
(dictionary encoding), so the cost per row is a hash lookup, not a parse.

Addresses have a scope (flowtrail/engine/scopes.py says which): a host-local address
(loopback, link-local, or one the agent marks as on a host-local network) means a different
thing on every host, so it gets a key of its own per exporter ("exporter|address"); a routable
address in a declared network other than the default one gets a key per network
("@network|address"). An IPv4 address in a scope keeps its value in the low 32 bits under
SCOPED_V4 and the scope's id (per distinct exporter or network, interned) in the bits above,
so keying it costs no work per address; any other scoped address is interned as text like an
IPv6 address. Either way the plain key of its address is known, so the regions table can
still place it (a host-local one is in no region).
"""

from __future__ import annotations

import ipaddress

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.ipv4text import parse_ipv4

U64 = npt.NDArray[np.uint64]
V6_BASE = 1 << 32
NO_KEY = np.uint64(np.iinfo(np.uint64).max)


HOST_SCOPED = r"^(127\.|169\.254\.|::1$|fe[89ab][0-9a-f]:)"
NO_VALUE = -1  # the 128-bit value stored for a scoped key (see IpKeys.plain)
SCOPED_V4 = np.uint64(1 << 63)  # | scope id << 32 | IPv4 value (scope ids stay below 2**31 - 1)
_LOW32 = np.uint64(0xFFFFFFFF)
_SCOPE_ID = np.uint64(0x7FFFFFFF)


class IpKeys:
    """Maps canonical IP text to uint64 keys; nulls map to NO_KEY."""

    def __init__(self) -> None:
        self._v6: dict[str, int] = {}
        self._v6_values: list[int] = []  # 128-bit value per interned key - V6_BASE
        # Per interned key - V6_BASE: the plain key of its address (itself for a bare IPv6
        # address, NO_KEY for a host-local one); an array copy is rebuilt when it grew.
        self._plain: list[int] = []
        self._plain_array: U64 = np.empty(0, np.uint64)
        self._scope_ids: dict[str, int] = {}  # "<prefix><exporter or network>" → scope id
        self._scope_host: list[bool] = []  # per scope id: host-local (in no region)?
        self._scope_host_array: npt.NDArray[np.bool_] = np.empty(0, bool)

    def keys(
        self,
        values: pa.Array | pa.ChunkedArray,
        scope: pa.Array | pa.ChunkedArray | None = None,
        *,
        host: npt.NDArray[np.bool_] | None = None,
        network: pa.Array | pa.ChunkedArray | None = None,
    ) -> U64:
        """Keys for `values` in their scopes.

        `scope`: the exporter of each row; host-local addresses (loopback and link-local
        always, and where `host` is true) are keyed per exporter. `network`: the declared
        network of each row; other addresses with a non-empty network are keyed per network.
        Without `scope` every address is plain (an event feed's addresses).
        """
        values = _one_chunk(values)
        if len(values) == 0:
            return np.empty(0, dtype=np.uint64)
        out, local = self._keys(values)
        if scope is None:
            return out
        if host is not None:
            local = local | (host & (out != NO_KEY))
        pos = np.flatnonzero(local)
        if len(pos):
            scope = _one_chunk(scope)
            ids = self._scope_ids_of(scope, "", host_local=True)
            out[pos] = self._scoped(scope, ids[pos], values, pos, "", out[pos], host_local=True)
        if network is not None:
            network = _one_chunk(network)
            ids = self._scope_ids_of(network, "@", host_local=False)
            pos = np.flatnonzero((ids >= 0) & ~local)
            if len(pos):
                out[pos] = self._scoped(network, ids[pos], values, pos, "@", out[pos],
                                        host_local=False)  # fmt: skip
        return out

    def _scoped(
        self, scope: pa.Array, ids: npt.NDArray[np.int64], values: pa.Array,
        pos: npt.NDArray[np.intp], prefix: str, plain: U64, *, host_local: bool,
    ) -> U64:  # fmt: skip
        """Keys of rows `pos` in their scopes (scope id bits for IPv4, else interned texts)."""
        out = plain.copy()
        v4 = plain < V6_BASE
        out[v4] = SCOPED_V4 | (ids[v4].astype(np.uint64) << np.uint64(32)) | plain[v4]
        if not v4.all():
            out[~v4] = self._interned(scope, values, pos[~v4], prefix, plain[~v4], host_local)
        return out

    def _scope_ids_of(
        self, scope: pa.Array, prefix: str, *, host_local: bool
    ) -> npt.NDArray[np.int64]:
        """Scope id per row (interned per distinct value: a handful per batch, so the rows
        cost one dictionary encoding). A null or empty network is the default space: -1; an
        exporter is a host's scope whatever its name."""
        encoded = pc.dictionary_encode(scope)
        lut = np.full(len(encoded.dictionary) + 1, -1, np.int64)  # last: null rows
        names = [*encoded.dictionary.to_pylist(), None]
        for i, name in enumerate(names):
            if not name and not host_local:
                continue
            text = f"{prefix}{name}"
            got = self._scope_ids.get(text)
            if got is None:
                got = self._scope_ids[text] = len(self._scope_host)
                self._scope_host.append(host_local)
            lut[i] = got
        idx = pc.fill_null(encoded.indices, len(encoded.dictionary))
        return np.asarray(lut[idx.to_numpy(zero_copy_only=False)], np.int64)

    def _interned(
        self, scope: pa.Array, values: pa.Array, pos: npt.NDArray[np.intp], prefix: str,
        plain: U64, host_local: bool,
    ) -> U64:  # fmt: skip
        """Interned keys for the "<prefix><scope>|<address>" texts of rows `pos`."""
        taken = pa.array(pos)
        texts = pc.binary_join_element_wise(
            pa.scalar(prefix), pc.cast(pc.take(scope, taken), pa.string()), "|", ""
        )
        texts = pc.binary_join_element_wise(texts, pc.cast(pc.take(values, taken), pa.string()), "")
        encoded = pc.dictionary_encode(texts)
        idx = encoded.indices.to_numpy(zero_copy_only=False)
        first = np.full(len(encoded.dictionary), -1, np.int64)
        first[idx[::-1]] = np.arange(len(idx))[::-1]  # a row per distinct text, for its plain key
        lut = np.empty(len(encoded.dictionary), np.uint64)
        for i, text in enumerate(encoded.dictionary.to_pylist()):
            key = self._v6.get(text)
            if key is None:
                key = V6_BASE + len(self._v6_values)
                self._v6[text] = key
                self._v6_values.append(NO_VALUE)
                self._plain.append(int(NO_KEY) if host_local else int(plain[first[i]]))
            lut[i] = key
        return np.asarray(lut[idx], np.uint64)

    def plain(self, keys: U64) -> U64:
        """The plain key of each key's address, whatever its scope; NO_KEY for host-local ones
        (they are in no region)."""
        if len(self._plain_array) != len(self._plain):
            self._plain_array = np.array(self._plain, np.uint64)
        if len(self._scope_host_array) != len(self._scope_host):
            self._scope_host_array = np.array(self._scope_host, bool)
        out = keys.copy()
        scoped = np.flatnonzero((keys >= SCOPED_V4) & (keys != NO_KEY))
        if len(scoped):
            sid = ((keys[scoped] >> np.uint64(32)) & _SCOPE_ID).astype(np.int64)
            out[scoped] = np.where(self._scope_host_array[sid], NO_KEY, keys[scoped] & _LOW32)
        interned = np.flatnonzero((keys >= V6_BASE) & (keys < SCOPED_V4))
        if len(interned):
            out[interned] = self._plain_array[
                (keys[interned] - np.uint64(V6_BASE)).astype(np.int64)
            ]
        return out

    def _keys(self, values: pa.Array) -> tuple[U64, npt.NDArray[np.bool_]]:
        """Keys per row, and whether each row's address is host-scoped.

        Canonical IPv4 (nearly every row) is parsed in one compiled pass; the rest (IPv6)
        per distinct value.
        """
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            return self._keys_by_distinct(values)  # e.g. dictionary-encoded text
        v4, ok = parse_ipv4(values)
        out = np.where(ok, v4.astype(np.uint64), NO_KEY)
        # 127.0.0.0/8 and 169.254.0.0/16, as HOST_SCOPED says for text
        local = ok & (((v4 >> np.uint32(24)) == 127) | ((v4 >> np.uint32(16)) == 0xA9FE))
        rest = ~ok
        if values.null_count:
            rest &= np.asarray(values.is_valid().to_numpy(zero_copy_only=False), bool)
        pos = np.flatnonzero(rest)
        if len(pos):
            out[pos], local[pos] = self._keys_by_distinct(values.take(pa.array(pos)))
        return out, local

    def _keys_by_distinct(self, values: pa.Array) -> tuple[U64, npt.NDArray[np.bool_]]:
        """Keys per row, and whether each row's address is host-scoped (parsed per distinct)."""
        encoded = pc.dictionary_encode(values)
        dict_keys = self._parse_distinct(encoded.dictionary)
        scoped = pc.fill_null(pc.match_substring_regex(encoded.dictionary, HOST_SCOPED), False)
        dict_scoped = np.asarray(scoped.to_numpy(zero_copy_only=False), bool)
        indices = encoded.indices
        out = np.full(len(values), NO_KEY, dtype=np.uint64)
        local = np.zeros(len(values), bool)
        valid = pc.is_valid(indices).to_numpy(zero_copy_only=False)
        idx = indices.to_numpy(zero_copy_only=False)
        if indices.null_count:
            out[valid] = dict_keys[idx[valid].astype(np.int64)]
            local[valid] = dict_scoped[idx[valid].astype(np.int64)]
        else:
            out[:] = dict_keys[idx]
            local[:] = dict_scoped[idx]
        return out, local

    def _parse_distinct(self, distinct: pa.Array) -> U64:
        is_v6 = pc.match_substring(distinct, ":").to_numpy(zero_copy_only=False)
        out = np.empty(len(distinct), dtype=np.uint64)
        v4_pos = np.flatnonzero(~is_v6)
        if len(v4_pos):
            v4 = pc.take(distinct, pa.array(v4_pos))
            parts = pc.list_flatten(pc.split_pattern(v4, ".")).cast(pa.uint64())
            octets = parts.to_numpy().reshape(-1, 4)
            out[v4_pos] = (
                (octets[:, 0] << np.uint64(24))
                | (octets[:, 1] << np.uint64(16))
                | (octets[:, 2] << np.uint64(8))
                | octets[:, 3]
            )
        for pos in np.flatnonzero(is_v6):
            text = distinct[int(pos)].as_py()
            key = self._v6.get(text)
            if key is None:
                key = V6_BASE + len(self._v6_values)
                self._v6[text] = key
                self._v6_values.append(int(ipaddress.IPv6Address(text)))
                self._plain.append(key)
            out[pos] = key
        return out

    def v6_value(self, key: int) -> int:
        """The 128-bit address of an interned IPv6 key (NO_VALUE for a scoped key)."""
        return self._v6_values[key - V6_BASE]

    def text(self, key: int) -> str:
        """The address of a key, whatever its scope."""
        if key >= int(SCOPED_V4) and key != int(NO_KEY):
            key &= int(_LOW32)
        elif key >= V6_BASE:
            plain = self._plain[key - V6_BASE]
            if plain == int(NO_KEY):  # host-local: its text holds the address
                return next(t for t, k in self._v6.items() if k == key).rsplit("|", 1)[1]
            key = plain
        if key < V6_BASE:
            return str(ipaddress.IPv4Address(key))
        return str(ipaddress.IPv6Address(self.v6_value(key)))


def _one_chunk(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values


class Names:
    """Interns workload names to int32 ids (per distinct value, vectorised per batch)."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self.names: list[str] = []
        self._arrow = pa.array([], type=pa.string())  # self.names as Arrow, rebuilt when grown

    def ids(self, values: pa.Array | pa.ChunkedArray) -> npt.NDArray[np.int32]:
        """Ids for `values`; null → -1."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
        if len(values) == 0:
            return np.empty(0, dtype=np.int32)
        encoded = pc.dictionary_encode(values)
        distinct = encoded.dictionary.to_pylist()
        known = self._ids
        found = [known.get(name, -1) for name in distinct]  # one C-level pass when all known
        if -1 in found:
            for i, name in enumerate(distinct):
                if found[i] == -1:  # new: the next id (distinct values are unique)
                    found[i] = known[name] = len(self.names)
                    self.names.append(name)
        lut = np.array(found, dtype=np.int32)
        idx = encoded.indices
        out = np.full(len(values), -1, dtype=np.int32)
        if idx.null_count:
            valid = pc.is_valid(idx).to_numpy(zero_copy_only=False)
            out[valid] = lut[idx.to_numpy(zero_copy_only=False)[valid].astype(np.int64)]
        else:
            out[:] = lut[idx.to_numpy()]
        return out

    def to_arrow(self, ids: npt.NDArray[np.int32]) -> pa.Array:
        """Names for ids as an Arrow string array; negative ids → null."""
        if len(self._arrow) != len(self.names):
            self._arrow = pa.array(self.names, type=pa.string())
        dictionary = self._arrow
        mask = ids < 0
        indices = pa.array(np.where(mask, 0, ids), mask=mask, type=pa.int32())
        if len(self.names) == 0:
            return pa.nulls(len(ids), type=pa.string())
        return pc.take(dictionary, indices)
