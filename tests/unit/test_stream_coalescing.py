"""A live collector's engine decides the same however a tick's input is batched and read.

The collector lets the batches of a tick wait unread and converts them at once
(`coalesce_rows`), and shapes one tick's results at once before cutting them per batch.
Decisions must not depend on that: on seeded random inputs built to collide (see
test_batch_schedule.random_input), at each input's tick length, batches cut at random
inside each tick and read at once, in groups, or when the tick comes give exactly the
streaming replay's table. (Decisions do depend on the tick length itself: a flow decided at
a later tick has heard more evidence; so each case is compared at its own tick length.)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.engine.replay import received_times, replay
from flowtrail.engine.stream import StreamingAttribution
from tests.unit.test_batch_schedule import random_input

COLUMNS = ("remote_workload", "remote_source", "attributed_ns", "unattributed_reason")


def live(
    flows: pa.Table, events: pa.Table, settings: object, tick: int, coalesce: int, seed: int
) -> pa.Table:
    """The rows decided by a live engine fed `flows` tick by tick, each tick's rows in
    random batches (in received order, as the replay takes them)."""
    rng = np.random.default_rng(seed)
    eng = StreamingAttribution(settings, coalesce_rows=coalesce)  # type: ignore[arg-type]
    received = received_times(flows)
    ev_recv = np.asarray(
        pc.coalesce(events.column("received_ns"), events.column("time_ns")).to_numpy()
    )
    # The replay's receive times (end + 60 s where null), not the collector's clock.
    at = flows.column_names.index("received_ns")
    flows = flows.set_column(at, "received_ns", pa.array(received))
    order = np.argsort(received, kind="stable")
    out: list[pa.Table] = []
    ticks = np.union1d(received // tick, ev_recv // tick)
    for t in ticks:
        now = int(t + 1) * tick - 1
        # The quiet ticks where waits run out before this one, as the replay ticks them
        # (Attributor.run_until).
        while (due := _next_deadline(eng)) is not None and due < t * tick:
            out.extend(eng.tick(min((due // tick + 1) * tick - 1, int(t) * tick - 1)))
        ev = (ev_recv // tick) == t
        if ev.any():
            eng.submit_events(events.filter(pa.array(ev)), now)
        idx = order[(received[order] // tick) == t]
        if len(idx) == 0:
            out.extend(eng.tick(now))
            continue
        cuts = np.sort(rng.choice(np.arange(1, len(idx) + 1), min(len(idx), 3), replace=False))
        for part in np.split(idx, cuts[cuts < len(idx)]):
            batch = flows.take(pa.array(part))
            eng.submit_flows(batch, now)
        out.extend(eng.tick(now))
    while (due := _next_deadline(eng)) is not None:
        out.extend(eng.tick((due // tick + 1) * tick - 1))
    return pa.concat_tables(out)


def _next_deadline(eng: StreamingAttribution) -> int | None:
    eng.read()
    return eng.engine.next_deadline()


def test_batching_and_reading_never_change_a_decision() -> None:
    for seed in range(5):
        flows, events, settings, tick = random_input(seed)
        flows = flows.append_column("pos", pa.array(np.arange(flows.num_rows)))
        want = replay(flows, events, settings=settings, tick_ns=tick, schedule="stream").table
        for coalesce in (0, 50, 1 << 16):
            got = live(flows, events, settings, tick, coalesce, seed).sort_by("pos")
            got = got.filter(pc.is_in(got.column("pos"), want.column("pos")))  # listeners
            assert got.column("pos").equals(want.column("pos")), f"seed {seed}"
            for name in COLUMNS:
                x, y = got.column(name).to_pylist(), want.column(name).to_pylist()
                diff = [i for i in range(len(x)) if x[i] != y[i]]
                assert not diff, f"seed {seed} coalesce {coalesce} {name}: rows {diff[:5]}"
