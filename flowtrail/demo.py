"""`flowtrail demo`: simulate fleets, attribute them both ways, compare against the truth.

This is flowtrail's main job on its embedded defaults until the agent and collector run as
one system: it shows, on identical data, what heartbeat-derived ownership ranges get right
and what the event-based baseline gets wrong.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from flowtrail.outputs import make_dir, writing
from flowtrail.sim.scenarios import SCENARIOS

# The engine, evaluation and simulation (numpy, numba, polars, Arrow) load when the demo
# runs, not for `--help`.
if TYPE_CHECKING:
    import pyarrow as pa

    from flowtrail.engine.attributor import Settings
    from flowtrail.evaluate import EvalReport
    from flowtrail.sim.simulation import SimOutput

METHOD_NAMES = ("heartbeat", "plain heartbeat", "event")


def methods() -> dict[str, Settings]:
    """The ways the demo attributes, by name (METHOD_NAMES)."""
    from flowtrail.engine.attributor import Settings

    return {
        # flowtrail: peer rows, skew-guarded ranges, event ranges behind the feed's watermark.
        "heartbeat": Settings(),
        # The obvious heartbeat design: ranges looked up at the start instant, no peer rows, no
        # skew guard, event ranges taken as soon as the wait is over.
        "plain heartbeat": Settings(use_peers=False, max_skew_ns=0, event_lag_ns=0),
        # The design Netflix abandoned: who the event feed says owns the address on arrival.
        "event": Settings(method="event"),
    }


def compare(sim: SimOutput) -> dict[str, Any]:
    """Attribute one simulated fleet every way; returns the reports and replay summaries."""
    return compare_tables(sim.flows, sim.events, sim.regions, sim.truth)


def compare_tables(
    flows: pa.Table, events: pa.Table, regions: pa.Table, truth: pa.Table
) -> dict[str, Any]:
    """Attribute the same flows every way and judge each against the truth."""
    from flowtrail.engine.replay import replay
    from flowtrail.evaluate import evaluate

    reports: dict[str, EvalReport] = {}
    summaries: dict[str, dict[str, Any]] = {}
    tables = {}
    for name, settings in methods().items():
        result = replay(flows, events, regions, settings=settings)
        reports[name] = evaluate(result.table, truth)
        summaries[name] = result.summary
        tables[name] = result.table
    return {"reports": reports, "summaries": summaries, "tables": tables}


@click.command()
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=click.Choice(sorted(SCENARIOS)),
    help="Scenario(s) to run; repeat the option for several. Default: all of them.",
)
@click.option("--seed", default=0, show_default=True, help="Simulator seed.")
@click.option(
    "--flows",
    type=click.IntRange(min=1),
    default=None,
    help="Approximate flow rows per scenario (default: each scenario's own size).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Keep each scenario's inputs and both attributed outputs here (default: discard).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option(
    "--kernel",
    is_flag=True,
    help="Instead of the simulator, run a small fleet on this kernel (root): network "
    "namespaces, a bridge, cgroups, nftables, one real agent per host; see docs/evaluation.md.",
)
@click.option(
    "--duration",
    default="2m",
    show_default=True,
    help="--kernel: how long the fleet runs (30s, 5m).",
)
@click.option(
    "--hosts", type=click.IntRange(2, 16), default=3, show_default=True, help="--kernel: hosts."
)
@click.option(
    "--workloads",
    type=click.IntRange(3, 100),
    default=12,
    show_default=True,
    help="--kernel: workloads (addresses) alive at once.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.5, max=500),
    default=20.0,
    show_default=True,
    help="--kernel: connection attempts a second, the whole fleet.",
)
@click.option(
    "--churn",
    default="4s",
    show_default=True,
    help="--kernel: an address is handed to a new workload this often.",
)
def demo(
    scenarios: tuple[str, ...],
    seed: int,
    flows: int | None,
    out_dir: str | None,
    as_json: bool,
    kernel: bool,
    duration: str,
    hosts: int,
    workloads: int,
    rate: float,
    churn: str,
) -> None:
    """Simulate a fleet, attribute it three ways, and print how each did against the truth.

    For each scenario (calm to hostile) the simulator writes what agents and the control
    plane would report, plus the truth. The same rows are attributed by flowtrail's heartbeat
    method, by the obvious heartbeat design (ranges looked up at the start instant, no peer
    rows, no skew guard) and by the event-based baseline (whoever the feed says owns the
    address when the flow arrives); the evaluator counts misattributed flows and false
    dependency edges.

    With --kernel (root) the flows are real: a fleet of network namespaces on a bridge,
    workloads in cgroups handing addresses to each other within seconds (also across hosts),
    an agent-less load balancer named only by a (partly late) event feed, lossy handshakes
    and refused attempts; one `flowtrail agent --netns` per host captures it.
    """
    if kernel:
        from flowtrail.agent.command import parse_duration
        from flowtrail.lab.kernel_demo import KernelRun

        run = KernelRun(
            duration_s=parse_duration(duration, "--duration"),
            hosts=hosts,
            slots=workloads,
            rate=rate,
            churn_s=max(parse_duration(churn, "--churn"), 1.5),
            seed=seed,
        )
        _kernel_demo(run, out_dir, as_json)
        return
    from flowtrail.evaluate import format_side_by_side
    from flowtrail.sim.simulation import simulate, write_sim
    from flowtrail.tables import write_table

    chosen = scenarios or tuple(sorted(SCENARIOS, key=_harshness))
    if out_dir:
        make_dir("--out", out_dir)
    results: dict[str, Any] = {}
    for name in chosen:
        print(f"demo: {name}: simulating", file=sys.stderr, flush=True)
        sim = simulate(name, seed, None, **({"flows": flows} if flows else {}))
        print(
            f"demo: {name}: {sim.flows.num_rows:,} flows; attributing {len(METHOD_NAMES)} ways",
            file=sys.stderr,
            flush=True,
        )
        got = compare(sim)
        if out_dir:
            where = Path(out_dir) / name
            with writing("--out", out_dir):
                write_sim(sim, where)
                for method, table in got["tables"].items():
                    slug = method.replace(" ", "-")
                    write_table(table, where / f"attributed-{slug}.parquet")
        results[name] = got
    if as_json:
        click.echo(
            json.dumps(
                {
                    name: {
                        m: {"eval": r["reports"][m].to_dict(), "replay": r["summaries"][m]}
                        for m in METHOD_NAMES
                    }
                    for name, r in results.items()
                },
                indent=2,
            )
        )
        return
    for name, r in results.items():
        click.echo(f"\n== scenario {name} ({r['summaries']['heartbeat']['rows']:,} flows)")
        click.echo(format_side_by_side(r["reports"]))
    if out_dir is None:
        return
    click.echo(f"\ninputs and outputs kept under {out_dir}")


def _kernel_demo(run: Any, out_dir: str | None, as_json: bool) -> None:
    from flowtrail.errors import CapabilityError
    from flowtrail.evaluate import format_side_by_side
    from flowtrail.lab.kernel_demo import KINDS, by_kind, counted_once, run_lab, say
    from flowtrail.lab.netns import LabError
    from flowtrail.tables import write_table

    if out_dir:
        make_dir("--out", out_dir)
    try:
        got = run_lab(run, out_dir)
    except LabError as exc:  # a command or an agent that could not run here: say which
        raise CapabilityError(f"demo --kernel: {exc}") from exc
    captured = got["flows"].num_rows - got["listening_rows"]
    say(
        f"{captured:,} captured rows and {got['listening_rows']:,} listeners' rows; "
        f"attributing {len(METHOD_NAMES)} ways"
    )
    result = compare_tables(got["flows"], got["events"], got["regions"], got["truth"])
    once = counted_once(got["attempts"], got["flows"])
    kinds = {m: by_kind(t, got["truth"], got["gateway_ip"]) for m, t in result["tables"].items()}
    if out_dir:
        where = Path(out_dir)
        with writing("--out", out_dir):
            for method, table in result["tables"].items():
                write_table(table, where / f"attributed-{method.replace(' ', '-')}.parquet")
    if as_json:
        click.echo(
            json.dumps(
                {
                    "lab": {
                        **once,
                        "capture_drops": got["capture_drops"],
                        "listening_rows": got["listening_rows"],
                        "handovers": got["handovers"],
                        "across_hosts": got["across_hosts"],
                    },
                    **{
                        m: {
                            "eval": result["reports"][m].to_dict(),
                            "replay": result["summaries"][m],
                        }
                        for m in METHOD_NAMES
                    },
                },
                indent=2,
            )
        )
        return
    click.echo(
        f"\n== kernel lab ({captured:,} captured rows, {got['listening_rows']:,} listeners' rows;"
        f" {once['attempts']:,} attempts:"
        f" {once['established']:,} established, {once['refused']:,} refused, {once['failed']:,}"
        f" failed; {got['handovers']} address handovers, {got['across_hosts']} across hosts)"
    )
    click.echo(format_side_by_side(result["reports"]))
    for kind in KINDS:
        parts = []
        for m in METHOD_NAMES:
            f = kinds[m][kind].flows
            parts.append(
                f"{m} {f.misattributed:,} wrong, {f.unattributed:,} unattributed"
                f" ({_pct(f.unattributed, f.owned)})"
            )
        click.echo(f"{kind} ({kinds['heartbeat'][kind].flows.rows:,} rows): " + "; ".join(parts))
    drops = got["capture_drops"]
    click.echo(
        f"\ncaptured once: client ends missing {once['client_ends_missing']}, extra "
        f"{once['client_ends_extra']} of {once['attempts']:,}; server ends missing "
        f"{once['server_ends_missing']}, extra {once['server_ends_extra']} of "
        f"{once['server_ends_expected']:,}; losses the agents counted: "
        + (", ".join(f"{k}={v}" for k, v in sorted(drops.items())) or "none")
    )
    if out_dir:
        click.echo(f"\ninputs and outputs kept under {out_dir}")


def _pct(part: int, whole: int) -> str:
    return "-" if whole == 0 else f"{100 * part / whole:.3g}% of owned"


def _harshness(name: str) -> int:
    order = ["calm", "churny", "hostile", "reuse-storm"]
    return order.index(name) if name in order else len(order)
