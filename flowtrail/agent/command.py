"""`flowtrail agent`: capture this host's TCP connections (and the DNS answers its workloads
receive) and export named flow records (and `dns_answers` rows)."""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

import click

from flowtrail import units
from flowtrail.errors import InputError
from flowtrail.outputs import make_dir, writing
from flowtrail.stop_signals import stop_on_signals

if TYPE_CHECKING:  # Arrow loads when the agent runs, not for `--help`
    import pyarrow as pa

    from flowtrail.addressranges import Network
    from flowtrail.agent.exporter import Exporter


def parse_duration(text: str, flag: str) -> float:
    """'60s', '1m', '500ms', '2' (seconds) → seconds; InputError naming the flag otherwise."""
    try:
        seconds = units.parse_duration_ns(text) / 1e9
    except ValueError as exc:
        raise InputError(f"{flag} {exc}") from exc
    if seconds <= 0:
        raise InputError(f"{flag} {text!r}: must be more than zero")
    return seconds


def parse_size(text: str, flag: str) -> int:
    try:
        return units.parse_size(text)
    except ValueError as exc:
        raise InputError(f"{flag} {exc}") from exc


def parse_prefixes(specs: tuple[str, ...], option: str) -> list[Network]:
    """CIDR option values → networks; InputError naming the bad one."""
    out: list[Network] = []
    for spec in specs:
        try:
            out.append(ipaddress.ip_network(spec, strict=True))
        except ValueError as exc:
            raise InputError(f"{option} {spec!r}: not a prefix: {exc}") from exc
    return out


def parse_netns(specs: tuple[str, ...]) -> frozenset[int]:
    """--netns values → namespace inodes; InputError naming one that does not exist."""
    from flowtrail.agent.identity import netns_inode

    inodes = set()
    for spec in specs:
        ino = netns_inode(spec)
        if ino is None:
            raise InputError(f"--netns {spec!r}: no such network namespace")
        inodes.add(ino)
    return frozenset(inodes)


def register_network_sinks(region: str | None, ca_fingerprint: str | None = None) -> None:
    """`--sink collector` (--out https://HOST:PORT) and `--sink nats` (--out nats://HOST:PORT
    and --region R). Their modules (ssl and HTTP; nats-py and asyncio: ~15 MB resident) load
    only when one of them is chosen."""
    from flowtrail.agent.exporter import register_exporter

    def collector(target: str | None) -> Exporter:
        from flowtrail.collector.client import CollectorExporter

        return CollectorExporter.from_environment(target, ca_fingerprint)

    def nats(target: str | None) -> Exporter:
        from flowtrail.cluster.agent_sink import NatsExporter

        return NatsExporter.from_environment(target, region)

    register_exporter("collector", collector)
    register_exporter("nats", nats)


def dns_exporter(
    kind: str, target: str | None, region: str | None, ca_fingerprint: str | None
) -> Exporter:
    """Where `dns_answers` batches go for a given --sink: beside the flows (parquet: files
    `dns_answers-<batch>.parquet` in --out DIR), as their own table (collector: POST
    /v1/dns_answers; nats: the region's evidence stream, which every cluster node learns
    from). A sink that cannot take the table gets an exporter that always fails, so the
    batches are spooled and counted."""
    from flowtrail.agent.exporter import ParquetDir, Refusing, TableExporter

    if kind == "parquet" and target:
        return ParquetDir(target, prefix="dns_answers")
    if kind == "collector":
        from flowtrail.collector.client import CollectorExporter

        return TableExporter(
            CollectorExporter.from_environment(target, ca_fingerprint), "dns_answers"
        )
    if kind == "nats":
        from flowtrail.cluster.agent_sink import NatsExporter

        return TableExporter(NatsExporter.from_environment(target, region), "dns_answers")
    return Refusing(kind, "dns_answers")


HEADER = (
    f"{'TIME':<12} {'PID':>7} {'COMM':<15} {'DIR':<3} {'LADDR':<22} {'RADDR':<22} "
    f"{'TX_KB':>7} {'RX_KB':>7} {'MS':>9} {'OUTCOME':<11} {'LOCAL_WORKLOAD':<28} NAT_RADDR"
)


def _endpoint(ip: str | None, port: int | None) -> str:
    if ip is None:
        return "-"
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def human_lines(raw: pa.Table, flows: pa.Table) -> list[str]:
    """One tcplife-like line per closed connection (a view for people, not a hot path)."""
    r = raw.select(["pid", "comm"]).to_pydict()
    f = flows.to_pydict()
    lines = []
    for i in range(flows.num_rows):
        when = time.strftime("%H:%M:%S", time.gmtime(f["end_ns"][i] // 1_000_000_000))  # UTC
        when += f".{(f['end_ns'][i] // 1_000_000) % 1000:03d}"
        ms = (f["end_ns"][i] - f["start_ns"][i]) / 1e6
        nat = _endpoint(f["nat_remote_ip"][i], f["nat_remote_port"][i])
        lines.append(
            f"{when:<12} {r['pid'][i] or '-':>7} {(r['comm'][i] or '-')[:15]:<15} "
            f"{'OUT' if f['direction'][i] == 'outbound' else 'IN':<3} "
            f"{_endpoint(f['local_ip'][i], f['local_port'][i]):<22} "
            f"{_endpoint(f['remote_ip'][i], f['remote_port'][i]):<22} "
            f"{f['bytes_sent'][i] // 1024:>7} {f['bytes_received'][i] // 1024:>7} {ms:>9.2f} "
            f"{f['outcome'][i]:<11} {f['local_workload'][i] or '-':<28} {nat}"
        )
    return lines


def _printer(out: TextIO) -> Callable[[pa.Table, pa.Table], None]:
    def show(raw: pa.Table, flows: pa.Table) -> None:
        for line in human_lines(raw, flows):
            print(line, file=out)
        out.flush()

    return show


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--interval",
    default="60s",
    show_default=True,
    help="How often a batch is exported (and long-lived connections snapshotted): 60s, 1m, 500ms.",
)
@click.option(
    "--out",
    "out_dir",
    metavar="DIR",
    help="Write one Parquet file (contract `flows` table) per interval into DIR; with "
    "--sink collector, the collector's URL (https://HOST:PORT); with --sink nats, the NATS "
    "servers (nats://H1:4222,nats://H2:4222).",
)
@click.option(
    "--stdout",
    "to_stdout",
    is_flag=True,
    help="Print one line per closed connection, with workload names (like tcplife).",
)
@click.option(
    "--identity",
    "identity_file",
    metavar="FILE",
    help="TOML identity file: host identity, resolver order, explicit registrations "
    "(reloaded when it changes). See docs/agent.md.",
)
@click.option(
    "--exporter",
    "exporter_name",
    metavar="NAME",
    default=None,
    help="This agent's name in the `exporter` column and flow ids [default: the host name].",
)
@click.option(
    "--region",
    metavar="NAME",
    default=None,
    help="Value of the `region` column; with --sink nats also the region whose work stream "
    "takes the batches (required there).",
)
@click.option(
    "--resolvers",
    metavar="LIST",
    default=None,
    help="Identity resolver order, first answer wins "
    "[default: explicit,kubernetes,container,systemd,host,cgroup].",
)
@click.option(
    "--host-workload",
    metavar="NAME",
    default=None,
    help="The host's own identity, for sockets in the host network namespace "
    "(overrides `host` in the identity file) [default: host:<host name>].",
)
@click.option(
    "--k8s-names",
    type=click.Choice(["workload", "pod"]),
    default="workload",
    show_default=True,
    help="How Kubernetes pods are named: workload: k8s:<namespace>/<deployment, statefulset, "
    "daemonset, job or cronjob> (the pod goes in the local_pod column); pod: "
    "k8s:<namespace>/<pod>.",
)
@click.option(
    "--k8s-api",
    type=click.Choice(["auto", "off"]),
    default="auto",
    show_default=True,
    help="auto: when a service account is mounted (the agent runs in a pod), ask the "
    "Kubernetes API which workload owns each pod; off, or outside a cluster: read the "
    "owner from the pod's name (docs/agent.md, Kubernetes).",
)
@click.option(
    "--sink",
    default=None,
    metavar="NAME",
    help="Exporter kind: parquet (needs --out DIR), collector (--out https://HOST:PORT; token "
    "from FLOWTRAIL_COLLECTOR_TOKEN or _TOKEN_FILE, CA from FLOWTRAIL_COLLECTOR_CAFILE), nats "
    "(a cluster: --out nats://HOST:PORT[,...] and --region; credentials file from "
    "FLOWTRAIL_NATS_CREDS, CA from FLOWTRAIL_NATS_CAFILE) or none "
    "[default: parquet with --out, else none].",
)
@click.option(
    "--ca-fingerprint",
    metavar="sha256:HEX",
    default=None,
    help="With --sink collector: trust the server's own CA with this fingerprint (as "
    "`flowtrail token add` prints it) instead of a CA file [default: "
    "FLOWTRAIL_COLLECTOR_CA_FINGERPRINT].",
)
@click.option(
    "--spool",
    "spool_dir",
    metavar="DIR",
    default=None,
    help="Where undeliverable batches wait [default: DIR.spool, beside --out DIR; "
    "./flowtrail-agent.spool for collector and nats].",
)
@click.option(
    "--spool-max",
    default="256M",
    show_default=True,
    help="Spool size bound; the oldest batches are dropped (and counted) past it.",
)
@click.option(
    "--batch-rows",
    default=100_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Closed connections held past this many go out at once as a batch of their own, "
    "before the interval ends: bounds the agent's memory on a busy host (~230 bytes a row).",
)
@click.option(
    "--ringbuf",
    default="4M",
    show_default=True,
    help="BPF ring buffer size (a power of two, at least a page).",
)
@click.option(
    "--netns",
    "netns_specs",
    metavar="NS",
    multiple=True,
    help="Export only sockets in this network namespace: a name under /run/netns, a path "
    "(/proc/PID/ns/net) or an inode number; repeat for several. For one host among several on "
    "one kernel (a lab, nested setups) [default: every namespace].",
)
@click.option("--no-snapshots", is_flag=True, help="Do not emit `active` rows.")
@click.option(
    "--no-dns",
    is_flag=True,
    help="Do not capture DNS answers. By default every DNS answer (from port 53, UDP or TCP) "
    "a local socket receives, in any network namespace, is parsed into `dns_answers` rows "
    "(query name, CNAME chain, address, TTL, the receiving workload) exported beside the flows "
    "at each interval: files dns_answers-*.parquet in --out DIR, their own table for the "
    "network sinks, spooled like flows when undeliverable. See docs/dns.md.",
)
@click.option(
    "--no-listeners",
    is_flag=True,
    help="Do not emit `listening` rows (listening sockets as heartbeats for their addresses; "
    "a collector older than contract version 4 refuses them).",
)
@click.option(
    "--no-nat",
    is_flag=True,
    help="Do not resolve DNAT nor mark source-NAT addresses (not on a NAT gateway).",
)
@click.option(
    "--network",
    metavar="NAME",
    default=None,
    help="The address space this host's routable addresses belong to, when address ranges "
    "overlap between networks (two VPCs on 10.0.0.0/16): ownership is kept per network "
    "[default: the one shared by every agent without --network].",
)
@click.option(
    "--host-local",
    "host_local",
    metavar="CIDR",
    multiple=True,
    help="Addresses in this prefix exist on this host only (owned per host, never named from "
    "another host's rows); added to what the agent detects. Repeat for several.",
)
@click.option(
    "--routable",
    metavar="CIDR",
    multiple=True,
    help="Addresses in this prefix are never host-local, whatever detection says (namespaces "
    "that stand for hosts, a flat LAN without a gateway). Repeat for several.",
)
@click.option(
    "--no-scope-detection",
    is_flag=True,
    help="Mark only --host-local prefixes (and loopback, link-local) as host-local; do not "
    'read routes and NAT rules. See docs/attribution.md, "Address scopes".',
)
@click.option(
    "--api",
    "api_socket",
    metavar="PATH",
    default=None,
    help="Listen on a Unix socket (mode 0600) for run-time registrations, JSON lines; "
    "see docs/agent.md.",
)
@click.option(
    "--metrics",
    "metrics_file",
    metavar="FILE",
    default=None,
    help="Write the counters as JSON to FILE every interval and at exit.",
)
@click.option(
    "--metrics-listen",
    metavar="HOST:PORT",
    default=None,
    help="Serve the counters as Prometheus metrics at http://HOST:PORT/metrics (loopback only; "
    "port 0 picks a free one).",
)
def agent(
    interval: str,
    out_dir: str | None,
    to_stdout: bool,
    identity_file: str | None,
    exporter_name: str | None,
    region: str | None,
    resolvers: str | None,
    host_workload: str | None,
    k8s_names: str,
    k8s_api: str,
    sink: str | None,
    ca_fingerprint: str | None,
    spool_dir: str | None,
    spool_max: str,
    batch_rows: int,
    ringbuf: str,
    netns_specs: tuple[str, ...],
    no_snapshots: bool,
    no_dns: bool,
    no_listeners: bool,
    no_nat: bool,
    network: str | None,
    host_local: tuple[str, ...],
    routable: tuple[str, ...],
    no_scope_detection: bool,
    api_socket: str | None,
    metrics_file: str | None,
    metrics_listen: str | None,
) -> None:
    """Capture this host's TCP connections with eBPF and export named flow records.

    Needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN), kernel BTF, the
    sock:inet_sock_set_state tracepoint and, for DNS capture, cgroup v2. Every closed
    connection becomes a row of the contract's `flows` table with local_workload named by the
    identity resolvers (or null); connections open longer than one interval also get `active`
    snapshot rows, and listening sockets `listening` rows (heartbeats for their addresses).
    Every DNS answer a local workload receives becomes `dns_answers` rows, named the same way
    (off: --no-dns).
    Stop with Ctrl-C or SIGTERM: the last batch is flushed before exit.

    \b
    Examples:
      flowtrail agent --stdout
      flowtrail agent --out /var/lib/flowtrail/flows --interval 60s --region eu-west
      flowtrail agent --out DIR --identity /etc/flowtrail/identity.toml --resolvers explicit,host
    """
    from flowtrail.agent.capture import Capture
    from flowtrail.agent.conntrack import NatResolver
    from flowtrail.agent.exporter import Delivery, Spool, make_exporter
    from flowtrail.agent.identity import (
        DEFAULT_RESOLVERS,
        IdentityChain,
        Registry,
        default_host_workload,
        parse_resolvers,
    )
    from flowtrail.agent.kubernetes import KubeApi
    from flowtrail.agent.listeners import ListenerWatch
    from flowtrail.agent.netlink import NetnsIndex
    from flowtrail.agent.runner import Agent, AgentConfig
    from flowtrail.agent.scopes import ScopeMarker
    from flowtrail.agent.snapshots import Snapshotter

    interval_s = parse_duration(interval, "--interval")
    host_nets = parse_prefixes(host_local, "--host-local")
    routable_nets = parse_prefixes(routable, "--routable")
    if network is not None and not network.strip():
        raise InputError("--network: give a non-empty name")
    only_netns = parse_netns(netns_specs) if netns_specs else None
    if not out_dir and not to_stdout:
        raise InputError("give --out DIR (export files) and/or --stdout (print connections)")
    if ca_fingerprint is not None:
        from flowtrail.fleet.ca import parse_fingerprint

        ca_fingerprint = parse_fingerprint(ca_fingerprint)
    register_network_sinks(region, ca_fingerprint)
    kind = sink or ("parquet" if out_dir else "none")
    exporter = make_exporter(kind, out_dir)
    # nothing exported (--stdout alone): no DNS capture, its rows would only be thrown away
    dns_export = (
        None if no_dns or kind == "none" else dns_exporter(kind, out_dir, region, ca_fingerprint)
    )
    if kind == "parquet" and out_dir:
        make_dir("--out", out_dir)
    spool = dns_spool = None
    if kind != "none":
        # A URL is no place for a spool: a collector's batches wait in ./flowtrail-agent.spool.
        beside_out = f"{out_dir.rstrip('/')}.spool" if out_dir and kind == "parquet" else None
        where = spool_dir or beside_out or "flowtrail-agent.spool"
        if where:
            with writing("--spool", where):
                spool = Spool(where, parse_size(spool_max, "--spool-max"))
                if dns_export is not None:
                    # its own queue (a subdirectory the flows' spool does not read), bounded
                    # alike: DNS batches waiting never push flows out, nor flows them
                    dns_spool = Spool(f"{where}/dns_answers", parse_size(spool_max, "--spool-max"))
    registry = Registry(identity_file)
    order = parse_resolvers(resolvers) if resolvers else (registry.resolvers or None)
    identity = IdentityChain.build(
        order or DEFAULT_RESOLVERS,
        registry=registry,
        host_workload=host_workload or registry.host or default_host_workload(),
        k8s_naming=k8s_names,
        k8s_api=KubeApi.in_cluster() if k8s_api == "auto" else None,
    )
    click.echo(f"flowtrail agent: identity: {identity.describe()}", err=True)
    for warning in identity.missing_targets():
        click.echo(f"flowtrail agent: warning: {warning}", err=True)
    netns = NetnsIndex()
    api = None
    if api_socket:
        from flowtrail.agent.identity_api import RegistrationServer

        api = RegistrationServer(api_socket, registry).start()
    capture = Capture(ringbuf_bytes=parse_size(ringbuf, "--ringbuf"))
    capture.start()  # CapabilityError names what is missing
    click.echo(
        f"flowtrail agent: capture: TCP state changes from the {capture.attach_mode} "
        + ":".join(("sock", "inet_sock_set_state")),
        err=True,
    )
    if capture.fallback_reason:
        click.echo(
            "flowtrail agent: warning: the raw tracepoint was refused, the classic one skips"
            f" more state changes under load (capture_drop_recursion_miss):"
            f" {capture.fallback_reason}",
            err=True,
        )
    dns_capture = None
    if dns_export is not None:
        from flowtrail.agent.dns_capture import started_or_off

        try:
            dns_capture = started_or_off(lambda m: click.echo(f"flowtrail agent: {m}", err=True))
        except BaseException:
            capture.close()
            raise
        if dns_capture is not None:
            click.echo(
                "flowtrail agent: DNS answers from cgroup_skb/ingress on"
                f" {dns_capture.cgroup_root} (--no-dns: off)",
                err=True,
            )
    stop = threading.Event()
    stop_on_signals(stop)
    if to_stdout:
        print(HEADER, flush=True)
    delivery = Delivery(exporter, spool)
    exporter_id = exporter_name or socket.gethostname()
    dns = None
    if dns_capture is not None and dns_export is not None:
        from flowtrail.agent.dns_answers import DnsAnswers

        dns = DnsAnswers(
            dns_capture,
            Delivery(dns_export, dns_spool),
            identity,
            exporter=exporter_id,
            region=region,
            network=network,
            netns=only_netns,
            batch_rows=batch_rows,
        )
    runner = Agent(
        capture,
        AgentConfig(
            exporter=exporter_id,
            region=region,
            interval_s=interval_s,
            batch_rows=batch_rows,
            snapshots=not no_snapshots,
            netns=only_netns,
            network=network,
        ),
        identity,
        delivery,
        nat=None if no_nat else NatResolver(netns),
        snapshotter=None if no_snapshots else Snapshotter(netns),
        scopes=ScopeMarker(
            netns, host_local=host_nets, routable=routable_nets, detect=not no_scope_detection
        ),
        # Stamped on capture's clock, as the connections' rows are.
        listeners=None
        if no_listeners or capture.clock is None
        else ListenerWatch(netns, only_netns, capture.clock.now_epoch_ns),
        on_closed=_printer(sys.stdout) if to_stdout else None,
        dns=dns,
    )
    identity.refresh()
    scrape = None
    if metrics_listen:
        host, _, port = metrics_listen.rpartition(":")
        if not port.isdigit():
            raise InputError(f"--metrics-listen {metrics_listen!r}: expected HOST:PORT")
        from flowtrail.agent.prometheus import MetricsServer

        scrape = MetricsServer(runner.metrics, host.strip("[]") or "127.0.0.1", int(port))
        got = scrape.start()
        click.echo(
            f"flowtrail agent: metrics at http://{host or '127.0.0.1'}:{got}/metrics", err=True
        )
    writer = (
        threading.Thread(
            target=_write_metrics_loop, args=(runner, metrics_file, stop, interval_s), daemon=True
        )
        if metrics_file
        else None
    )
    if writer:
        writer.start()
    threading.Thread(
        target=_report_delivery, args=(delivery, stop, interval_s), daemon=True
    ).start()
    click.echo(
        f"flowtrail agent: capturing (ring buffer {capture.ringbuf_bytes >> 10} KiB), "
        f"a batch every {interval} to {kind}",
        err=True,
    )
    try:
        runner.run(stop)
    finally:
        if scrape is not None:
            scrape.stop()
        if api is not None:
            api.stop()
        summary = runner.metrics()
        capture.close()
        if dns_capture is not None:
            dns_capture.close()
        for sink_exporter in (exporter, dns_export):
            close_exporter = getattr(sink_exporter, "close", None)
            if callable(close_exporter):
                close_exporter()  # network sinks: their connection (after the last flush)
        if metrics_file:
            _write_metrics(summary, metrics_file)
        click.echo(
            "flowtrail agent: "
            + ", ".join(
                f"{k}={summary[k]}"
                for k in (
                    "captured_rows",
                    "exported_rows",
                    "active_rows",
                    "dropped_malformed_rows",
                    "dns_rows",
                )
                if k in summary
            )
            + "; capture drops: "
            + ", ".join(
                f"{k[13:]}={v}" for k, v in summary.items() if k.startswith("capture_drop_")
            )
            + (
                "; DNS drops: "
                + ", ".join(f"{k[9:]}={v}" for k, v in summary.items() if k.startswith("dns_drop_"))
                if dns is not None
                else ""
            ),
            err=True,
        )


def _write_metrics(metrics: dict[str, int], path: str) -> None:
    from pathlib import Path

    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(metrics, indent=1, sort_keys=True))
    tmp.replace(path)


def _write_metrics_loop(runner: object, path: str, stop: threading.Event, every: float) -> None:
    from flowtrail.agent.runner import Agent

    assert isinstance(runner, Agent)
    while not stop.wait(every):
        _write_metrics(runner.metrics(), path)


def _report_delivery(delivery: object, stop: threading.Event, every: float) -> None:
    """Say on stderr when exporting starts failing (with why: a revoked token, a server that
    is away) and when it works again; the batches meanwhile wait in the spool."""
    from flowtrail.agent.exporter import Delivery

    assert isinstance(delivery, Delivery)
    failures, exported, failing = 0, 0, False
    while not stop.wait(every):
        stats = dict(delivery.stats)
        if stats["export_failures"] > failures and not failing:
            failing = True
            click.echo(
                f"flowtrail agent: cannot export: {delivery.last_error}; batches wait in the "
                "spool and are retried",
                err=True,
            )
        elif failing and stats["exported_batches"] > exported:
            failing = False
            click.echo("flowtrail agent: exporting again", err=True)
        failures, exported = stats["export_failures"], stats["exported_batches"]
