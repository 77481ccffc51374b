"""Benchmark: Store writes (per-row and per-batch idempotence) and the queries on what they wrote.

Usage:  python bench/store_write.py [--rows 1200000] [--batch 100000] [--dir DIR]
                                    [--order end|copies] [--modes row,batch]

Attributed rows: the `churny` simulation (seed 0, 300k flows) through the engine, repeated
with distinct flow ids up to --rows; `--order end` (the default) sorts them by end_ns, as a
collector stores them tick after tick (each write's rows end within its own stretch of
time), `--order copies` keeps the copies one after another (every write spans the whole
time). Each mode writes them into a new store in --batch-row named writes, validation off
(as the collector writes: its door has validated them). CPU is the process's user+system
time (DuckDB's threads included). Then, on each store, the dependency, top-talker and health
queries over every row, the flows query's first page, and the dependencies, health and
first page of the last tenth of the rows' time span (best of three, wall and CPU); and a
plain Parquet write of the same batches for the I/O floor. The per-batch store (Parquet
segments) is queried three ways, side by side in one process: `flows_window`, the view a
reader gets for its window (`Store.relation`: only the segments the window overlaps; made
inside the timed call), `flows`, the stored view over every segment, and `flows_native`, a
native DuckDB table of the same rows in the same database (the layout of store format 2).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowtrail.engine.replay import replay
from flowtrail.query.queries import Window, attribution_health, dependencies, flows, top_talkers
from flowtrail.sim.simulation import simulate
from flowtrail.store import PER_BATCH, PER_ROW, Store

LOW_CARDINALITY = [
    "exporter", "region", "local_ip", "remote_ip", "nat_remote_ip", "direction", "state",
    "local_workload", "remote_workload", "remote_source", "outcome",
]  # fmt: skip


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rows_of(work: Path, total: int) -> pa.Table:
    cached = work / "attributed.parquet"
    if cached.exists():
        base = pq.read_table(cached)
    else:
        sim = simulate("churny", 0, flows=300_000)
        base = replay(sim.flows, sim.events, sim.regions).table
        base = base.drop_columns([c for c in base.column_names if c.startswith("sim_")])
        pq.write_table(base, cached)
    copies = []
    for k in range(-(-total // base.num_rows)):
        fid = pc.binary_join_element_wise(base["flow_id"], pa.scalar(f"-{k}"), "")
        copies.append(base.set_column(base.column_names.index("flow_id"), "flow_id", fid))
    return pa.concat_tables(copies).slice(0, total).combine_chunks()


def disk_mb(path: Path) -> float:
    """The database file and, for a per-batch store, its segment files."""
    segments = path.with_name(path.name + ".segments")
    files = [path, *(segments.iterdir() if segments.is_dir() else [])]
    return sum(p.stat().st_size for p in files) / 2**20


def best_of(f: object, n: int = 3) -> tuple[float, float]:
    """Best wall and best CPU seconds of n runs (CPU: all of DuckDB's threads)."""
    walls, cpus = [], []
    for _ in range(n):
        t, c = time.perf_counter(), cpu()
        f()  # type: ignore[operator]
        walls.append(time.perf_counter() - t)
        cpus.append(cpu() - c)
    return round(min(walls), 3), round(min(cpus), 3)


Query = Callable[..., pa.Table]


def _query(
    cur: duckdb.DuckDBPyConnection, query: Query, window: Window, source: Callable[[Window], str]
) -> None:
    """One query as a reader runs it: its relation made for its window, then the query."""
    query(cur, window, source=source(window))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_200_000)
    ap.add_argument("--batch", type=int, default=100_000)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--order", choices=("end", "copies"), default="end")
    ap.add_argument("--modes", default=f"{PER_ROW},{PER_BATCH}")
    args = ap.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="ft-store-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    table = rows_of(work, args.rows)
    if args.order == "end":
        table = table.sort_by("end_ns")
    batches = [table.slice(i, args.batch) for i in range(0, table.num_rows, args.batch)]
    out: dict[str, object] = {"rows": table.num_rows, "batch_rows": args.batch}
    out["order"] = args.order
    for mode in args.modes.split(","):
        path = work / f"{mode}.duckdb"
        for p in (path, path.with_name(path.name + ".wal")):
            p.unlink(missing_ok=True)
        shutil.rmtree(path.with_name(path.name + ".segments"), ignore_errors=True)
        store = Store(path, validate_rows=False, idempotence=mode)
        c0, w0 = cpu(), time.perf_counter()
        for b in batches:
            store.write_named(b, store.next_name())
        c, w = cpu() - c0, time.perf_counter() - w0
        cur = store.cursor()
        out[mode] = {
            "write_cpu_s": round(c, 2),
            "write_wall_s": round(w, 2),
            "us_per_row": round(1e6 * c / table.num_rows, 2),
            "rows_per_cpu_s": round(table.num_rows / c),
            "file_mb": round(disk_mb(path)),
        }
        sources: dict[str, Callable[[Window], str]] = {"flows": lambda w: "flows"}
        if mode == PER_BATCH:
            cur.execute("CREATE TABLE flows_native AS SELECT * FROM flows")
            cur.execute("CHECKPOINT")
            sources = {
                "flows_window": partial(store.relation, cur),
                "flows": lambda w: "flows",
                "flows_native": lambda w: "flows_native",
            }
        lo, hi = cur.execute("SELECT min(end_ns), max(end_ns) + 1 FROM flows").fetchall()[0]
        everything, recent = Window(), Window(hi - (hi - lo) // 10, hi)
        queries: dict[str, tuple[Query, Window]] = {
            "dependencies": (dependencies, everything),
            "top_talkers": (top_talkers, everything),
            "health": (attribution_health, everything),
            "flows_page": (flows, everything),
            "dependencies_last_tenth": (dependencies, recent),
            "health_last_tenth": (attribution_health, recent),
            "flows_page_last_tenth": (flows, recent),
        }
        for name, source in sources.items():
            out[mode][name] = {
                f"{q}_wall_cpu_s": best_of(partial(_query, cur, query, window, source))
                for q, (query, window) in queries.items()
            }
        cur.close()
        store.close()
        print(json.dumps({mode: out[mode]}), flush=True)
    # The floor beside it: the same batches as Parquet files (no index, no transaction).
    where = work / "parquet"
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir()
    for name, options in {
        "parquet_uncompressed": {"compression": "none", "use_dictionary": LOW_CARDINALITY},
        "parquet_snappy": {"compression": "snappy", "use_dictionary": LOW_CARDINALITY},
    }.items():
        c0 = cpu()
        for i, b in enumerate(batches):
            pq.write_table(b, where / f"{name}-{i}.parquet", **options)  # type: ignore[arg-type]
        c = cpu() - c0
        out[name] = {"us_per_row": round(1e6 * c / table.num_rows, 2)}
    print(json.dumps(out, indent=1))
    if args.dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
