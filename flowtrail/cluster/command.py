"""`flowtrail cluster-node` (one collector node of a region) and `flowtrail cluster-events`
(publish control-plane events into a cluster). See docs/cluster.md."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from flowtrail.configfile import config_option
from flowtrail.errors import InputError
from flowtrail.opshttp import parse_listen
from flowtrail.outputs import writing
from flowtrail.units import DURATION

# The node's parts (NATS, Arrow, the engine, DuckDB) load when a command runs, not for
# `--help`.
if TYPE_CHECKING:
    import pyarrow as pa

    from flowtrail.cluster.bus import BusConfig
    from flowtrail.cluster.node import ClusterNode, NodeConfig, Sink

F = TypeVar("F", bound=Callable[..., Any])
SECTIONS = ("nats", "node")


def nats_options(f: F) -> F:
    """The connection options every cluster command shares."""
    for option in reversed(
        (
            click.option(
                "--nats",
                "servers",
                multiple=True,
                envvar="FLOWTRAIL_NATS",
                help="NATS server URL, repeatable (env FLOWTRAIL_NATS: space-separated).",
            ),
            click.option(
                "--nats-prefix",
                default="flowtrail",
                show_default=True,
                help="Subject/stream prefix, to share a NATS cluster between deployments.",
            ),
            click.option(
                "--connect-timeout",
                type=DURATION,
                default="30s",
                show_default=True,
                help="How long the first connection to NATS may take before the command fails "
                "saying why; once connected, outages are retried forever.",
            ),
            click.option(
                "--creds",
                type=click.Path(exists=True, dir_okay=False),
                envvar="FLOWTRAIL_NATS_CREDS",
                help="NATS credentials file (env FLOWTRAIL_NATS_CREDS).",
            ),
            click.option(
                "--tls-ca",
                type=click.Path(exists=True, dir_okay=False),
                envvar="FLOWTRAIL_NATS_CAFILE",
                help="CA to verify the NATS servers (env FLOWTRAIL_NATS_CAFILE).",
            ),
            click.option(
                "--tls-cert",
                type=click.Path(exists=True, dir_okay=False),
                help="Client certificate, for servers that verify clients (with --tls-key).",
            ),
            click.option(
                "--tls-key",
                type=click.Path(exists=True, dir_okay=False),
                help="The client certificate's private key (with --tls-cert).",
            ),
            click.option(
                "--regions",
                "regions_path",
                type=click.Path(exists=True, dir_okay=False),
                help="regions table (CIDR -> region; Parquet/CSV/JSONL): which region decides "
                "flows towards which addresses (rows are forwarded there); nodes create every "
                "listed region's streams.",
            ),
        )
    ):
        f = option(f)
    return f


def _bus_config(
    servers: tuple[str, ...] | list[str],
    nats_prefix: str,
    connect_timeout: int,
    creds: str | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    **extra: Any,
) -> BusConfig:
    from flowtrail.cluster.bus import BusConfig

    if not servers:
        raise click.UsageError("give --nats URL (or FLOWTRAIL_NATS, or servers in --config)")
    return BusConfig(
        servers=list(servers),
        prefix=nats_prefix,
        connect_timeout_s=connect_timeout / 1e9,
        creds_file=creds,
        tls_ca_file=tls_ca,
        tls_cert_file=tls_cert,
        tls_key_file=tls_key,
        **extra,
    )


@click.command("cluster-node")
@config_option(*SECTIONS)
@nats_options
@click.option("--region", required=True, help="This node's region.")
@click.option("--name", required=True, help="This node's name (unique in its region).")
@click.option(
    "--sink", type=click.Choice(["store", "parquet", "lake"]), default="store",
    show_default=True,
    help="store: a DuckDB file (idempotent); parquet: a directory several nodes may share; "
    "lake: the Parquet lake the nodes of a cluster share, which `flowtrail serve --lake` "
    "and `flowtrail query --lake` answer over.",
)  # fmt: skip
@click.option("--out", required=True, type=click.Path(), help="Store file or Parquet directory.")
@click.option("--replicas", type=int, default=3, show_default=True, help="Stream replicas.")
@click.option(
    "--ack-wait", type=DURATION, default="30s", show_default=True,
    help="A silent node's batches go to another node after this.",
)  # fmt: skip
@click.option(
    "--evidence-retention", type=DURATION, default="30m", show_default=True,
    help="How much evidence the streams keep: how far back a (re)starting node rebuilds.",
)  # fmt: skip
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Serve /metrics, /healthz and /readyz here (port 0: a free one) [default: off].",
)
@click.option(
    "--events/--no-events",
    default=True,
    show_default=True,
    help="Fall back to control-plane events (flowtrail cluster-events) for agent-less IPs.",
)
@click.option(
    "--carry-events", type=DURATION, default=None,
    help="Publish the control plane's assignments still standing again this often, so they "
    "outlive --evidence-retention (a node started later still knows a load balancer "
    "assigned long ago); 0: never [default: a third of --evidence-retention].",
)  # fmt: skip
@click.option(
    "--peer-slack", type=DURATION, default="10m", show_default=True,
    help="Keep learned rows for peer matching this long beyond max_wait (180s). This index "
    "sets a busy node's memory (~130 B per row kept); see docs/benchmarks.md.",
)  # fmt: skip
@click.option(
    "--clock-marks/--no-clock-marks",
    default=None,
    help="Publish a wall-clock mark every second so a quiet region still decides "
    "[default: on, off with --trust-received].",
)
@click.option(
    "--partitions", type=click.IntRange(0, 4096), default=0, show_default=True,
    help="Split the region by connection into this many partitions, each decided by one "
    "node, every node learning only compacted ownership runs (docs/cluster.md); the same "
    "on every node of a region. 0: every node learns every row of the region.",
)  # fmt: skip
@click.option(
    "--member-ttl", type=DURATION, default="10s", show_default=True,
    help="With --partitions: a node silent this long is gone and its partitions move on.",
)  # fmt: skip
@click.option("--trust-received", is_flag=True, help="Keep senders' received_ns (replays).")
@click.option("--status-file", type=click.Path(), help="Write the node's counters here (JSON).")
def cluster_node(
    region: str,
    name: str,
    regions_path: str | None,
    sink: str,
    out: str,
    replicas: int,
    ack_wait: int,
    evidence_retention: int,
    listen: str | None,
    events: bool,
    carry_events: int | None,
    peer_slack: int,
    clock_marks: bool | None,
    partitions: int,
    member_ttl: int,
    trust_received: bool,
    status_file: str | None,
    **nats: Any,
) -> None:
    """Run one collector node of a region until SIGTERM or SIGINT.

    The node takes agents' batches from its region's work stream (shared with the region's
    other nodes), forwards rows whose remote address belongs to another region, learns
    every batch of the region from the evidence stream and writes the rows it decides to
    --out. It creates the streams of every region in --regions if missing, and prints
    {"ready": "<name>/<incarnation>"} once attached.

    \b
    Examples:
      flowtrail cluster-node --nats nats://n1:4222 --nats nats://n2:4222 \\
          --region us-east --name east-1 --regions regions.parquet --out flows.duckdb
      flowtrail cluster-node --config /etc/flowtrail/node.toml --listen 0.0.0.0:9465
    """
    from flowtrail.cluster.node import NodeConfig
    from flowtrail.collector.sink import ParquetSink
    from flowtrail.engine.attributor import Settings
    from flowtrail.schema import REGIONS
    from flowtrail.store import PER_ROW, Store
    from flowtrail.store.lake import LakeSink
    from flowtrail.tables import read_table

    regions = read_table(regions_path, REGIONS) if regions_path else None
    if regions is not None and region not in regions.column("region").to_pylist():
        raise click.BadParameter(
            f"{region!r} is not a region of {regions_path}: this node would forward every "
            "row and decide none",
            param_hint="--region",
        )
    if carry_events and 2 * carry_events > evidence_retention:
        raise click.BadParameter(
            f"{carry_events / 1e9:g}s: must be at most half of --evidence-retention "
            f"({evidence_retention / 1e9:g}s), or a carried copy may age out before the next",
            param_hint="--carry-events",
        )
    bus_config = _bus_config(
        replicas=replicas,
        ack_wait_ns=ack_wait,
        evidence_retention_ns=evidence_retention,
        **nats,
    )
    node_config = NodeConfig(
        region,
        name,
        settings=Settings(use_events=events, peer_slack_ns=peer_slack),
        trust_received=trust_received,
        clock_marks=clock_marks,
        carry_events_ns=carry_events,
        partitions=partitions,
        member_ttl_ns=member_ttl,
    )
    where = parse_listen(listen, "--listen") if listen else None
    with writing("--out", out):
        target: Sink = (
            ParquetSink(out)
            if sink == "parquet"
            else LakeSink(out, f"{region}.{name}")
            if sink == "lake"
            else Store(out)
        )
    if isinstance(target, Store) and target.idempotence != PER_ROW:
        # A redelivered batch is decided again among others: only rows' keys can tell.
        target.close()
        raise InputError(
            f"--out {out}: a store idempotent per batch (made by a collector); a cluster "
            "node needs one idempotent per row: give a new file"
        )
    asyncio.run(_serve(bus_config, node_config, regions, target, status_file, where))


async def _serve(
    bus_config: BusConfig,
    node_config: NodeConfig,
    regions: pa.Table | None,
    sink: Sink,
    status_file: str | None,
    listen: tuple[str, int] | None,
) -> None:
    from flowtrail.cluster.bus import Bus
    from flowtrail.cluster.node import ClusterNode
    from flowtrail.cluster.ops import serve

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
    ops = None
    if listen is not None:
        ops = serve(node.status, lambda: node.status_age_s, lambda: not run.done(), *listen)
    try:
        # A node that fails while attaching never becomes ready: wait for either.
        attached = asyncio.create_task(node.ready.wait())
        await asyncio.wait([run, attached], return_when=asyncio.FIRST_COMPLETED)
        if not node.ready.is_set():
            attached.cancel()
            run.result()  # its error, as the node's exit
            return
        ready: dict[str, object] = {"ready": node.incarnation}
        if ops is not None:
            ready["listen"] = ops.port
        click.echo(json.dumps(ready), nl=True)
        while not run.done():
            if status_file:
                _write_status(Path(status_file), node)
            await asyncio.wait([run], timeout=0.5)
        run.result()
    finally:
        if status_file:
            _write_status(Path(status_file), node)
        if ops is not None:
            ops.stop()
        await bus.close()


def _write_status(path: Path, node: ClusterNode) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(node.status()))
    os.replace(tmp, path)


@click.command("cluster-events")
@config_option("nats", skip=("node",))
@nats_options
@click.argument("events_path", metavar="EVENTS", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--region",
    help="Where to publish when there is no --regions table (else the table decides).",
)
@click.option(
    "--batch-id",
    help="De-duplication id [default: a hash of the file's rows: publishing the same "
    "file again within the streams' duplicate window stores it once].",
)
def cluster_events(
    events_path: str, region: str | None, regions_path: str | None, batch_id: str | None,
    **nats: Any,
) -> None:  # fmt: skip
    """Publish a control-plane `events` table (IP assign/unassign) into a cluster.

    Each event goes to the region whose prefixes hold its IP (flows towards that IP are
    decided there); events about IPs in no region go to every region. Nodes apply them in
    stream order. Prints, per region, the rows published and whether JetStream dropped them
    as a re-send of the same batch id (same file again within its duplicate window, 120 s).
    The regions' streams must exist: nodes create them when they start.

    \b
    Example:
      flowtrail cluster-events lb-assignments.parquet --nats nats://n1:4222 \\
          --regions regions.parquet
    """
    from flowtrail.cluster.bus import Bus
    from flowtrail.cluster.eventfeed import publish_events
    from flowtrail.engine.regions import RegionMap
    from flowtrail.schema import EVENTS, REGIONS
    from flowtrail.tables import read_table

    events = read_table(events_path, EVENTS)
    regions = read_table(regions_path, REGIONS) if regions_path else None
    if regions is None and region is None:
        raise click.UsageError("give --regions FILE or --region NAME: where do the events go?")
    if regions is not None and region is not None:
        raise click.UsageError("give --regions FILE or --region NAME, not both")
    bus_config = _bus_config(**nats)

    async def main() -> dict[str, dict[str, int | bool]]:
        bus = Bus(bus_config)
        await bus.connect()
        try:
            targets = RegionMap(regions).names if regions is not None else [str(region)]
            await bus.require_streams(targets)
            return await publish_events(
                bus, events, RegionMap(regions), default_region=region, batch_id=batch_id
            )
        finally:
            await bus.close()

    click.echo(json.dumps(asyncio.run(main())))
