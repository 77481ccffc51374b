"""Names for remote addresses from the DNS answers workloads received (docs/dns.md, "Naming").

A dns_answers row (docs/contract.md) says: `query_name` stood for `address`, as the workload
`local_workload` on `exporter` saw it, from `observed_ns` for `ttl_s` seconds. That is a
heartbeat for an address outside the fleet, with the same time-range discipline as
ownership: a flow is named `remote_dns` from the answers its own workload (same exporter and
local_workload; failing those, the same exporter's host-wide answers, local_workload null)
received at or before its start, whose TTL plus a grace covers the start, in the flow's
network. Several names covering one address at that moment (a CDN address shared by two
names) are all kept, sorted and joined by ","; none is picked.

The address matched is the one the workload connected to, as its kernel saw it (`remote_ip`,
before destination NAT): the address its resolver gave it. `remote_dns` is a column of its
own beside `remote_workload`, never in its place.

Answers are kept as runs: answers of one (workload, address, name) whose validity overlaps
merge into one [first seen, last valid] run, so a workload re-resolving a name every second
costs one run, not one per answer. Runs sit in arrays sorted by (who, address, name, start),
each (who, address) block found through a hash table; a lookup is one compiled pass of a probe
and short binary searches per flow, no Python per flow.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.engine.ipkeys import IpKeys, Names
from flowtrail.engine.kernels import mix64
from flowtrail.errors import ContractError
from flowtrail.jit import compiled

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
U64 = npt.NDArray[np.uint64]

SECOND = 1_000_000_000
DEFAULT_GRACE_NS = (
    30 * SECOND
)  # stub resolvers and pools keep using an answer a little past its TTL
SEPARATOR = ","  # between several names of one address at one moment


def check_answers(answers: pa.Table, path: str | None = None) -> None:
    """ContractError naming the first row whose query_name is not as the contract writes it
    (lower case, no trailing dot, not empty). A validated dns_answers table
    (flowtrail.tables.validate) has the types and the other values right."""
    names = answers.column("query_name")
    bad = pc.or_(
        pc.or_(pc.equal(pc.utf8_length(names), 0), pc.ends_with(names, ".")),
        pc.not_equal(pc.utf8_lower(names), names),
    )
    mask = np.asarray(pc.fill_null(bad, False).to_numpy(zero_copy_only=False), bool)
    if mask.any():
        row = int(np.flatnonzero(mask)[0])
        raise ContractError(
            f"{names[row].as_py()!r}: a query name is lower case, without the trailing dot, "
            "and not empty",
            path=path, row=row + 1, column="query_name",
        )  # fmt: skip


def _escaped(names: pa.ChunkedArray) -> pa.ChunkedArray:
    """A name's ',' and whitespace written as DNS presentation format writes unusual bytes
    (\\044, \\032, ...), so several names joined by ',' stay apart. The agent escapes all
    but ',' itself (docs/dns.md, Capture)."""
    for char in (",", " ", "\t", "\n", "\r"):
        names = pc.replace_substring(names, char, f"\\{ord(char):03d}")
    return names


def _who(exporter: I32, workload: I32) -> I64:
    """One int64 per (exporter, workload or none): both are interned ids below 2**31."""
    return (exporter.astype(np.int64) << np.int64(32)) | (workload.astype(np.int64) + 1)


@compiled
def _merge_runs(who, addr, name, start, end):  # type: ignore[no-untyped-def]
    """Rows sorted by (who, addr, name, start) → a mask of the rows that begin a run and each
    run's end: rows of one (who, addr, name) whose [start, end] overlap or touch merge."""
    n = len(who)
    first = np.zeros(n, np.bool_)
    run_end = end.copy()
    head = -1
    for i in range(n):
        same = head >= 0 and who[i] == who[head] and addr[i] == addr[head]
        if same and name[i] == name[head] and start[i] <= run_end[head]:
            if end[i] > run_end[head]:
                run_end[head] = end[i]
            continue
        first[i] = True
        head = i
    return first, run_end


@compiled
def _slot(who, addr, mask):  # type: ignore[no-untyped-def]
    return mix64(mix64(np.uint64(who)) ^ addr) & mask


@compiled
def _index_blocks(who, addr, heads):  # type: ignore[no-untyped-def]
    """An open-addressing table: slot → the first run of a (who, addr) block (-1 empty), at
    most half full. `heads`: each block's first run, in arrays sorted by (who, addr)."""
    size = 16
    while size < 2 * len(heads):
        size *= 2
    table = np.full(size, -1, np.int64)
    mask = np.uint64(size - 1)
    for h in heads:
        s = _slot(who[h], addr[h], mask)
        while table[s] >= 0:
            s = (s + np.uint64(1)) & mask
        table[s] = h
    return table


@compiled
def _block(who, addr, block_end, table, q_who, q_addr):  # type: ignore[no-untyped-def]
    """[lo, hi) of the runs of (q_who, q_addr): one probe of the block table, keys compared
    exactly (a hash collision never matches)."""
    mask = np.uint64(len(table) - 1)
    s = _slot(q_who, q_addr, mask)
    while table[s] >= 0:
        h = table[s]
        if who[h] == q_who and addr[h] == q_addr:
            return h, block_end[h]
        s = (s + np.uint64(1)) & mask
    return 0, 0


@compiled
def _covering(who, addr, name, start, end, seg_end, block_end, table, q_who, q_addr, t, out, n):  # type: ignore[no-untyped-def]
    """Appends to out[n:] the names of (q_who, q_addr)'s runs covering t; returns (out, n).

    Inside a block the runs of one name are disjoint and sorted by start: only the last one
    starting at or before t can cover it."""
    a, b = _block(who, addr, block_end, table, q_who, q_addr)
    i = a
    while i < b:
        e = seg_end[i]
        lo, hi = i, e
        while lo < hi:
            mid = (lo + hi) // 2
            if start[mid] <= t:
                lo = mid + 1
            else:
                hi = mid
        if lo > i and end[lo - 1] >= t:
            if n == len(out):
                grown = np.empty(2 * n, out.dtype)
                grown[:n] = out
                out = grown
            out[n] = name[lo - 1]
            n += 1
        i = e
    return out, n


@compiled
def _lookup(who, addr, name, start, end, seg_end, block_end, table, q_who, q_host, q_addr, q_t):  # type: ignore[no-untyped-def]
    """Per query: the names covering its time for its own who, else for its host's who.
    CSR: (ptr, names), each query's names in the runs' order (their text order)."""
    m = len(q_who)
    ptr = np.zeros(m + 1, np.int64)
    out = np.empty(max(16, m), np.int32)
    n = 0
    for q in range(m):
        if q_addr[q] != np.uint64(0xFFFFFFFFFFFFFFFF):
            before = n
            out, n = _covering(who, addr, name, start, end, seg_end, block_end, table,
                               q_who[q], q_addr[q], q_t[q], out, n)  # fmt: skip
            if n == before and q_host[q] != q_who[q]:
                out, n = _covering(who, addr, name, start, end, seg_end, block_end, table,
                                   q_host[q], q_addr[q], q_t[q], out, n)  # fmt: skip
        ptr[q + 1] = n
    return ptr, out[:n]


class DnsNames:
    """DNS answers as time-ranged names per (exporter, workload), and the lookup for flows.

    `grace_ns`: how long past its TTL an answer still names an address. `add` takes validated
    dns_answers tables (any number, any order); `names_for` answers for a flows table.
    """

    def __init__(self, grace_ns: int = DEFAULT_GRACE_NS) -> None:
        if grace_ns < 0:
            raise ValueError("the grace must not be negative")
        self.grace_ns = grace_ns
        self.ipkeys = IpKeys()
        self.owners = Names()  # exporters and workloads, interned together: only equality matters
        self.names = Names()  # query names
        self.answers_in = 0
        self._new: list[tuple[I64, U64, I32, I64, I64]] = []
        empty = np.empty(0, np.int64)
        self._who, self._addr = empty, np.empty(0, np.uint64)
        self._name, self._start, self._end = np.empty(0, np.int32), empty, empty
        self._seg_end = self._block_end = empty
        self._table = np.full(16, -1, np.int64)

    def __len__(self) -> int:
        """Runs held (after merging what was added)."""
        self._compact()
        return len(self._who)

    @property
    def nbytes(self) -> int:
        arrays = (self._who, self._addr, self._name, self._start, self._end, self._seg_end,
                  self._block_end, self._table)  # fmt: skip
        return sum(a.nbytes for a in arrays)

    def add(self, answers: pa.Table) -> None:
        """Learn a validated dns_answers table's rows."""
        n = answers.num_rows
        if n == 0:
            return
        exporter = answers.column("exporter")
        network = answers.column("network") if "network" in answers.column_names else None
        workload = (
            self.owners.ids(answers.column("local_workload"))
            if "local_workload" in answers.column_names
            else np.full(n, -1, np.int32)
        )
        who = _who(self.owners.ids(exporter), workload)
        addr = self.ipkeys.keys(answers.column("address"), exporter, network=network)
        observed = np.asarray(answers.column("observed_ns").to_numpy(), np.int64)
        ttl = np.asarray(answers.column("ttl_s").to_numpy(), np.int64)
        end = observed + ttl * SECOND + self.grace_ns
        names = _escaped(answers.column("query_name"))
        self._new.append((who, addr, self.names.ids(names), observed, end))
        self.answers_in += n

    def evict(self, horizon_ns: int) -> int:
        """Forget runs that ended before `horizon_ns`; returns how many."""
        self._compact()
        keep = self._end >= horizon_ns
        gone = int(len(keep) - np.count_nonzero(keep))
        if gone:
            self._set(self._who[keep], self._addr[keep], self._name[keep], self._start[keep],
                      self._end[keep])  # fmt: skip
        return gone

    def _compact(self) -> None:
        """Merge what was added since the last lookup into the sorted runs."""
        if not self._new:
            return
        parts = [(self._who, self._addr, self._name, self._start, self._end), *self._new]
        self._new = []
        who, addr, name, start, end = (np.concatenate([p[k] for p in parts]) for k in range(5))
        # Names in text order, so that a flow's names come out of the runs sorted.
        rank = np.empty(len(self.names.names), np.int64)
        text_order = pc.sort_indices(pa.array(self.names.names, pa.string())).to_numpy()
        rank[text_order] = np.arange(len(rank))
        order = np.lexsort((start, rank[name], addr, who))
        who, addr, name, start, end = who[order], addr[order], name[order], start[order], end[order]
        first, run_end = _merge_runs(who, addr, rank[name], start, end)
        self._set(who[first], addr[first], name[first], start[first], run_end[first])

    def _set(self, who: I64, addr: U64, name: I32, start: I64, end: I64) -> None:
        self._who, self._addr, self._name, self._start, self._end = who, addr, name, start, end
        n = len(who)
        if n == 0:
            self._seg_end = self._block_end = np.empty(0, np.int64)
            self._table = np.full(16, -1, np.int64)
            return
        block = np.r_[(who[1:] != who[:-1]) | (addr[1:] != addr[:-1]), True]
        change = block | np.r_[name[1:] != name[:-1], True]
        ends = np.flatnonzero(change) + 1
        self._seg_end = np.repeat(ends, np.diff(np.r_[0, ends])).astype(np.int64)
        ends = np.flatnonzero(block) + 1
        self._block_end = np.repeat(ends, np.diff(np.r_[0, ends])).astype(np.int64)
        self._table = _index_blocks(who, addr, np.r_[0, ends[:-1]].astype(np.int64))

    def names_for(self, flows: pa.Table) -> pa.Array:
        """remote_dns for each row of a flows table (string; null where no answer names it)."""
        n = flows.num_rows
        self._compact()
        if n == 0 or len(self._who) == 0:
            return pa.nulls(n, pa.string())
        exporter = flows.column("exporter")
        network = flows.column("network") if "network" in flows.column_names else None
        exp_id = self.owners.ids(exporter)
        workload = (
            self.owners.ids(flows.column("local_workload"))
            if "local_workload" in flows.column_names
            else np.full(n, -1, np.int32)
        )
        q_who = _who(exp_id, workload)
        q_host = _who(exp_id, np.full(n, -1, np.int32))
        q_addr = self.ipkeys.keys(flows.column("remote_ip"), exporter, network=network)
        q_t = np.asarray(flows.column("start_ns").to_numpy(), np.int64)
        ptr, found = _lookup(
            self._who, self._addr, self._name, self._start, self._end, self._seg_end,
            self._block_end, self._table, q_who, q_host, q_addr, q_t,
        )  # fmt: skip
        if len(found) == 0:
            return pa.nulls(n, pa.string())
        unnamed = ptr[1:] == ptr[:-1]
        lists = pa.ListArray.from_arrays(
            pa.array(ptr.astype(np.int32)), self.names.to_arrow(found), mask=pa.array(unnamed)
        )
        return pc.binary_join(lists, SEPARATOR)
