"""Compiled inner loops (numba) for the few places where numpy's whole-array passes lose.

Hash probing and per-query binary searches touch a handful of elements per query at random;
numpy can only express them as many full passes over the query arrays. These kernels do the
same work in one pass, on plain arrays: no Python objects, no per-flow interpreter work.
Compiled code is cached beside this file after the first call (elsewhere where it cannot be:
flowtrail/jit.py).
"""

from __future__ import annotations

import numpy as np

from flowtrail.jit import compiled
from flowtrail.pairing import within

# Everything below takes and returns plain numpy arrays; types are inferred by numba.


@compiled
def _push(buf, n, value):  # type: ignore[no-untyped-def]
    """buf[n] = value, doubling buf when full; returns the (possibly new) buffer."""
    if n == len(buf):
        grown = np.empty(2 * n, buf.dtype)
        grown[:n] = buf
        buf = grown
    buf[n] = value
    return buf


@compiled
def hash_place(table_hash, table_row, hashes, rows):  # type: ignore[no-untyped-def]
    """Linear-probing insert; the table must have a free slot for every hash."""
    mask = len(table_hash) - 1
    for i in range(len(hashes)):
        h = hashes[i] | np.uint64(1)  # 0 marks an empty slot
        s = np.int64(h & np.uint64(mask))
        while table_hash[s] != 0:
            s = (s + 1) & mask
        table_hash[s] = h
        table_row[s] = rows[i]


@compiled
def hash_lookup(table_hash, table_row, hashes):  # type: ignore[no-untyped-def]
    """Every (query index, stored row) pair with an equal hash."""
    mask = len(table_hash) - 1
    cap = max(16, len(hashes))
    out_q = np.empty(cap, np.int64)
    out_r = np.empty(cap, np.int64)
    n = 0
    for i in range(len(hashes)):
        h = hashes[i] | np.uint64(1)
        s = np.int64(h & np.uint64(mask))
        while table_hash[s] != 0:
            if table_hash[s] == h:
                out_q = _push(out_q, n, i)
                out_r = _push(out_r, n, table_row[s])
                n += 1
            s = (s + 1) & mask
    return out_q[:n], out_r[:n]


@compiled
def bisect(values, a, b, t, right):  # type: ignore[no-untyped-def]
    """searchsorted(values[a:b], t, side) + a: the first index in [a, b) whose value is above
    t (`right`) or at least t (not `right`); the one binary search the kernels below use."""
    while a < b:
        m = (a + b) >> 1
        if values[m] < t or (right and values[m] == t):
            a = m + 1
        else:
            b = m
    return a


@compiled
def search_in_blocks(values, lo, hi, targets, right):  # type: ignore[no-untyped-def]
    """searchsorted(values[lo[i]:hi[i]], targets[i], side) + lo[i] for every i."""
    out = np.empty(len(targets), np.int64)
    for i in range(len(targets)):
        out[i] = bisect(values, lo[i], hi[i], targets[i], right)
    return out


@compiled
def _block(keys, key):  # type: ignore[no-untyped-def]
    """[lo, hi) of `key` in sorted `keys`."""
    lo = bisect(keys, 0, len(keys), key, False)
    return lo, bisect(keys, lo, len(keys), key, True)


@compiled
def window_owner_one(seg_start, seg_end, seg_owner, b_lo, b_hi, lo, hi):  # type: ignore[no-untyped-def]
    """The owner whose one segment in [b_lo, b_hi) covers [lo, hi]; -2 conflict; -1 not covered.

    Segments of one address, sorted by start, non-overlapping and merged; an owner < 0
    marks an ambiguous stretch. See OwnershipRanges.owner_over.
    """
    if b_lo == b_hi:
        return np.int32(-1)
    p = bisect(seg_start, b_lo, b_hi, lo, True) - 1  # last segment starting at or before lo
    if p >= b_lo and seg_end[p] > hi:
        return np.int32(seg_owner[p] if seg_owner[p] >= 0 else -2)
    # Not covered by one segment: a conflict if the window sees another owner or ambiguity.
    first = np.int64(-1)
    j = bisect(seg_end, b_lo, b_hi, lo, False)  # first segment ending at or after lo
    while j < b_hi and seg_start[j] <= hi:
        if seg_owner[j] < 0 or (first >= 0 and seg_owner[j] != first):
            return np.int32(-2)
        first = seg_owner[j]
        j += 1
    return np.int32(-1)


@compiled
def window_owner(seg_key, seg_start, seg_end, seg_owner, key, lo, hi):  # type: ignore[no-untyped-def]
    """window_owner_one for every query (key, lo, hi) over all addresses' segments."""
    out = np.full(len(key), -1, np.int32)
    for i in range(len(key)):
        b_lo, b_hi = _block(seg_key, key[i])
        out[i] = window_owner_one(seg_start, seg_end, seg_owner, b_lo, b_hi, lo[i], hi[i])
    return out


@compiled
def owners_within_one(seg_start, seg_end, seg_owner, b_lo, b_hi, lo, hi):  # type: ignore[no-untyped-def]
    """(segments in [b_lo, b_hi) touching [lo, hi], their least owner, their greatest)."""
    first = bisect(seg_end, b_lo, b_hi, lo, False)  # first segment ending at or after lo
    a = bisect(seg_start, b_lo, b_hi, hi, True)  # first segment starting after hi
    o_min = np.int64(np.iinfo(np.int32).max)
    o_max = np.int64(np.iinfo(np.int32).min)
    for j in range(first, a):
        o_min = min(o_min, np.int64(seg_owner[j]))
        o_max = max(o_max, np.int64(seg_owner[j]))
    return max(a - first, 0), np.int32(o_min), np.int32(o_max)


@compiled
def owners_within(seg_key, seg_start, seg_end, seg_owner, key, lo, hi):  # type: ignore[no-untyped-def]
    """owners_within_one for every query (key, lo, hi) over all addresses' segments."""
    n = np.empty(len(key), np.int64)
    o_min = np.empty(len(key), np.int32)
    o_max = np.empty(len(key), np.int32)
    for i in range(len(key)):
        b_lo, b_hi = _block(seg_key, key[i])
        n[i], o_min[i], o_max[i] = owners_within_one(
            seg_start, seg_end, seg_owner, b_lo, b_hi, lo[i], hi[i]
        )
    return n, o_min, o_max


@compiled
def event_range_one(time, assign, owner, seen, b_lo, b_hi, moment, guard, now, lag, as_of):  # type: ignore[no-untyped-def]
    """The event feed's safe answer for one (address, moment): (owner or -1, range start,
    range end), over the address's events in [b_lo, b_hi) sorted by (time, received,
    unassign first), reading only those with `seen` <= `as_of` (what the feed held then).

    An address belongs to the workload of the last event at or before moment - guard if that
    is an assign, until the next event, which must come at or after moment + guard; and only
    once the watermark (now - lag) has passed moment + guard. See EventFeed.safe_owner.
    """
    a = bisect(time, b_lo, b_hi, moment - guard, True)
    p = a - 1
    while p >= b_lo and seen[p] > as_of:
        p -= 1
    q = a
    while q < b_hi and seen[q] > as_of:
        q += 1
    if p < b_lo or not assign[p] or moment + guard > now - lag:
        return np.int32(-1), np.int64(0), np.int64(0)
    if q < b_hi:
        if time[q] < moment + guard:
            return np.int32(-1), np.int64(0), np.int64(0)
        return np.int32(owner[p]), np.int64(time[p]), np.int64(time[q])
    return np.int32(owner[p]), np.int64(time[p]), np.int64(now)


@compiled
def event_ranges(time, assign, owner, b_lo, b_hi, moment, guard, now, lag):  # type: ignore[no-untyped-def]
    """event_range_one for every query, every event held."""
    n = len(moment)
    seen = np.zeros(len(time), np.int64)
    out = np.empty(n, np.int32)
    r_start = np.empty(n, np.int64)
    r_end = np.empty(n, np.int64)
    for i in range(n):
        out[i], r_start[i], r_end[i] = event_range_one(
            time, assign, owner, seen, b_lo[i], b_hi[i], moment[i], guard, now, lag, 0
        )
    return out, r_start, r_end


@compiled
def tuple_hash_one(a_key, a_port, b_key, b_port):  # type: ignore[no-untyped-def]
    """peers.tuple_hash of one ordered 4-tuple (the same bits)."""
    m1 = np.uint64(0x9E3779B97F4A7C15)
    h = mix64(a_key * m1 + np.uint64(a_port))
    return mix64(h ^ (b_key * m1 + np.uint64(b_port)))


@compiled
def mix64(h):  # type: ignore[no-untyped-def]
    """splitmix64's finaliser: neighbouring keys must not probe neighbouring slots."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


@compiled
def peer_append(store, at, table_hash, table_row, local_key, local_port, remote_key,  # type: ignore[no-untyped-def]
                remote_port, pair, owner, seen, rows, exporter):  # fmt: skip
    """Write rows as store[at:] records and place each in the hash table, in one pass (the
    store and the table must have room). `seen`, `exporter`: one value per row, or one for
    all (length 1)."""
    mask = len(table_hash) - 1
    for i in range(len(local_key)):
        h = tuple_hash_one(local_key[i], local_port[i], remote_key[i], remote_port[i])
        j = at + i
        r = store[j]
        r["hash"] = h
        r["pair"] = pair[i]
        r["local_key"] = local_key[i]
        r["remote_key"] = remote_key[i]
        r["seen"] = seen[i if len(seen) > 1 else 0]
        r["row"] = rows[i]
        r["local_port"] = local_port[i]
        r["remote_port"] = remote_port[i]
        r["owner"] = owner[i]
        r["exporter"] = exporter[i if len(exporter) > 1 else 0]
        hs = h | np.uint64(1)  # 0 marks an empty slot
        s = np.int64(hs & np.uint64(mask))
        while table_hash[s] != 0:
            s = (s + 1) & mask
        table_hash[s] = hs
        table_row[s] = j


@compiled
def peer_match(table_hash, table_row, store, q_hash, local_key, local_port, remote_key,  # type: ignore[no-untyped-def]
               remote_port, pair, tolerance):  # fmt: skip
    """Per query: the owner of the other end's rows the pairing rule admits (-1 none, -2 they
    disagree on the owner or the exporter), plus the row handles of every such row."""
    mask = len(table_hash) - 1
    out = np.full(len(q_hash), -1, np.int32)
    partners = np.empty(max(16, len(q_hash)), np.int64)
    n = 0
    for i in range(len(q_hash)):
        h = q_hash[i] | np.uint64(1)
        s = np.int64(h & np.uint64(mask))
        host = np.int32(0)
        while table_hash[s] != 0:
            if table_hash[s] == h:
                r = store[table_row[s]]
                if (
                    r["local_key"] == remote_key[i]
                    and r["local_port"] == remote_port[i]
                    and r["remote_key"] == local_key[i]
                    and r["remote_port"] == local_port[i]
                    and within(r["pair"], pair[i], tolerance)
                ):
                    if out[i] == -1:
                        out[i] = r["owner"]
                        host = r["exporter"]
                    elif out[i] != r["owner"] or host != r["exporter"]:
                        out[i] = -2
                    partners = _push(partners, n, r["row"])
                    n += 1
            s = (s + 1) & mask
    return out, partners[:n]


@compiled
def claimant_runs(key, owner, exporter, start, end, order):  # type: ignore[no-untyped-def]
    """Each claimant's (key, owner, exporter) claims united where they overlap or touch.

    Claims are visited in `order` (ascending start), so a claimant's current run either
    takes the next claim or ends before it: one hash probe per claim, no sort by claimant.
    Returns per run the claim that opened it (its key, owner, exporter and start are the
    run's) and the run's end; runs come in no particular order.
    """
    n = len(order)
    size = 16
    while size < 2 * n:
        size *= 2
    mask = np.uint64(size - 1)
    opened = np.full(size, -1, np.int64)  # per slot: the claim that opened its current run
    run_end = np.zeros(size, np.int64)
    first = np.empty(n, np.int64)
    last = np.empty(n, np.int64)
    m = 0
    for j in range(n):
        i = order[j]
        h = key[i] * np.uint64(0x9E3779B97F4A7C15)
        h ^= (np.uint64(np.int64(owner[i]) & 0xFFFFFFFF) << np.uint64(32)) | np.uint64(
            np.int64(exporter[i]) & 0xFFFFFFFF
        )
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        s = np.int64((h ^ (h >> np.uint64(31))) & mask)
        while opened[s] >= 0:
            c = opened[s]
            if key[c] == key[i] and owner[c] == owner[i] and exporter[c] == exporter[i]:
                break
            s = np.int64((np.uint64(s) + np.uint64(1)) & mask)
        if opened[s] >= 0 and start[i] <= run_end[s]:
            run_end[s] = max(run_end[s], end[i])
            continue
        if opened[s] >= 0:  # a gap: the claimant's run so far is done
            first[m] = opened[s]
            last[m] = run_end[s]
            m += 1
        opened[s] = i
        run_end[s] = end[i]
    for t in range(size):
        if opened[t] >= 0:
            first[m] = opened[t]
            last[m] = run_end[t]
            m += 1
    return first[:m], last[:m]
