"""Benchmark: the web console's first view over a store of 1M flows, in a real browser.

Usage:  python bench/console_render.py [--rows 1000000] [--span 24h] [--runs 5] [--dir DIR]
                                       [--idempotence row|batch] [--batch 100000]

Builds a DuckDB store of `--rows` attributed flows: a simulated churny fleet, attributed by
the engine, copied with fresh flow ids into 8 namespaces `ns0/ … ns7/` (by capturing host and
by remote address, so the map has ~200 workloads), end times spread evenly over the last
`--span`, written in `--batch`-row writes in end_ns order (as a collector writes, tick after
tick). Serves it with the query API (flowtrail.api.QueryAPI, as `flowtrail up` does: each
request reads the relation the store makes for its window) and
opens the console in headless chromium (Debian's, through Selenium) at 1280×800. For each
view it reports, per fresh page load, the time from navigation start until the view is drawn
(the page's own performance.now() when its first load finished: HTML, scripts, every API
answer it waits for, and drawing), the page's drawing alone (the map and its edge table, as
the page reports it), and the same view's API answers alone, timed over HTTP, with their size.

Views: the map with the default window (15m; auto grouping draws one node per namespace once
there are more than 40 workloads), the map of every workload (`group=off`), and the flows
explorer's first page (100 rows).
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.api import QueryAPI
from flowtrail.engine.replay import replay
from flowtrail.lab.browser import quit_browser, start_browser, wait_loaded
from flowtrail.sim.simulation import simulate
from flowtrail.store import PER_BATCH, PER_ROW, Store
from flowtrail.units import parse_duration_ns

S = 1_000_000_000
NAMESPACES = 8
TIME_COLUMNS = ("start_ns", "end_ns", "established_ns", "received_ns", "attributed_ns")


def fleet(rows: int, span_ns: int, now_ns: int) -> pa.Table:
    """`rows` attributed flows over [now - span, now): simulated rows copied with new flow ids
    and namespaces, each copy's end times moved to its own place in the span."""
    sim = simulate("churny", 5, flows=25_000)
    base = replay(sim.flows, sim.events, sim.regions).table
    base = base.select([n for n in base.column_names if not n.startswith("sim_")])
    copies = -(-rows // base.num_rows)
    lo = int(pc.min(base.column("end_ns")).as_py())
    parts = []
    for k in range(copies):
        t = base
        # Each copy's rows land in its own slice of the span, in the order they ended.
        ends = np.asarray(t.column("end_ns"), np.int64) - lo
        width = max(1, int(ends.max()) + 1)
        slot = span_ns // copies
        target = now_ns - span_ns + k * slot + (ends * (slot / width)).astype(np.int64)
        shift = target - np.asarray(t.column("end_ns"), np.int64)
        for name in TIME_COLUMNS:
            i = t.column_names.index(name)
            col = t.column(name)
            t = t.set_column(i, name, pc.add(col, pa.array(shift)))
        # A namespace per capturing host (local side) and per remote address (remote side):
        # each service runs in several namespaces, and calls cross them.
        for name, by in (("local_workload", "exporter"), ("remote_workload", "remote_ip")):
            codes = pc.dictionary_encode(t.column(by)).combine_chunks().indices
            ns = pc.binary_join_element_wise(
                "ns",
                pc.cast(pc.bit_wise_and(pc.add(codes, k), NAMESPACES - 1), pa.string()),
                "/",
                "",
            )
            i = t.column_names.index(name)
            t = t.set_column(i, name, pc.binary_join_element_wise(ns, t.column(name), ""))
        i = t.column_names.index("flow_id")
        t = t.set_column(
            i, "flow_id", pc.binary_join_element_wise(t.column("flow_id"), f"-{k}", "")
        )
        parts.append(t)
    out = pa.concat_tables(parts)
    return out.slice(out.num_rows - rows)  # the oldest rows are the ones left out


def api_ms(port: int, path: str) -> tuple[float, int]:
    """The answer's time (ms) and size (bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        t = time.perf_counter()
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, (path, r.status)
        return (time.perf_counter() - t) * 1000, len(body)
    finally:
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--span", default="15m", help="the stored rows' end times cover this much")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument(
        "--idempotence",
        choices=(PER_ROW, PER_BATCH),
        default=PER_ROW,
        help="the store's kind: per row (a DuckDB table) or per batch (Parquet segments)",
    )
    ap.add_argument("--batch", type=int, default=100_000, help="rows per store write")
    args = ap.parse_args()
    span_ns = parse_duration_ns(args.span)
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="console-bench-"))
    db = workdir / "flows.duckdb"
    now = time.time_ns()
    t = time.perf_counter()
    table = fleet(args.rows, span_ns, now - 5 * S)
    built = time.perf_counter() - t
    db.unlink(missing_ok=True)
    shutil.rmtree(db.with_name(db.name + ".segments"), ignore_errors=True)
    store = Store(db, idempotence=args.idempotence)
    t = time.perf_counter()
    table = table.sort_by("end_ns")
    for i in range(0, table.num_rows, args.batch):
        store.write(table.slice(i, args.batch))
    stored = time.perf_counter() - t
    print(json.dumps({"rows": table.num_rows, "span": args.span, "build_s": round(built, 1),
                      "store_write_s": round(stored, 1), "idempotence": args.idempotence,
                      "batch": args.batch}),
          flush=True)  # fmt: skip
    del table
    api = QueryAPI(store.cursor, "127.0.0.1", 0, source=store)
    port = api.start()
    base = f"http://127.0.0.1:{port}"
    views = {
        # As the map asks: unnamed sides split by network.
        "map (15m, grouped)": ("/?refresh=0", ["/api/dependencies?since=15m&group_external=true"]),
        "map (15m, every workload)": (
            "/?refresh=0&group=off",
            ["/api/dependencies?since=15m&group_external=true"],
        ),
        "flows, first page": ("/?refresh=0&view=flows", ["/api/flows?since=15m&limit=100"]),
    }
    driver = start_browser()
    try:
        driver.get(f"{base}/?refresh=0")  # warm: numba's pairing kernel, DuckDB's caches
        wait_loaded(driver, timeout_s=120)
        for name, (page, calls) in views.items():
            page_ms, api_times, draw, size, nodes = [], [], [], 0, 0
            for _ in range(args.runs):
                driver.get("about:blank")
                driver.get(base + page)
                wait_loaded(driver, timeout_s=120)
                page_ms.append(float(driver.execute_script("return document.body.dataset.pageMs")))
                drawn = driver.execute_script("return document.body.dataset.drawMs || ''")
                draw.append(sum(int(x) for x in str(drawn).split("+") if x))
                nodes = int(driver.execute_script(
                    "return document.querySelectorAll('#map-canvas .node').length "
                    "+ document.querySelectorAll('#flow-table tbody tr').length"))  # fmt: skip
                answers = [api_ms(port, c) for c in calls]
                api_times.append(sum(ms for ms, _ in answers))
                size = sum(n for _, n in answers)
            print(json.dumps({
                "view": name,
                "page_ms_median": round(statistics.median(page_ms)),
                "page_ms_max": round(max(page_ms)),
                "api_ms_median": round(statistics.median(api_times)),
                "api_bytes": size,
                "draw_ms_median": round(statistics.median(draw)),
                "drawn": nodes,
                "runs": args.runs,
            }), flush=True)  # fmt: skip
    finally:
        left = quit_browser(driver)
        api.stop()
        store.close()
    assert left == [], left


if __name__ == "__main__":
    main()
