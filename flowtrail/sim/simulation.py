"""simulate(): build a world, connect its instances, and write what agents and the control plane
would report, beside the truth. write_sim(): the files of CONTRACT.md plus scenario.json."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from flowtrail.errors import InputError
from flowtrail.sim.addresses import regions_table
from flowtrail.sim.connections import assign_ephemeral_ports, build_graph, generate
from flowtrail.sim.ownership import events_table, ownership, reuse_stats, truth_table
from flowtrail.sim.rows import build_rows
from flowtrail.sim.scenarios import ScenarioConfig
from flowtrail.sim.scenarios import scenario as named_scenario
from flowtrail.sim.world import build_world
from flowtrail.tables import write_table

_PILOT = 20_000  # connections in the pilot run that measures rows per connection
_CHUNK = 250_000  # connections generated per step (bounds memory, paces progress output)

Progress = Callable[[str], None]


@dataclass
class SimOutput:
    flows: pa.Table
    events: pa.Table
    regions: pa.Table
    truth: pa.Table
    config: ScenarioConfig
    seed: int
    stats: dict[str, Any] = field(default_factory=dict)


def simulate(
    scenario: str | ScenarioConfig,
    seed: int = 0,
    progress: Progress | None = None,
    **knobs: Any,
) -> SimOutput:
    """Simulate a fleet. `knobs` override the scenario's (e.g. flows=2_000_000, max_skew=50)."""
    base = named_scenario(scenario) if isinstance(scenario, str) else scenario
    cfg = base.with_knobs(**knobs).validate()
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise InputError(f"--seed: must be an integer in 0..2**63-1, got {seed!r}")
    say = progress or (lambda _msg: None)
    began = time.monotonic()
    # Independent streams: changing --flows changes neither the world nor the event feed.
    world_rng, graph_rng, pilot_rng, conn_rng, row_rng, event_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)
    )

    world = build_world(cfg, world_rng)
    graph = build_graph(world, graph_rng)
    say(
        f"world: {len(world.host_names)} hosts, {len(world.service_names)} services, "
        f"{len(world.inst_slot)} instances, {len(world.lb_addr)} LBs"
    )

    # Measure rows per connection on a pilot sample, then size the real run to --flows rows.
    # (Rows per *asked* connection, so connections dropped for want of a live instance count.)
    asked = min(_PILOT, max(cfg.flows, 1000))
    pilot = generate(world, graph, cfg, pilot_rng, asked)
    assign_ephemeral_ports(pilot, len(world.inst_slot))
    pilot_rows, _ = build_rows(world, pilot, cfg, pilot_rng)
    per_conn = max(pilot_rows.num_rows / asked, 0.1)
    n_conn = max(round(cfg.flows / per_conn), 1)

    # Generate in chunks: each chunk is an independent, fully vectorised batch of connections.
    conn_parts = []
    done = 0
    while done < n_conn:
        size = min(_CHUNK, n_conn - done)
        conn_parts.append(generate(world, graph, cfg, conn_rng, size))
        done += size
        if n_conn > _CHUNK:
            say(f"connections: {done:,}/{n_conn:,}")
    conns = _concat(conn_parts)
    assign_ephemeral_ports(conns, len(world.inst_slot))
    flows, row_stats = build_rows(world, conns, cfg, row_rng)
    say(f"flows: {flows.num_rows:,} rows")

    own = ownership(world)
    truth = truth_table(world, own)
    events, event_stats = events_table(world, own, cfg, event_rng)
    reuse = reuse_stats(own)
    stats: dict[str, Any] = {
        "rows": {
            "flows": flows.num_rows,
            "events": events.num_rows,
            "regions": 0,
            "truth": truth.num_rows,
        },
        "connections": conns.n,
        "connections_dropped_no_live_client": conns.dropped_no_client,
        "connections_dropped_no_live_server": conns.dropped_no_server,
        "connections_by_mode": {
            "direct": int((conns.mode == 0).sum()),
            "vip": int((conns.mode == 1).sum()),
            "lb": int((conns.mode == 2).sum()),
        },
        "external_connections": int(conns.external.sum()),
        "long_lived_connections": int(conns.long_lived.sum()),
        "instances": len(world.inst_slot),
        "load_balancers": len(world.lb_addr),
        "flow_rows": dataclasses.asdict(row_stats),
        "events": dataclasses.asdict(event_stats),
        "address_reuse": dataclasses.asdict(reuse),
        "seconds": 0.0,
    }
    regions = regions_table()
    stats["rows"]["regions"] = regions.num_rows
    stats["seconds"] = round(time.monotonic() - began, 3)
    return SimOutput(flows, events, regions, truth, cfg, seed, stats)


def _concat(parts: list[Any]) -> Any:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    merged: dict[str, Any] = {}
    for f in dataclasses.fields(first):
        values = [getattr(p, f.name) for p in parts]
        merged[f.name] = (
            np.concatenate(values) if isinstance(values[0], np.ndarray) else sum(values)
        )
    return type(first)(**merged)


def write_sim(output: SimOutput, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write flows, events, regions, truth (.parquet) and scenario.json into out_dir."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("flows", "events", "regions", "truth"):
        paths[name] = out / f"{name}.parquet"
        write_table(getattr(output, name), paths[name])
    meta = {
        "scenario": output.config.name,
        "seed": output.seed,
        "knobs": {k: v for k, v in output.config.as_dict().items() if k != "name"},
        "extra_flow_columns": {
            "sim_true_start_ns": "the connection end's true (unskewed) start; judge truth here",
            "sim_conn_id": "shared by the two rows (client, server) of one TCP connection",
        },
        "summary": output.stats,
    }
    paths["scenario"] = out / "scenario.json"
    tmp = out / ".scenario.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, paths["scenario"])
    return paths
