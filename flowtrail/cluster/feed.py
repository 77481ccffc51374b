"""Replay a contract flows table into a cluster, paced by received time (tests, benchmarks).

One batch per region (the exporter's `region` column) and second of received time goes to
that region's work stream, with the id `b<second>-<region>`. After each second the feeder
waits until the evidence streams hold every part of that second's batches (the batch in its
home region, `<id>><region>` for rows forwarded to another), whoever published them, so that
every node sees the seconds in order, as a single-node replay would. Counting ids rather
than messages keeps the pacing exact when a batch is published twice (a node died holding
it and another took it over). Control-plane events of a second (by received_ns, else
time_ns, as the replay reads them) go to the evidence streams before that second's flows,
as the replay applies them before the second's flows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.cluster.bus import MSG_ID, OWNER, SECOND, Bus
from flowtrail.cluster.eventfeed import publish_events
from flowtrail.cluster.node import remote_regions
from flowtrail.engine.ipkeys import IpKeys
from flowtrail.engine.regions import RegionMap

OnSecond = Callable[[int, int], Awaitable[None]]  # (index of the second, number of seconds)


async def _collect(bus: Bus, region: str, seen: set[str]) -> None:
    """Source batch ids of every evidence message of `region` (evidence id = `<id>@<node>`)."""
    sub = await bus.evidence_consumer(region)
    try:
        while True:
            msg = await sub.next_msg(timeout=None)
            headers = msg.headers or {}
            if OWNER in headers:
                seen.add(headers[MSG_ID].rsplit("@", 1)[0])
    finally:
        await sub.unsubscribe()


async def feed_paced(
    bus: Bus,
    flows: pa.Table,
    regions: pa.Table,
    *,
    events: pa.Table | None = None,
    on_second: OnSecond | None = None,
    timeout_s: float = 60.0,
) -> None:
    """Publish `flows` second by second, each second's evidence complete before the next."""
    rmap, ipkeys = RegionMap(regions), IpKeys()
    where = remote_regions(flows, rmap, ipkeys)
    home = np.array([rmap.names.index(r) for r in flows.column("region").to_pylist()])
    second = np.asarray(flows.column("received_ns")) // SECOND
    ev_second = np.empty(0, np.int64)
    if events is not None and events.num_rows:
        got = events.column("time_ns")
        if "received_ns" in events.column_names:
            got = pc.coalesce(events.column("received_ns"), got)
        ev_second = np.asarray(got) // SECOND
    seen: set[str] = set()
    readers = [asyncio.create_task(_collect(bus, name, seen)) for name in rmap.names]
    try:
        seconds = np.union1d(second, ev_second)
        for i, s in enumerate(seconds):
            if on_second is not None:
                await on_second(i, len(seconds))
            if events is not None and (ev_second == s).any():
                part = events.filter(pa.array(ev_second == s))
                await publish_events(bus, part, rmap, batch_id=f"e{s}")
            expected: set[str] = set()
            for rid, name in enumerate(rmap.names):
                mask = (second == s) & (home == rid)
                if not mask.any():
                    continue
                batch_id = f"b{s}-{name}"
                await bus.publish_batch(name, flows.filter(pa.array(mask)), batch_id)
                expected.add(batch_id)
                for other in set(np.unique(where[mask]).tolist()) - {rid, -1}:
                    expected.add(f"{batch_id}>{rmap.names[other]}")
            deadline = asyncio.get_running_loop().time() + timeout_s
            while not expected <= seen:
                for reader in readers:
                    if reader.done():
                        reader.result()  # a reader that failed fails the feed
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"second {s}: evidence of {sorted(expected - seen)} missing")
                await asyncio.sleep(0.002)
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
