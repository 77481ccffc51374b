"""Benchmark: queries over the Parquet lake cost what the window holds, not what the lake holds.

Usage:  python bench/lake_query.py [--rows 10000000] [--hours 240] [--runs 3] [--dir DIR]

Writes a lake of `--rows` attributed flows (a simulated churny fleet attributed by the engine,
copied with fresh flow ids and end times spread evenly over `--hours` hours) with
flowtrail.store.Lake, in batches as a cluster's nodes would. Then times `dependencies` and the
first page of `flows` (what the console asks first) over a 1-hour and a 24-hour window, first
with only a tenth of the lake written and then with all of it: the same windows, a lake ten
times larger. Each figure is the median of `--runs` runs in fresh connections (file listing,
view, query, result), measured in one run of this script.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.engine.replay import replay
from flowtrail.query.lake import LakeSource, files_in_window, with_current_columns
from flowtrail.query.queries import FlowFilter, Window, dependencies, flows
from flowtrail.sim.simulation import simulate
from flowtrail.store import Lake
from flowtrail.store.lake import HOUR_NS


def base_rows() -> pa.Table:
    sim = simulate("churny", 3, flows=50_000)
    return replay(sim.flows, sim.events, sim.regions).table


def copies(base: pa.Table, first: int, n: int, step_ns: int, t0: int) -> pa.Table:
    """Rows first..first+n of the endless copy of `base`: fresh flow ids, row i ending at
    t0 + i * step_ns."""
    idx = (np.arange(first, first + n) % base.num_rows).astype(np.int64)
    t = base.take(pa.array(idx))
    end = t0 + np.arange(first, first + n, dtype=np.int64) * step_ns
    shift = end - np.asarray(t.column("end_ns").to_numpy(), np.int64)
    for name in ("start_ns", "end_ns", "received_ns", "attributed_ns"):
        col = t.column(name)
        moved = pc.add(col, pa.array(shift, pa.int64()))
        t = t.set_column(t.column_names.index(name), name, moved)
    ids = pc.binary_join_element_wise(
        t.column("flow_id"), pa.array(np.arange(first, first + n).astype(str)), "#"
    )
    return t.set_column(t.column_names.index("flow_id"), "flow_id", ids)


def timed(lake: Path, window: Window, runs: int) -> dict[str, float]:
    out: dict[str, list[float]] = {"dependencies": [], "flows page": []}
    source = LakeSource(lake)
    for _ in range(runs):
        for name in out:
            con = duckdb.connect()
            began = time.perf_counter()
            relation = with_current_columns(con, source.relation(con, window))
            if name == "dependencies":
                dependencies(con, window, source=relation)
            else:
                flows(con, window, source=relation, where=FlowFilter(), limit=100)
            out[name].append(time.perf_counter() - began)
            con.close()
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--hours", type=int, default=240)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="flowtrail-lake-bench-"))
    lake_dir = root / "lake"
    base = base_rows()
    span = args.hours * HOUR_NS
    t0 = (time.time_ns() - span) // HOUR_NS * HOUR_NS
    lake = Lake(lake_dir, validate_rows=False)
    batch = 500_000
    tenth = args.rows // 10
    last_hour = Window(t0 + span - HOUR_NS, t0 + span)
    last_day = Window(t0 + span - 24 * HOUR_NS, t0 + span)
    results = {}
    written = 0
    began = time.perf_counter()
    step = max(span // args.rows, 1)
    # First the lake's last tenth of time, then everything before it: both stages answer the
    # same windows from the same rows, over a lake ten times larger the second time.
    for stage, lo, hi in (("a tenth", args.rows - tenth, args.rows), ("all", 0, args.rows - tenth)):
        for first in range(lo, hi, batch):
            n = min(batch, hi - first)
            lake.write(copies(base, first, n, step, t0), batch_id=f"b{first}")
            written += n
            print(f"  wrote {written:,} rows ({time.perf_counter() - began:.0f} s)", flush=True)
        files = len(files_in_window(lake_dir, Window()))
        for label, window in (("1 h", last_hour), ("24 h", last_day)):
            results[(stage, label)] = timed(lake_dir, window, args.runs)
            print(f"  {stage:8} lake ({written:,} rows, {files} files), {label} window: "
                  + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in results[(stage, label)].items()),
                  flush=True)  # fmt: skip
    print("\nwindow  query        lake of a tenth  whole lake  ratio")
    for label in ("1 h", "24 h"):
        for q in ("dependencies", "flows page"):
            a, b = results[("a tenth", label)][q], results[("all", label)][q]
            print(f"{label:6}  {q:12} {a * 1000:12.0f} ms {b * 1000:8.0f} ms  {b / a:5.2f}×")


if __name__ == "__main__":
    main()
