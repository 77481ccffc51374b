"""Which two rows are the two ends of one TCP connection: one rule, for the engine and queries.

A connection captured at both ends has a client (`outbound`) row and a server (`inbound`) row
whose 4-tuples are each other's reverse (the client's remote side NAT-resolved). Start times
cannot pair them: the client's row starts at its first SYN, the server's when the handshake
completes, and every SYN lost on the way puts seconds between them (with the classic backoff
1 s for one, 3 s for two, 31 s for five). What both ends agree on is the moment the handshake
completed: each end's `established_ns`, apart by one trip of the handshake's last segment plus
the hosts' clock difference. A row without it (a source that does not record it) pairs by its
start_ns, which for a server row is that same moment.

The rule. Two rows are the same connection when
- their 4-tuples are each other's reverse, and
- their pair times (`established_ns`, else `start_ns`) are at most the tolerance apart;
and every row is in at most one pair. A 4-tuple's connections follow one another in time
(reused after TIME_WAIT, or within a second where the closing side allows it), so within one
4-tuple rows pair in time order: the earliest unpaired client row with the earliest unpaired
server row within the tolerance (`pair_in_order`). Rows of attempts that never established
(schema.ATTEMPTS) have no other end to pair with.

The tolerance only has to cover clock differences between hosts and a round trip; the
next connection on a 4-tuple comes at least a whole connection later.

The engine applies the rule streaming (engine/peers.py): rows arrive in any order, so a row
takes its name from the other end only when every row the rule admits agrees on it, and is left
unattributed when they disagree. The queries apply `pair_in_order` to a window's rows.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.jit import compiled

I64 = npt.NDArray[np.int64]

SECOND_NS = 1_000_000_000
DEFAULT_TOLERANCE_NS = 1 * SECOND_NS

PAIR_TIME_SQL = "coalesce(established_ns, start_ns)"
"""A row's pair time in SQL, over the contract's flows columns."""


def pair_times(flows: pa.Table) -> I64:
    """Per row of a contract flows table: established_ns where known, else start_ns."""
    start = flows.column("start_ns")
    if "established_ns" in flows.column_names:
        start = pc.coalesce(flows.column("established_ns"), start)
    return np.asarray(start.to_numpy(), dtype=np.int64)


@compiled
def within(a, b, tolerance):  # type: ignore[no-untyped-def]
    """The rule's time test: two pair times of the two ends of one connection."""
    return abs(a - b) <= tolerance


@compiled
def _pair_sorted(a_group, a_time, b_group, b_time, tolerance):  # type: ignore[no-untyped-def]
    n = min(len(a_group), len(b_group))
    out_a = np.empty(n, np.int64)
    out_b = np.empty(n, np.int64)
    i = j = k = 0
    while i < len(a_group) and j < len(b_group):
        if a_group[i] != b_group[j]:
            if a_group[i] < b_group[j]:
                i += 1
            else:
                j += 1
        elif within(a_time[i], b_time[j], tolerance):
            out_a[k], out_b[k] = i, j
            k += 1
            i += 1
            j += 1
        elif a_time[i] < b_time[j]:
            i += 1  # a's other end was not captured (or is outside the rows given)
        else:
            j += 1
    return out_a[:k], out_b[:k]


def pair_in_order(
    a_group: I64, a_time: I64, b_group: I64, b_time: I64, tolerance_ns: int
) -> tuple[I64, I64]:
    """One-to-one pairs between rows a (one end) and b (the other), as index arrays into each.

    `*_group` numbers the 4-tuple (equal for a row and its reversed other end); `*_time` are
    pair times. Within a group, rows pair in time order (see the module doc).
    """
    if tolerance_ns < 0:
        raise ValueError(f"pair tolerance {tolerance_ns} ns: must not be negative")
    oa = np.lexsort((a_time, a_group))
    ob = np.lexsort((b_time, b_group))
    ia, ib = _pair_sorted(
        np.ascontiguousarray(a_group[oa], np.int64), np.ascontiguousarray(a_time[oa], np.int64),
        np.ascontiguousarray(b_group[ob], np.int64), np.ascontiguousarray(b_time[ob], np.int64),
        np.int64(tolerance_ns),
    )  # fmt: skip
    return oa[ia].astype(np.int64), ob[ib].astype(np.int64)
