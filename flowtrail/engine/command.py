"""`flowtrail attribute`: offline replay of flows through the attribution engine."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from flowtrail.outputs import make_parent, writing
from flowtrail.units import DURATION

if TYPE_CHECKING:  # the engine (numpy, numba, Arrow) loads when it runs, not for `--help`
    from flowtrail.engine.dnsnames import DnsNames
    from flowtrail.engine.replay import ReplayResult


@click.command()
@click.option(
    "--flows",
    "flows_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Flows table (Parquet, CSV or JSON Lines) per CONTRACT.md.",
)
@click.option(
    "--events",
    "events_path",
    type=click.Path(dir_okay=False),
    help="Control-plane assign/unassign events: the fallback for agent-less "
    "addresses, and all the baseline method uses.",
)
@click.option(
    "--regions",
    "regions_path",
    type=click.Path(dir_okay=False),
    help="Prefix → region table; the summary counts flows each region hands to another.",
)
@click.option(
    "--dns",
    "dns_path",
    type=click.Path(dir_okay=False),
    help="DNS answers workloads received (the dns_answers table): names remote addresses "
    "as remote_dns, beside remote_workload (docs/dns.md).",
)
@click.option(
    "--dns-grace",
    type=DURATION,
    default="30s",
    show_default=True,
    help="How long past its TTL a DNS answer still names its address.",
)
@click.option(
    "--method",
    type=click.Choice(["heartbeat", "event"]),
    default="heartbeat",
    show_default=True,
    help="heartbeat: ownership time ranges from agents' own flows (flowtrail). "
    "event: whoever the event feed says owns the address when the flow "
    "arrives (the baseline flowtrail replaces).",
)
@click.option(
    "--max-wait",
    type=DURATION,
    default="180s",
    show_default=True,
    help="How long (collector clock) a flow waits for heartbeats before the "
    "event fallback or unattributed.",
)
@click.option(
    "--max-skew",
    type=DURATION,
    default="100ms",
    show_default=True,
    help="Worst clock error of any one host; lookups keep twice this away from "
    "every change of owner.",
)
@click.option(
    "--event-lag",
    type=DURATION,
    default="20m",
    show_default=True,
    help="The event feed is trusted to be complete up to now minus this.",
)
@click.option(
    "--retention",
    type=DURATION,
    default="1h",
    show_default=True,
    help="Ownership ranges that ended longer ago than this (collector clock) are forgotten; "
    "bounds memory. Must exceed --max-wait plus the lateness of the latest rows.",
)
@click.option(
    "--tick",
    type=DURATION,
    default="1s",
    show_default=True,
    help="Replay step of the collector clock.",
)
@click.option(
    "--region",
    "default_region",
    default=None,
    help="Region of rows whose region column is empty (the collector's own).",
)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to write the attributed flows (Parquet, written atomically).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def attribute(
    flows_path: str,
    events_path: str | None,
    regions_path: str | None,
    dns_path: str | None,
    dns_grace: int,
    method: str,
    max_wait: int,
    max_skew: int,
    event_lag: int,
    retention: int,
    tick: int,
    default_region: str | None,
    out_path: str,
    as_json: bool,
    quiet: bool,
) -> None:
    """Name the remote workload of every flow, replaying rows in received_ns order.

    Writes every input row once, unchanged, plus remote_workload, remote_source,
    attributed_ns, unattributed_reason and remote_dns (docs/contract.md), then prints a
    summary. A wrong remote_workload is a defect; null is an honest "don't know".
    """
    if tick <= 0:
        raise click.BadParameter("must be positive", param_hint="--tick")
    from concurrent.futures import ThreadPoolExecutor

    from flowtrail.schema import EVENTS, FLOWS, FLOWS_REPEATING_TEXT, REGIONS
    from flowtrail.tables import read_table, write_table

    out = make_parent("--out", out_path)
    with ThreadPoolExecutor(1) as pool:  # Parquet decodes without the GIL: the engine loads
        reading = pool.submit(read_table, flows_path, FLOWS, dictionaries=FLOWS_REPEATING_TEXT)
        from flowtrail.engine.attributor import Settings
        from flowtrail.engine.replay import replay, stderr_progress

        flows = reading.result()
    return_freed_memory()
    events = read_table(events_path, EVENTS) if events_path else None
    regions = read_table(regions_path, REGIONS) if regions_path else None
    dns = read_dns(dns_path, dns_grace) if dns_path else None
    if retention <= max_wait:
        raise click.BadParameter("must be longer than --max-wait", param_hint="--retention")
    settings = Settings(
        method=method,
        max_wait_ns=max_wait,
        max_skew_ns=max_skew,
        event_lag_ns=event_lag,
        retention_ns=retention,
    )
    result = replay(
        flows, events, regions, settings=settings, tick_ns=tick, default_region=default_region,
        progress=None if quiet else stderr_progress, flows_path=flows_path,
        events_path=events_path, dns=dns,
    )  # fmt: skip
    return_freed_memory()
    with writing("--out", out):
        write_table(result.table, out)
    click.echo(json.dumps(result.summary, indent=2) if as_json else format_summary(result))


def read_dns(path: str, grace_ns: int) -> DnsNames:
    """The answers of a dns_answers file, checked (a bad row is a ContractError naming the
    file, the row and the column) and indexed."""
    from flowtrail.engine.dnsnames import DnsNames, check_answers
    from flowtrail.engine.replay import check_clock_range
    from flowtrail.schema import DNS_ANSWERS
    from flowtrail.tables import read_table

    answers = read_table(path, DNS_ANSWERS)
    check_answers(answers, path)
    check_clock_range(answers, ("observed_ns",), path)
    dns = DnsNames(grace_ns)
    dns.add(answers)
    return dns


def return_freed_memory() -> None:
    """Hand what the last step freed back to the system. Arrow and numpy allocate through
    different allocators, and each keeps what it freed for itself: without this, the peak
    would be the sum of the steps' peaks, not the largest."""
    import contextlib
    import ctypes

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # glibc's; elsewhere nothing to do
        ctypes.CDLL(None).malloc_trim(0)


def format_summary(result: ReplayResult) -> str:
    s = result.summary
    rows = max(s["rows"], 1)

    def pct(x: int) -> str:
        return f"{x:>10,}  {100 * x / rows:6.2f}%"

    lines = [
        f"method            {s['method']}",
        f"rows              {s['rows']:>10,}",
        f"heartbeat         {pct(s['heartbeat'])}"
        f"   (peer row {s['heartbeat_via_peer_row']:,}, ranges {s['heartbeat_via_ranges']:,})",
        f"event             {pct(s['event'])}",
        f"unattributed      {pct(s['unattributed'])}",
    ]
    for reason, count in s["unattributed_by_reason"].items():
        lines.append(f"  {reason:<16}{count:>10,}")
    if "dns" in s:
        d = s["dns"]
        lines.append(
            f"dns names         {d['named_flows']:>10,} flows ({d['named_unattributed']:,} of "
            f"them unattributed), from {d['answers']:,} answers"
        )
    lines += [
        f"waited            {s['flows_that_waited']:>10,} flows; decided after "
        f"p50 {s['wait_seconds_p50']:.1f}s, p99 {s['wait_seconds_p99']:.1f}s, "
        f"max {s['wait_seconds_max']:.1f}s",
        f"ownership         {s['ownership_segments']:,} ranges over "
        f"{s['ownership_addresses']:,} addresses",
        f"time              {s['seconds']:.2f}s ({s['cpu_seconds']:.2f}s CPU)",
    ]
    regions = s.get("regions") or {}
    for pair, count in regions.get("handed_to_other_region", {}).items():
        lines.append(f"handed over       {count:>10,}  {pair}")
    if regions.get("remote_in_no_region"):
        lines.append(f"remote in no region {regions['remote_in_no_region']:,}")
    return "\n".join(lines)
