"""`flowtrail sim`: write a simulated fleet's flows, events, regions and truth."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from flowtrail.errors import InputError
from flowtrail.outputs import make_dir, writing
from flowtrail.sim.scenarios import (
    DEFAULT_SCENARIO,
    KNOBS,
    SCENARIO_NOTES,
    SCENARIOS,
    Knob,
    parse_seconds,
)

if TYPE_CHECKING:  # the simulation (numpy, Arrow) loads when it runs, not for `--help`
    from flowtrail.sim.simulation import SimOutput


def _knob_help(knob: Knob) -> str:
    by_scenario = "/".join(f"{getattr(s, knob.name):g}" for s in SCENARIOS.values())
    return f"{knob.help} [{'/'.join(SCENARIOS)}: {by_scenario}]"


def _scenario_list() -> str:
    lines = []
    for name in SCENARIOS:
        first, *rest = SCENARIO_NOTES[name].split("\n")
        lines.append(f"  {name:<12} {first}")
        lines += [f"  {'':<12} {more}" for more in rest]
    return "\n".join(lines)


def _with_knob_options(f: Any) -> Any:
    # One option per knob, in declaration order; None means "the scenario's value".
    for knob in reversed(KNOBS):
        kind: Any = str if knob.name == "duration" else knob.kind
        f = click.option(
            knob.flag,
            knob.name,
            type=kind,
            default=None,
            help=_knob_help(knob),
            metavar=knob.metavar,
        )(f)
    return f


@click.command(
    "sim",
    epilog="\b\nScenarios (knob values are shown in each option's help, in this order):\n"
    + _scenario_list(),
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="directory for flows/events/regions/truth .parquet and scenario.json",
)
@click.option(
    "--scenario",
    "scenario_name",
    default=DEFAULT_SCENARIO,
    show_default=True,
    help=f"named preset: {', '.join(SCENARIOS)}",
)
@click.option("--seed", type=int, default=0, show_default=True, help="same seed, same files")
@click.option("--quiet", "-q", is_flag=True, help="no progress or summary on stderr")
@_with_knob_options
def sim(out: Path, scenario_name: str, seed: int, quiet: bool, **knobs: Any) -> None:
    """Simulate a two-region fleet whose instances churn and reuse addresses, with agents,
    load balancers, DNAT VIPs and a control-plane event feed; write what the agents and the
    control plane would report beside the truth (who owned each address when).

    Every knob defaults to the scenario's value. Flow rows carry two extra columns:
    sim_true_start_ns (the unskewed start; evaluate truth there) and sim_conn_id (shared by
    the two ends of one TCP connection). Deterministic for a given seed and knobs.
    """
    if knobs.get("duration") is not None:
        knobs["duration"] = parse_seconds(knobs["duration"], "--duration")
    if seed < 0:
        raise InputError(f"--seed: must not be negative, got {seed}")
    say = None if quiet else (lambda msg: click.echo(f"sim: {msg}", err=True))
    make_dir("--out", out)
    from flowtrail.sim.simulation import simulate, write_sim

    output = simulate(scenario_name, seed, progress=say, **knobs)
    with writing("--out", out):
        paths = write_sim(output, out)
    if not quiet:
        click.echo(_summary(output, paths["flows"].parent), err=True)


def _summary(o: SimOutput, out: Path) -> str:
    s = o.stats
    rows, fr, ev, reuse = s["rows"], s["flow_rows"], s["events"], s["address_reuse"]
    gap = reuse["gap_p50_s"]
    gap_text = "n/a" if gap is None else f"{gap:.1f} s"
    lines = [
        f"sim: scenario {o.config.name}, seed {o.seed}, {s['seconds']:.1f} s -> {out}",
        f"  rows: flows {rows['flows']:,}  events {rows['events']:,}  "
        f"regions {rows['regions']}  truth {rows['truth']:,}",
        f"  connections {s['connections']:,} (direct {s['connections_by_mode']['direct']:,}, "
        f"vip {s['connections_by_mode']['vip']:,}, lb {s['connections_by_mode']['lb']:,}); "
        f"active snapshots {fr['active_rows']:,}; NAT info missing on {fr['nat_missing_rows']:,}",
        f"  batches {fr['batches']:,}: lost {fr['lost_batches']} ({fr['lost_rows']:,} rows), "
        f"late {fr['late_batches']} ({fr['late_rows']:,} rows)",
        f"  events late by minutes: {ev['late_events']:,} of {ev['events']:,}",
        f"  address reuse: {reuse['cross_workload_reuses']:,} to another workload "
        f"({reuse['reuses_within_10s']:,} within 10 s), median gap {gap_text}",
    ]
    return "\n".join(lines)
