"""The event feed's standing assignments, which a cluster carries forward in its streams."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flowtrail.engine.events import UNKNOWN, EventFeed

event = st.tuples(
    st.integers(0, 2),  # address key
    st.integers(0, 3),  # workload
    st.booleans(),  # assign?
    st.integers(0, 100),  # time
    st.integers(0, 100),  # received
)
GUARD, LAG, NOW = 3, 10, 1_000


def add(feed: EventFeed, events: list[tuple[int, int, bool, int, int]]) -> EventFeed:
    if events:
        k, o, a, t, r = zip(*events, strict=True)
        feed.add(
            np.array(k, np.uint64), np.array(o, np.int32), np.array(a, bool),
            np.array(t, np.int64), np.array(r, np.int64),
        )  # fmt: skip
    return feed


def feed_of(events: list[tuple[int, int, bool, int, int]]) -> EventFeed:
    return add(EventFeed(), events)


def answers(feed: EventFeed, *, ranges: bool = False) -> list[object]:
    """safe_owner for every address and moment (with the ranges it reports, if asked)."""
    keys = np.repeat(np.arange(3, dtype=np.uint64), 140)
    moments = np.tile(np.arange(-10, 130, dtype=np.int64), 3)
    owner, start, end = feed.safe_owner(keys, moments, guard_ns=GUARD, now=NOW, lag_ns=LAG)
    if ranges:
        return list(zip(owner.tolist(), start.tolist(), end.tolist(), strict=True))
    return owner.tolist()


def carried(feed: EventFeed, received: int) -> list[tuple[int, int, bool, int, int]]:
    k, o, t = feed.standing(received_before=received)
    return [(int(a), int(b), True, int(c), received) for a, b, c in zip(k, o, t, strict=True)]


def test_standing_is_each_address_latest_assign_not_recently_copied() -> None:
    feed = feed_of(
        [
            (0, 1, True, 10, 11),  # address 0: held by 1 ...
            (1, 1, True, 10, 11),
            (1, 1, False, 20, 21),  # address 1: released: nothing stands
            (2, 1, False, 30, 30),  # address 2: handed from 1 to 2 at one instant
            (2, 2, True, 30, 31),
        ]
    )
    k, o, t = feed.standing(received_before=50)
    assert list(zip(k.tolist(), o.tolist(), t.tolist(), strict=True)) == [(0, 1, 10), (2, 2, 30)]
    add(feed, [(0, 1, True, 10, 60)])  # a copy, received at 60
    k, _, _ = feed.standing(received_before=50)
    assert k.tolist() == [2]  # address 0 was carried recently: not again yet


@given(st.lists(event, max_size=25), st.integers(0, 150))
@settings(max_examples=300, deadline=None)
def test_carrying_changes_no_answer_and_a_fresh_feed_never_names_another_owner(
    events: list[tuple[int, int, bool, int, int]], at: int
) -> None:
    full = feed_of(events)
    before = answers(full)
    copies = carried(full, received=at + 200)
    # Every node already holds the events it carries: applying the copies changes nothing,
    # not even the ranges that heartbeats are checked against.
    with_ranges = answers(full, ranges=True)
    add(full, copies)
    assert answers(full, ranges=True) == with_ranges
    # A node that starts later and holds only the carried copies answers like the others
    # or not at all: never a different workload.
    fresh = answers(feed_of(copies))
    assert all(f in (UNKNOWN, b) for f, b in zip(fresh, before, strict=True))
    # ...and for each carried address, every moment past its assignment (plus the guard) is
    # answered, as by the full feed.
    moments = list(range(-10, 130))
    for key, owner, _, time, _ in copies:
        for i, m in enumerate(moments):
            if m >= time + GUARD and m + GUARD <= NOW - LAG:
                assert fresh[key * 140 + i] == owner == before[key * 140 + i]


def owner_now_by_hand(events: list[tuple[int, int, bool, int, int]], key: int) -> int:
    """The baseline's rule on the raw events, copies and all: per workload its last event in
    arrival order (received, then position) says held; the latest-assigned holder wins."""
    last: dict[int, tuple[int, int, bool]] = {}
    for i, (k, o, a, _t, r) in enumerate(events):
        if k == key and (o not in last or (r, i) >= last[o][:2]):
            last[o] = (r, i, a)
    held = [(r, o) for o, (r, _i, a) in last.items() if a]
    return max(held)[1] if held else UNKNOWN


@given(st.lists(event, max_size=25))
@settings(max_examples=300, deadline=None)
def test_keeping_one_copy_of_each_event_changes_no_baseline_answer(
    events: list[tuple[int, int, bool, int, int]],
) -> None:
    got = feed_of(events).owner_now(np.arange(3, dtype=np.uint64)).tolist()
    assert got == [owner_now_by_hand(events, k) for k in range(3)]


def test_copies_do_not_grow_the_feed() -> None:
    """A cluster carries each standing assignment every round, forever: the feed keeps one
    row per event, not one per copy."""
    feed = feed_of([(0, 1, True, 10, 11), (1, 2, True, 20, 21), (1, 2, False, 30, 31)])
    held = len(feed)
    for round_ in range(1, 200):
        add(feed, carried(feed, received=100 * round_))
        assert len(feed) == held
    k, o, t = feed.standing(received_before=10**9)
    assert (k.tolist(), o.tolist(), t.tolist()) == ([0], [1], [10])


def held_throughout(full: EventFeed, key: int, moment: int) -> int:
    """The workload the full feed's events (in the order it reads them: same-instant ties
    included) say held `key` from moment - GUARD up to moment + GUARD, the window a safe
    answer needs; UNKNOWN if none did throughout."""
    k, o, a, t, _ = full._time_sorted()
    mine = [
        (int(ti), bool(ai), int(oi)) for ki, oi, ai, ti in zip(k, o, a, t, strict=True) if ki == key
    ]
    lo, hi = moment - GUARD, moment + GUARD
    before = [e for e in mine if e[0] <= lo]
    if not before or not before[-1][1]:
        return UNKNOWN
    holder = before[-1][2]
    after = mine[len(before) :]
    return holder if all(a and o == holder for ti, a, o in after if ti < hi) else UNKNOWN


@given(
    st.lists(event, max_size=25),
    st.integers(-5, 110),
    st.lists(event, max_size=5),
    st.integers(0, 40),
    st.lists(event, max_size=3),
)
@settings(max_examples=400, deadline=None)
def test_forgetting_before_a_horizon_changes_no_later_answer_and_never_names_another(
    events: list[tuple[int, int, bool, int, int]],
    horizon: int,
    later: list[tuple[int, int, bool, int, int]],
    step: int,
    last: list[tuple[int, int, bool, int, int]],
) -> None:
    full, trimmed = feed_of(events), feed_of(events)
    dropped = trimmed.forget_before(horizon)
    assert len(trimmed) == len(full) - dropped
    # Events arriving afterwards (late copies, re-assertions) land on both alike; then a
    # later round forgets more, and more events come.
    add(full, later)
    add(trimmed, later)
    horizon += step
    trimmed.forget_before(horizon)
    add(full, last)
    add(trimmed, last)
    before, after = answers(full, ranges=True), answers(trimmed, ranges=True)
    moments = list(range(-10, 130)) * 3
    for i, (m, b, a) in enumerate(zip(moments, before, after, strict=True)):
        if m - GUARD >= horizon:
            assert a == b, (m, b, a)  # a moment the horizon keeps: answered exactly as before
        else:  # older: none, or whoever the events say held it throughout
            truth = held_throughout(full, i // 140, m)
            assert b[0] in (UNKNOWN, truth), (m, b)  # the oracle agrees with the full feed
            assert a[0] in (UNKNOWN, truth), (m, b, a)
    # Carrying forward sees every standing assignment it saw before.
    assert sorted(carried(trimmed, received=500)) == sorted(carried(full, received=500))


def test_a_long_running_feed_is_bounded_by_the_horizon() -> None:
    """100 addresses reassigned every minute for 3 simulated days, forgetting past one hour
    each tenth of an hour (as the engine does): the feed holds about an hour of events (a
    feed that kept them would hold 72 hours' worth)."""
    feed, minute, addresses = EventFeed(), 60, np.arange(100, dtype=np.uint64)
    days = 3
    held_max = 0
    for m in range(days * 24 * 60):
        owner = np.full(100, m % 7, np.int32)
        t = np.full(100, m * minute, np.int64)
        feed.add(addresses, owner, np.ones(100, bool), t, t)
        if m % 6 == 0:
            feed.forget_before((m - 60) * minute)
            held_max = max(held_max, len(feed))
    assert held_max <= 100 * 67  # an hour, the tenth of an hour between rounds, one older row
    owner, _, _ = feed.safe_owner(
        addresses, np.full(100, (days * 24 * 60 - 30) * minute, np.int64),
        guard_ns=0, now=10**12, lag_ns=0,
    )  # fmt: skip
    assert owner.tolist() == [(days * 24 * 60 - 30) % 7] * 100


def test_an_address_never_reassigned_keeps_answering_before_the_horizon() -> None:
    """A long-lived connection to a load balancer assigned long ago starts before any
    horizon; an address re-asserted for the same workload answers from its first assign;
    only addresses that changed hands stop answering before the event kept."""
    feed = feed_of(
        [
            (0, 1, True, 10, 11),  # the load balancer: one assign, long ago
            (1, 2, True, 10, 11),  # churn: 2, then 3 from 40
            (1, 2, False, 40, 41),
            (1, 3, True, 40, 41),
            (2, 4, True, 10, 11),  # re-asserted: 4, 4, 4
            (2, 4, True, 50, 51),
            (2, 4, True, 90, 91),
        ]
    )
    # address 1: the two before its last at or before 100; address 2: the middle assign
    assert feed.forget_before(100) == 3
    keys = np.array([0, 1, 1, 2, 2], np.uint64)
    moments = np.array([20, 20, 60, 20, 95], np.int64)
    owner, _, _ = feed.safe_owner(keys, moments, guard_ns=GUARD, now=NOW, lag_ns=LAG)
    assert owner.tolist() == [1, UNKNOWN, 3, 4, 4]


def test_a_late_event_inside_a_collapsed_run_closes_it() -> None:
    """Found by the property test: workload 1 re-asserted at 0, 1 and 6 collapses to its
    ends; a late assign of workload 0 at 0 then sorts after the run's first row. Without
    the middle row (1 took over at 1) that would name 0 until 6."""
    events = [(0, 0, False, 0, 0), (0, 1, True, 0, 0), (0, 1, True, 1, 0), (0, 1, True, 6, 0)]
    full, trimmed = feed_of(events), feed_of(events)
    assert trimmed.forget_before(6) == 2  # the unassign and the middle re-assertion
    late = [(0, 0, True, 0, 0)]
    add(full, late)
    add(trimmed, late)
    truth = held_throughout(full, 0, 3)
    assert truth == UNKNOWN  # 0 from 0, but 1 again from 1: nobody held 0..6
    owner, _, _ = trimmed.safe_owner(
        np.array([0], np.uint64), np.array([3], np.int64), guard_ns=GUARD, now=NOW, lag_ns=LAG
    )
    assert owner.tolist() == [UNKNOWN]


def test_a_late_row_below_the_floor_cannot_replace_the_row_at_it() -> None:
    """Found re-reading the change (two rounds): workload 0 re-asserted at 1 and 7 is kept
    by its ends, floor 1. A late assign of 0 at 0 (below the floor) must not start the run at
    the next round: the row at 1 would go, and a late assign of 1 at 0 would then answer for
    moments after the floor."""
    events = [(0, 0, False, 0, 0), (0, 0, True, 1, 0), (0, 0, True, 7, 0)]
    full, trimmed = feed_of(events), feed_of(events)
    trimmed.forget_before(7)
    add(full, [(0, 0, True, 0, 0)])
    add(trimmed, [(0, 0, True, 0, 0)])
    trimmed.forget_before(7)
    add(full, [(0, 1, True, 0, 0)])
    add(trimmed, [(0, 1, True, 0, 0)])
    assert held_throughout(full, 0, 4) == 0  # 0 held it from 1 to 7
    owner, _, _ = trimmed.safe_owner(
        np.array([0], np.uint64), np.array([4], np.int64), guard_ns=GUARD, now=NOW, lag_ns=LAG
    )
    assert owner.tolist()[0] in (UNKNOWN, 0)
