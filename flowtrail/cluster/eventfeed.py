"""The control plane's IP assignment events, into a cluster.

An event about address X matters to the region that decides flows towards X: the region
whose prefixes hold X (flows towards X are forwarded there). Flows towards addresses in no
region are decided wherever they arrived, so events about such addresses go to every region.
Events travel on the regions' evidence streams, which every node reads in one order.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from flowtrail.cluster.bus import Bus, encode
from flowtrail.engine.ipkeys import IpKeys
from flowtrail.engine.regions import RegionMap


def split_by_region(events: pa.Table, rmap: RegionMap) -> list[tuple[str, pa.Table]]:
    """(region, its events) for every region with any; events in no region go to all."""
    ipkeys = IpKeys()
    where = rmap.lookup(ipkeys.keys(events.column("ip")), ipkeys)
    parts = []
    for rid, name in enumerate(rmap.names):
        mask = (where == rid) | (where < 0)
        if mask.any():
            parts.append((name, events.filter(pa.array(mask))))
    return parts


def content_id(table: pa.Table) -> str:
    """A batch id from the table's bytes: re-publishing the same events is deduplicated."""
    return hashlib.sha256(encode(table)).hexdigest()[:32]


async def publish_events(
    bus: Bus,
    events: pa.Table,
    rmap: RegionMap,
    *,
    default_region: str | None = None,
    batch_id: str | None = None,
) -> dict[str, dict[str, int | bool]]:
    """Publish an events table to the regions it concerns: per region, the rows and whether
    JetStream dropped the message as a re-send (same id within its duplicate window).

    With no regions table (rmap without names), everything goes to `default_region`.
    """
    if events.num_rows == 0:
        return {}
    if rmap.names:
        parts = split_by_region(events, rmap)
    elif default_region is not None:
        parts = [(default_region, events)]
    else:
        raise ValueError("no regions table and no default region: nowhere to publish events")
    base = batch_id or f"events-{content_id(events)}"
    sent: dict[str, dict[str, int | bool]] = {}
    for region, part in parts:
        ack = await bus.publish_events(region, part, f"{base}>{region}")
        sent[region] = {"rows": part.num_rows, "duplicate": bool(ack.duplicate)}
    return sent
