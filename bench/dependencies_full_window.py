"""Benchmark: `dependencies` over a store whose 1M flows all lie in the query window.

Usage:  python bench/dependencies_full_window.py [--rows 1000000] [--runs 3]

Builds the store of bench/console_render.py (`--span 15m`) and times `dependencies` over the
whole store, alternating the queries' reduction of snapshots to each connection's latest row
with the straightforward one that ranks every row of the window (same answer, checked), so
both are measured under the same load. Also reports the queries' stages.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from console_render import S, fleet

from flowtrail.query import queries
from flowtrail.store import Store


def ranked_latest_rows_sql(source: str, window: queries.Window) -> str:
    return f"""
        SELECT * FROM {source} WHERE {window.sql()}
        QUALIFY row_number() OVER (
            PARTITION BY exporter, flow_id ORDER BY end_ns DESC, (state = 'closed') DESC
        ) = 1
    """


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    db = Path(tempfile.mkdtemp(prefix="deps-bench-")) / "flows.duckdb"
    store = Store(db)
    store.write(fleet(args.rows, 15 * 60 * S, time.time_ns() - 5 * S))
    con = store.cursor()
    w = queries.Window()
    fast = queries._latest_rows_sql
    answer = queries.dependencies(con, w)  # warm: numba's pairing kernel, DuckDB's caches
    times: dict[str, list[float]] = {"ranking every row": [], "ranking several-row only": []}
    for _ in range(args.runs):
        for name, sql in zip(times, (ranked_latest_rows_sql, fast), strict=True):
            queries._latest_rows_sql = sql
            t = time.perf_counter()
            got = queries.dependencies(con, w)
            times[name].append(round(time.perf_counter() - t, 2))
            assert got == answer
    queries._latest_rows_sql = fast
    t = time.perf_counter()
    queries.query_arrow(con, queries._ends_sql("flows", w))
    ends_sql = time.perf_counter() - t
    t = time.perf_counter()
    queries._ends(con, "flows", w, queries.DEFAULT_PAIR_TOLERANCE_NS)
    ends = time.perf_counter() - t
    print(json.dumps({"rows": args.rows, "edges": answer.num_rows, "dependencies_s": times,
                      "ends_sql_s": round(ends_sql, 2),
                      "ends_and_pairing_s": round(ends, 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
