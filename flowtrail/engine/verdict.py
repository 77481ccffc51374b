"""What one attempt at a flow decides: the engine's rules, once, for both schedules.

The streaming engine (attributor.py, the live collector and the reference) and the batch
schedule (batch.py, `flowtrail attribute`) ask the same questions of the same evidence and
call these functions for the answers, so the two can only differ in *when* they ask, never in
what an answer means. Each takes one flow's evidence at one moment:
- `heartbeat_verdict`: the other end's rows and the ownership ranges (attributor.py's order
  of evidence, 1. and 2.);
- `wait_verdict`: whether a flow heartbeats did not name stops waiting now, or waits on for
  the event feed's watermark;
- `fallback_verdict`: the event feed's answer, where heartbeats inside its range agree.
"""

from __future__ import annotations

import numpy as np

from flowtrail.jit import compiled

# Answers of the evidence lookups (peers.py, ownership.py).
PEER_NO_MATCH, PEER_CONFLICT = -1, -2
RANGES_NOT_COVERED, RANGES_CONFLICT = -1, -2
# remote_source codes, in schema.SOURCES order
HEARTBEAT, EVENT, UNATTRIBUTED = 0, 1, 2
# why a flow left unattributed
REASON_NONE, REASON_NO_EVIDENCE, REASON_CONFLICT, REASON_EVENT_CONFLICT = 0, 1, 2, 3
# how a heartbeat decision was reached
VIA_NONE, VIA_PEER, VIA_RANGES = 0, 1, 2


@compiled
def heartbeat_verdict(via_peer, via_ranges, conflict):  # type: ignore[no-untyped-def]
    """(owner or -1, VIA_*, conflict seen so far) from the peer rows' and the ranges' answers.

    The peer rows win where the ranges say nothing or agree; the ranges answer only where no
    peer row exists; a flow whose evidence ever disagreed keeps that in `conflict`.
    """
    conflict = (
        conflict
        or via_peer == PEER_CONFLICT
        or via_ranges == RANGES_CONFLICT
        or (via_peer >= 0 and via_ranges >= 0 and via_peer != via_ranges)
    )
    if via_peer >= 0 and (via_ranges < 0 or via_ranges == via_peer):
        return np.int32(via_peer), VIA_PEER, conflict
    if via_peer == PEER_NO_MATCH and via_ranges >= 0:
        return np.int32(via_ranges), VIA_RANGES, conflict
    return np.int32(-1), VIA_NONE, conflict


@compiled
def wait_verdict(deadline, now, start, guard, lag, use_events):  # type: ignore[no-untyped-def]
    """(expired, deadline) of a flow heartbeats did not name at `now`.

    Once its wait is over, a flow bound for the event feed waits on until the feed's
    watermark (now - lag) has passed its moment plus the guard: the new deadline.
    """
    if deadline > now:
        return False, deadline
    if use_events:
        settles_at = start + guard + lag
        if settles_at > now:
            return False, settles_at
    return True, deadline


@compiled
def fallback_verdict(ev_owner, agrees, conflict):  # type: ignore[no-untyped-def]
    """(owner or -1, source, reason) of a flow whose wait is over.

    `ev_owner`: the event feed's safe answer (-1 none); `agrees`: no heartbeat inside the
    event's range names anyone else.
    """
    if ev_owner >= 0 and agrees:
        return np.int32(ev_owner), EVENT, REASON_NONE
    if ev_owner >= 0:
        return np.int32(-1), UNATTRIBUTED, REASON_EVENT_CONFLICT
    return np.int32(-1), UNATTRIBUTED, REASON_CONFLICT if conflict else REASON_NO_EVIDENCE


@compiled
def heartbeat_verdicts(via_peer, via_ranges, conflict):  # type: ignore[no-untyped-def]
    """heartbeat_verdict over arrays: (owner, via, conflict)."""
    n = len(via_peer)
    owner = np.empty(n, np.int32)
    via = np.empty(n, np.int8)
    out_conflict = np.empty(n, np.bool_)
    for i in range(n):
        o, v, c = heartbeat_verdict(via_peer[i], via_ranges[i], conflict[i])
        owner[i], via[i], out_conflict[i] = o, v, c
    return owner, via, out_conflict


@compiled
def wait_verdicts(deadline, now, start, guard, lag, use_events, mask):  # type: ignore[no-untyped-def]
    """wait_verdict where `mask` (heartbeats named nobody): (expired, deadline, extended)."""
    n = len(deadline)
    expired = np.zeros(n, np.bool_)
    extended = np.zeros(n, np.bool_)
    out = deadline.copy()
    for i in range(n):
        if mask[i]:
            e, d = wait_verdict(deadline[i], now, start[i], guard, lag, use_events)
            expired[i] = e
            extended[i] = d != deadline[i]
            out[i] = d
    return expired, out, extended


@compiled
def fallback_verdicts(ev_owner, agrees, conflict):  # type: ignore[no-untyped-def]
    """fallback_verdict over arrays: (owner, source, reason)."""
    n = len(ev_owner)
    owner = np.empty(n, np.int32)
    source = np.empty(n, np.int8)
    reason = np.empty(n, np.int8)
    for i in range(n):
        o, s, r = fallback_verdict(ev_owner[i], agrees[i], conflict[i])
        owner[i], source[i], reason[i] = o, s, r
    return owner, source, reason
