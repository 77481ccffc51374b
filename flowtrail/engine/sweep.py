"""The batch schedule's compiled loop: the streaming engine's ticks, replayed in one pass.

`flowtrail attribute` knows every row in advance, so it need not drive the streaming engine
tick by tick through Python. This loop visits the same collector times in the same order as
the streaming replay (each row's arrival tick, every deadline the waiting pool would reach,
the eviction every tenth of the retention) and asks the same questions there (verdict.py),
with state laid out for that: the other end's rows found once for the whole input and made
visible at their arrival tick, ownership segments kept per address as the same canonical
runs OwnershipRanges holds (updated claim by claim), and the event feed read as it stood at
each tick. batch.py prepares its input and assembles the output; the streaming engine stays
the reference, and a test compares the two on every simulator scenario and random inputs.
"""

from __future__ import annotations

import numpy as np

from flowtrail.engine.kernels import event_range_one, owners_within_one, window_owner_one
from flowtrail.engine.verdict import (
    HEARTBEAT,
    VIA_NONE,
    fallback_verdict,
    heartbeat_verdict,
    wait_verdict,
)
from flowtrail.jit import compiled

NEVER = np.iinfo(np.int64).min  # "no time yet" (no eviction, translating mark forgotten)
LATER = np.iinfo(np.int64).max

# settings vector layout
S_STEP, S_MAX_WAIT, S_GUARD, S_LAG, S_USE_EVENTS, S_USE_PEERS = 0, 1, 2, 3, 4, 5
S_RETENTION, S_PERIOD, S_PEER_RETENTION, S_PEER_MIN = 6, 7, 8, 9
# counters vector layout
C_WAITED, C_RETRIES, C_WAITED_FOR_EVENTS, C_BEHIND_HORIZON = 0, 1, 2, 3
C_EVICTED_SEGMENTS, C_SEGMENTS, C_ADDRESSES, C_TICKS = 4, 5, 6, 7
N_COUNTERS = 8


@compiled
def _emit(ts, te, to, tx, cnt, a, b, o, x):  # type: ignore[no-untyped-def]
    """Append run [a, b) labelled (o, x), merged into the last one if they touch and agree."""
    if cnt > 0 and te[cnt - 1] == a and to[cnt - 1] == o and tx[cnt - 1] == x:
        te[cnt - 1] = b
        return cnt
    ts[cnt], te[cnt], to[cnt], tx[cnt] = a, b, o, x
    return cnt + 1


@compiled
def insert_claim(rs, re, ro, rx, kstart, kcap, kbase, klen, used, k, s, e, o, x, scratch):  # type: ignore[no-untyped-def]
    """Add one claim (owner o on exporter x over [s, e)) to address k's runs.

    Each address's runs are what OwnershipRanges keeps: sorted, non-overlapping, maximal
    stretches with one claimant (owner, exporter) or ambiguous (-1, 0), where a stretch is
    ambiguous once two claimants claim it. A claim changes only the stretch it covers: its
    own claimant where nobody claimed, itself again, ambiguous where another did. Runs live
    in one arena, each address in a block of its own that moves to the end when full.
    Returns the (possibly regrown) arena and its used length.
    """
    e = max(e, s + 1)  # a zero-length claim still claims its instant
    base = kbase[k]
    top = base + klen[k]
    a, b = base, top
    while a < b:  # first run ending after s
        m = (a + b) >> 1
        if re[m] <= s:
            a = m + 1
        else:
            b = m
    i = a
    if i < top and rs[i] <= s and re[i] >= e and (ro[i] < 0 or (ro[i] == o and rx[i] == x)):
        return rs, re, ro, rx, used  # nothing changes (the common case: a busy claimant)
    j = i
    while j < top and rs[j] < e:
        j += 1
    size = 2 * (j - i) + 3
    if size <= len(scratch[0]):  # the new runs, built aside: no allocation per claim
        ts, te, to, tx = scratch
    else:
        ts = np.empty(size, np.int64)
        te = np.empty(size, np.int64)
        to = np.empty(size, np.int32)
        tx = np.empty(size, np.int32)
    cnt = 0
    cur = s
    for q in range(i, j):
        if rs[q] < s:
            cnt = _emit(ts, te, to, tx, cnt, rs[q], s, ro[q], rx[q])
        elif rs[q] > cur:
            cnt = _emit(ts, te, to, tx, cnt, cur, rs[q], o, x)
        lo = max(rs[q], s)
        hi = min(re[q], e)
        if ro[q] >= 0 and ro[q] == o and rx[q] == x:
            cnt = _emit(ts, te, to, tx, cnt, lo, hi, o, x)
        else:
            cnt = _emit(ts, te, to, tx, cnt, lo, hi, np.int32(-1), np.int32(0))
        if re[q] > e:
            cnt = _emit(ts, te, to, tx, cnt, e, re[q], ro[q], rx[q])
        cur = hi
    if cur < e:
        cnt = _emit(ts, te, to, tx, cnt, cur, e, o, x)
    first, last = i, j
    if i > base and re[i - 1] == ts[0] and ro[i - 1] == to[0] and rx[i - 1] == tx[0]:
        ts[0] = rs[i - 1]
        first = i - 1
    if j < top and rs[j] == te[cnt - 1] and ro[j] == to[cnt - 1] and rx[j] == tx[cnt - 1]:
        te[cnt - 1] = re[j]
        last = j + 1
    delta = cnt - (last - first)
    if delta > 0 and top + delta > kstart[k] + kcap[k]:
        n_live = top - base
        cap = max(8, 2 * (n_live + delta))
        if used + cap > len(rs):
            grow = max(2 * len(rs), used + cap)
            rs2 = np.empty(grow, np.int64)
            re2 = np.empty(grow, np.int64)
            ro2 = np.empty(grow, np.int32)
            rx2 = np.empty(grow, np.int32)
            rs2[:used], re2[:used], ro2[:used], rx2[:used] = (
                rs[:used],
                re[:used],
                ro[:used],
                rx[:used],
            )
            rs, re, ro, rx = rs2, re2, ro2, rx2
        rs[used : used + n_live] = rs[base:top]
        re[used : used + n_live] = re[base:top]
        ro[used : used + n_live] = ro[base:top]
        rx[used : used + n_live] = rx[base:top]
        shift = used - base
        first += shift
        last += shift
        top += shift
        kstart[k] = used
        kbase[k] = used
        kcap[k] = cap
        used += cap
    if delta != 0 and last < top:
        rs[last + delta : top + delta] = rs[last:top].copy()
        re[last + delta : top + delta] = re[last:top].copy()
        ro[last + delta : top + delta] = ro[last:top].copy()
        rx[last + delta : top + delta] = rx[last:top].copy()
    rs[first : first + cnt] = ts[:cnt]
    re[first : first + cnt] = te[:cnt]
    ro[first : first + cnt] = to[:cnt]
    rx[first : first + cnt] = tx[:cnt]
    klen[k] += delta
    return rs, re, ro, rx, used


@compiled
def _heap_push(hk, hv, size, key, value):  # type: ignore[no-untyped-def]
    """Push (key, value); returns the heap's arrays (doubled when full) and its size."""
    if size == len(hk):
        grown_k = np.empty(2 * size, np.int64)
        grown_v = np.empty(2 * size, np.int64)
        grown_k[:size], grown_v[:size] = hk, hv
        hk, hv = grown_k, grown_v
    i = size
    hk[i], hv[i] = key, value
    while i > 0:
        parent = (i - 1) >> 1
        if hk[parent] <= hk[i]:
            break
        hk[parent], hk[i] = hk[i], hk[parent]
        hv[parent], hv[i] = hv[i], hv[parent]
        i = parent
    return hk, hv, size + 1


@compiled
def _heap_pop(hk, hv, size):  # type: ignore[no-untyped-def]
    size -= 1
    hk[0], hv[0] = hk[size], hv[size]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            break
        small = left
        if left + 1 < size and hk[left + 1] < hk[left]:
            small = left + 1
        if hk[i] <= hk[small]:
            break
        hk[small], hk[i] = hk[i], hk[small]
        hv[small], hv[i] = hv[i], hv[small]
        i = small
    return size


@compiled
def run(  # type: ignore[no-untyped-def]
    settings, ticks, arr_t, recv, start, rk, ck, owner, exporter, end, trl, trr,
    c_ptr, c_row, c_t, c_owner, c_exp, e_lo, e_hi, e_time, e_assign, e_owner, e_seen,
    eb_start, eb_end, nkeys, ntr,
    out_owner, out_source, out_reason, out_via, out_decided, counters,
):  # fmt: skip
    """Decide every flow (given in arrival order) as the streaming replay would.

    Stops early, with counters[C_BEHIND_HORIZON] > 0, at a flow whose event fallback would
    read an address whose events the feed may have forgotten some of by then: only the feed
    itself knows what it kept there (events.py, forget_before), so such an input goes to the
    streaming engine. An address keeps all its events while at most one of them is older
    than the horizon (the feed keeps the last one at or before it), and a moment at or after
    the horizon is answered as before whatever was forgotten.
    """
    step, max_wait, g, lag = settings[0], settings[1], settings[2], settings[3]
    use_events, use_peers = settings[4] != 0, settings[5] != 0
    retention, period = settings[6], settings[7]
    peer_retention, peer_min = settings[8], settings[9]
    n = len(arr_t)

    # ownership runs
    cap = max(1024, 8 * nkeys)
    rs = np.empty(cap, np.int64)
    re = np.empty(cap, np.int64)
    ro = np.empty(cap, np.int32)
    rx = np.empty(cap, np.int32)
    scratch = (
        np.empty(64, np.int64), np.empty(64, np.int64), np.empty(64, np.int32),
        np.empty(64, np.int32),
    )  # fmt: skip
    kstart = np.zeros(nkeys, np.int64)
    kcap = np.zeros(nkeys, np.int64)
    kbase = np.zeros(nkeys, np.int64)
    klen = np.zeros(nkeys, np.int64)
    used = 0
    # translating addresses: when last said so (NEVER: not held)
    tr_seen = np.full(ntr, NEVER, np.int64)
    # waiting flows
    state = np.zeros(n, np.int8)  # 0 not arrived, 1 waiting, 2 decided
    deadline = np.empty(n, np.int64)
    conflict = np.zeros(n, np.bool_)
    extended = np.zeros(n, np.bool_)
    hk = np.empty(1024, np.int64)  # flows waiting on for the event feed: grows as they come
    hv = np.empty(1024, np.int64)
    hsize = 0
    woken_at = np.full(n, -1, np.int64)
    cand = np.empty(max(n, 16), np.int64)
    partners = np.empty(max(len(c_row), 16), np.int64)
    # the peer index: rows seen before `peer_floor` are compacted away
    peer_floor = NEVER
    peer_added = 0
    peer_removed = 0
    peer_compacted = 0
    peer_cut = 0  # rows in arrival order up to here have been counted against peer_floor
    horizon = NEVER  # the latest eviction's horizon
    forgot = np.zeros(len(e_time), np.bool_)  # at an address's first event: may have lost some
    next_evict = NEVER

    ti = 0
    fi = 0  # flows arrived so far: [0, fi)
    dp = 0  # first-deadline pointer, in arrival order
    tick_no = 0
    while True:
        t_reg = ticks[ti] if ti < len(ticks) else LATER
        while dp < fi and (state[dp] != 1 or extended[dp]):
            dp += 1
        due = recv[dp] + max_wait if dp < fi else LATER
        while hsize > 0 and (state[hv[0]] != 1 or deadline[hv[0]] != hk[0]):
            hsize = _heap_pop(hk, hv, hsize)
        if hsize > 0 and hk[0] < due:
            due = hk[0]
        t_due = (due // step + 1) * step - 1 if due != LATER else LATER
        t = min(t_reg, t_due)
        if t == LATER:
            break
        if t == t_reg:
            ti += 1
        tick_no += 1

        # rows received in this tick: learnt before anything is decided
        new_lo = fi
        while fi < n and arr_t[fi] == t:
            p = fi
            state[p] = 1
            deadline[p] = recv[p] + max_wait
            if trl[p] >= 0:
                tr_seen[trl[p]] = t
            if ck[p] >= 0:
                rs, re, ro, rx, used = insert_claim(
                    rs, re, ro, rx, kstart, kcap, kbase, klen, used, ck[p], start[p], end[p],
                    owner[p], exporter[p], scratch,
                )  # fmt: skip
                if use_peers:
                    peer_added += 1
            fi += 1
        new_hi = fi

        # eviction, every tenth of the retention (Attributor._maybe_evict)
        if next_evict == NEVER:
            next_evict = t + period
        elif t >= next_evict:
            horizon = t - retention
            for k in range(nkeys):
                if klen[k] == 0:
                    continue
                a, b = kbase[k], kbase[k] + klen[k]
                while a < b:  # first run ending at or after the horizon
                    m = (a + b) >> 1
                    if re[m] < horizon:
                        a = m + 1
                    else:
                        b = m
                counters[C_EVICTED_SEGMENTS] += a - kbase[k]
                klen[k] -= a - kbase[k]
                kbase[k] = a
            if peer_added - peer_removed >= 2 * max(peer_compacted, peer_min):
                peer_floor = t - peer_retention
                while peer_cut < fi and arr_t[peer_cut] < peer_floor:
                    if ck[peer_cut] >= 0:
                        peer_removed += 1
                    peer_cut += 1
                peer_compacted = peer_added - peer_removed
            for k in range(ntr):
                if tr_seen[k] != NEVER and tr_seen[k] < horizon:
                    tr_seen[k] = NEVER
            for b in range(len(eb_start)):
                if forgot[eb_start[b]]:
                    continue
                old = 0
                for q in range(eb_start[b], eb_end[b]):
                    if e_time[q] > horizon:
                        break
                    if e_seen[q] <= t:
                        old += 1
                if old >= 2:
                    forgot[eb_start[b]] = True
            next_evict = t + period

        # candidates: waits that ran out, then the new rows
        nc = 0
        while dp < new_lo and recv[dp] + max_wait <= t:
            if state[dp] == 1 and not extended[dp]:
                cand[nc] = dp
                nc += 1
            dp += 1
        while hsize > 0 and hk[0] <= t:
            q = hv[0]
            if state[q] == 1 and deadline[q] == hk[0]:
                cand[nc] = q
                nc += 1
            hsize = _heap_pop(hk, hv, hsize)
        counters[C_RETRIES] += nc
        n_retry = nc
        for p in range(new_lo, new_hi):
            cand[nc] = p
            nc += 1

        npart = 0
        for pass_no in range(2):
            if pass_no == 1:  # waiting flows whose other end's row was just seen
                nc = 0
                for j in range(npart):
                    r = partners[j]
                    if state[r] == 1 and woken_at[r] != tick_no:
                        woken_at[r] = tick_no
                        cand[nc] = r
                        nc += 1
                counters[C_RETRIES] += nc
            for ci in range(nc):
                p = cand[ci]
                vp = np.int32(-1)
                host = np.int32(0)
                if use_peers:
                    for j in range(c_ptr[p], c_ptr[p + 1]):
                        if c_t[j] > t or c_t[j] < peer_floor:
                            continue  # not received yet, or compacted away
                        if vp == -1:
                            vp, host = c_owner[j], c_exp[j]
                        elif vp != c_owner[j] or host != c_exp[j]:
                            vp = np.int32(-2)
                        if pass_no == 0:
                            partners[npart] = c_row[j]
                            npart += 1
                vr = np.int32(-1)
                k = rk[p]
                if k >= 0:
                    vr = window_owner_one(
                        rs, re, ro, kbase[k], kbase[k] + klen[k], start[p] - g, start[p] + g
                    )
                nat = trr[p] >= 0 and tr_seen[trr[p]] != NEVER
                if nat:
                    vr = np.int32(-1)
                o, via, c = heartbeat_verdict(vp, vr, conflict[p])
                conflict[p] = c
                if o >= 0:
                    state[p] = 2
                    out_owner[p], out_source[p], out_via[p], out_decided[p] = o, HEARTBEAT, via, t
                    continue
                expired, d = wait_verdict(deadline[p], t, start[p], g, lag, use_events)
                if not expired:
                    if d != deadline[p]:
                        deadline[p] = d
                        extended[p] = True
                        counters[C_WAITED_FOR_EVENTS] += 1
                        hk, hv, hsize = _heap_push(hk, hv, hsize, d, p)
                    if pass_no == 0 and ci >= n_retry:
                        counters[C_WAITED] += 1
                    continue
                ev = np.int32(-1)
                agrees = True
                if use_events:
                    if start[p] - g < horizon and e_lo[p] < e_hi[p] and forgot[e_lo[p]]:
                        counters[C_BEHIND_HORIZON] += 1
                        return
                    ev, r_start, r_end = event_range_one(
                        e_time, e_assign, e_owner, e_seen, e_lo[p], e_hi[p], start[p], g, t,
                        lag, t,
                    )  # fmt: skip
                    if nat:
                        ev = np.int32(-1)
                    if ev >= 0 and k >= 0:
                        n_seg, o_min, o_max = owners_within_one(
                            rs, re, ro, kbase[k], kbase[k] + klen[k], r_start - g, r_end + g
                        )
                        agrees = n_seg == 0 or (o_min == ev and o_max == ev)
                o, source, reason = fallback_verdict(ev, agrees, c)
                state[p] = 2
                out_owner[p], out_source[p], out_reason[p] = o, source, reason
                out_via[p], out_decided[p] = VIA_NONE, t
    total = 0
    addresses = 0
    for k in range(nkeys):
        total += klen[k]
        if klen[k] > 0:
            addresses += 1
    counters[C_SEGMENTS] = total
    counters[C_ADDRESSES] = addresses
    counters[C_TICKS] = tick_no
