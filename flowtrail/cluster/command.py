"""`python -m flowtrail.cluster`: run one cluster-mode collector node (docs/cluster.md).

Not yet registered in the `flowtrail` group (flowtrail/commands.py belongs to another part).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import click
import pyarrow as pa

from flowtrail.cluster.bus import Bus, BusConfig
from flowtrail.cluster.node import ClusterNode, NodeConfig, Sink
from flowtrail.collector.sink import ParquetSink
from flowtrail.engine.attributor import Settings
from flowtrail.schema import REGIONS
from flowtrail.store import Store
from flowtrail.tables import read_table
from flowtrail.units import DURATION


@click.command("cluster-node")
@click.option("--nats", "servers", multiple=True, required=True, help="NATS URL (repeatable).")
@click.option("--region", required=True, help="This node's region.")
@click.option("--name", required=True, help="This node's name (unique in its region).")
@click.option(
    "--regions",
    "regions_path",
    type=click.Path(exists=True, dir_okay=False),
    help="regions table (CIDR -> region); without it nothing is forwarded.",
)
@click.option("--sink", type=click.Choice(["store", "parquet"]), default="store", show_default=True)
@click.option("--out", required=True, type=click.Path(), help="Store file or Parquet directory.")
@click.option("--replicas", type=int, default=3, show_default=True, help="Stream replicas.")
@click.option("--ack-wait", type=DURATION, default="30s", show_default=True)
@click.option("--creds", type=click.Path(exists=True, dir_okay=False), help="NATS creds file.")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), help="CA for NATS TLS.")
@click.option("--trust-received", is_flag=True, help="Keep senders' received_ns (replays).")
@click.option("--status-file", type=click.Path(), help="Write the node's counters here (JSON).")
def cluster_node(
    servers: tuple[str, ...],
    region: str,
    name: str,
    regions_path: str | None,
    sink: str,
    out: str,
    replicas: int,
    ack_wait: int,
    creds: str | None,
    tls_ca: str | None,
    trust_received: bool,
    status_file: str | None,
) -> None:
    """Run one collector node of a region until SIGTERM or SIGINT."""
    regions = read_table(regions_path, REGIONS) if regions_path else None
    bus_config = BusConfig(
        servers=list(servers),
        replicas=replicas,
        ack_wait_ns=ack_wait,
        creds_file=creds,
        tls_ca_file=tls_ca,
    )
    # No control-plane events travel over the bus yet: heartbeats only.
    node_config = NodeConfig(
        region, name, settings=Settings(use_events=False), trust_received=trust_received
    )
    target: Sink = ParquetSink(out) if sink == "parquet" else Store(out)
    asyncio.run(_serve(bus_config, node_config, regions, target, status_file))


async def _serve(
    bus_config: BusConfig,
    node_config: NodeConfig,
    regions: pa.Table | None,
    sink: Sink,
    status_file: str | None,
) -> None:
    bus = Bus(bus_config)
    await bus.connect()
    listed = regions.column("region").to_pylist() if regions is not None else []
    await bus.ensure_streams(sorted({node_config.region, *listed}))
    node = ClusterNode(bus, node_config, regions, sink)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    run = asyncio.create_task(node.run(stop))
    await node.ready.wait()
    click.echo(json.dumps({"ready": node.incarnation}), nl=True)
    try:
        while not run.done():
            if status_file:
                _write_status(Path(status_file), node)
            await asyncio.wait([run], timeout=0.5)
        run.result()
    finally:
        if status_file:
            _write_status(Path(status_file), node)
        await bus.close()


def _write_status(path: Path, node: ClusterNode) -> None:
    status = {"incarnation": node.incarnation, "held": node.held, "waiting": node.waiting}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({**status, **node.stats}))
    os.replace(tmp, path)
