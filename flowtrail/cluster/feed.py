"""Replay a contract flows table into a cluster, paced by received time (tests, benchmarks).

One batch per region (the exporter's `region` column) and second of received time goes to
that region's work stream. After each second the feeder waits until the evidence streams
hold that second's messages (one in the home region, one more in each region rows were
forwarded to), so every node sees the seconds in order, as a single-node replay would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np
import pyarrow as pa

from flowtrail.cluster.bus import SECOND, Bus
from flowtrail.cluster.node import remote_regions
from flowtrail.engine.ipkeys import IpKeys
from flowtrail.engine.regions import RegionMap

OnSecond = Callable[[int, int], Awaitable[None]]  # (index of the second, number of seconds)


async def evidence_counts(bus: Bus, names: list[str]) -> dict[str, int]:
    out = {}
    for name in names:
        info = await bus.js.stream_info(bus.evidence_stream(name))
        out[name] = int(info.state.messages)
    return out


async def feed_paced(
    bus: Bus,
    flows: pa.Table,
    regions: pa.Table,
    *,
    on_second: OnSecond | None = None,
    exact: bool = True,
) -> None:
    """Publish `flows` second by second; exact=False tolerates extra evidence (redeliveries)."""
    rmap, ipkeys = RegionMap(regions), IpKeys()
    where = remote_regions(flows, rmap, ipkeys)
    home = np.array([rmap.names.index(r) for r in flows.column("region").to_pylist()])
    second = np.asarray(flows.column("received_ns")) // SECOND
    base = await evidence_counts(bus, rmap.names)
    expected = dict(base)
    seconds = np.unique(second)
    for i, s in enumerate(seconds):
        if on_second is not None:
            await on_second(i, len(seconds))
        for rid, name in enumerate(rmap.names):
            mask = (second == s) & (home == rid)
            if not mask.any():
                continue
            await bus.publish_batch(name, flows.filter(pa.array(mask)), f"b{s}-{name}")
            expected[name] += 1
            for other in set(np.unique(where[mask]).tolist()) - {rid, -1}:
                expected[rmap.names[other]] += 1
        while True:
            counts = await evidence_counts(bus, rmap.names)
            if exact and any(counts[k] > expected[k] for k in counts):
                raise AssertionError(f"more evidence than batches: {counts} > {expected}")
            if all(counts[k] >= expected[k] for k in counts):
                break
