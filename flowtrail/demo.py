"""`flowtrail demo`: simulate fleets, attribute them both ways, compare against the truth.

This is flowtrail's main job on its embedded defaults until the agent and collector run as
one system: it shows, on identical data, what heartbeat-derived ownership ranges get right
and what the event-based baseline gets wrong.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from flowtrail.engine.attributor import Settings
from flowtrail.engine.replay import replay
from flowtrail.evaluate import EvalReport, evaluate, format_side_by_side
from flowtrail.outputs import make_dir, writing
from flowtrail.sim.scenarios import SCENARIOS
from flowtrail.sim.simulation import SimOutput, simulate, write_sim
from flowtrail.tables import write_table

METHODS: dict[str, Settings] = {
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
    reports: dict[str, EvalReport] = {}
    summaries: dict[str, dict[str, Any]] = {}
    tables = {}
    for name, settings in METHODS.items():
        result = replay(sim.flows, sim.events, sim.regions, settings=settings)
        reports[name] = evaluate(result.table, sim.truth)
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
def demo(
    scenarios: tuple[str, ...], seed: int, flows: int | None, out_dir: str | None, as_json: bool
) -> None:
    """Simulate a fleet, attribute it three ways, and print how each did against the truth.

    For each scenario (calm to hostile) the simulator writes what agents and the control
    plane would report, plus the truth. The same rows are attributed by flowtrail's heartbeat
    method, by the obvious heartbeat design (ranges looked up at the start instant, no peer
    rows, no skew guard) and by the event-based baseline (whoever the feed says owns the
    address when the flow arrives); the evaluator counts misattributed flows and false
    dependency edges.
    """
    chosen = scenarios or tuple(sorted(SCENARIOS, key=_harshness))
    if out_dir:
        make_dir("--out", out_dir)
    results: dict[str, Any] = {}
    for name in chosen:
        print(f"demo: {name}: simulating", file=sys.stderr, flush=True)
        sim = simulate(name, seed, None, **({"flows": flows} if flows else {}))
        print(
            f"demo: {name}: {sim.flows.num_rows:,} flows; attributing {len(METHODS)} ways",
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
                        for m in METHODS
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


def _harshness(name: str) -> int:
    order = ["calm", "churny", "hostile", "reuse-storm"]
    return order.index(name) if name in order else len(order)
