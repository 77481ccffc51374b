"""The queries behind the web console (an edge's flows, paging, health over time, exporters),
each against a plain recomputation (polars) on the same simulated, attributed rows; their
text parameters as the HTTP API receives them; the console's files and /healthz's drops."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry, Counter

from flowtrail.agent.prometheus import AgentCounters
from flowtrail.api.drops import drops_from_registry
from flowtrail.api.params import ParamError, parse_request
from flowtrail.engine.replay import replay
from flowtrail.errors import InputError
from flowtrail.query.api import run_query
from flowtrail.query.queries import (
    FlowFilter,
    Window,
    attribution_health,
    dependencies,
    exporters,
    flows,
    health_series,
)
from flowtrail.sim.simulation import simulate
from flowtrail.store import Store
from flowtrail.web import console_file


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[pa.Table, Path]:
    sim = simulate("churny", 9, flows=3_000)
    table = replay(sim.flows, sim.events, sim.regions).table
    # The simulator's calls all connect: every 40th closed client row becomes a refused attempt.
    pick = [
        i % 40 == 0 and d == "outbound" and s == "closed"
        for i, (d, s) in enumerate(
            zip(table["direction"].to_pylist(), table["state"].to_pylist(), strict=True)
        )
    ]
    outcome = pa.array(["refused" if p else None for p in pick], pa.string())
    table = table.set_column(table.column_names.index("outcome"), "outcome", outcome)
    path = tmp_path_factory.mktemp("console") / "s.duckdb"
    with Store(path) as store:
        store.write(table)
    return table, path


@pytest.fixture()
def con(data: tuple[pa.Table, Path]) -> Iterator[duckdb.DuckDBPyConnection]:
    c = duckdb.connect(str(data[1]), read_only=True)
    yield c
    c.close()


def _rows(table: pa.Table) -> pl.DataFrame:
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    out = pl.col("direction") == "outbound"
    return df.with_columns(
        pl.when(out).then("local_workload").otherwise("remote_workload").alias("caller"),
        pl.when(out).then("remote_workload").otherwise("local_workload").alias("callee"),
    )


def _edge_filter(caller: str | None, callee: str | None) -> FlowFilter:
    unnamed = {(True, True): "both", (True, False): "caller", (False, True): "callee"}
    return FlowFilter(
        caller=caller, callee=callee, unnamed=unnamed.get((caller is None, callee is None))
    )


def test_each_edge_lists_the_rows_of_its_connections(
    data: tuple[pa.Table, Path], con: duckdb.DuckDBPyConnection
) -> None:
    """An edge's rows are its connections' and attempts' (each end's latest row): as many as
    dependencies counts (a connection seen at both ends has two), every row of the window in
    exactly one edge, and no row naming a side differently from its edge (a null side of a
    row is where its partner's end supplied the name)."""
    df = _rows(data[0])
    edges = dependencies(con).to_pylist()
    assert any(e["caller"] is None or e["callee"] is None for e in edges)  # both kinds checked
    assert any(e["seen_both_ends"] for e in edges) and any(e["failed_attempts"] for e in edges)
    seen: list[tuple[str, str]] = []
    for e in edges:
        got = _rows(flows(con, where=_edge_filter(e["caller"], e["callee"]), limit=10_000))
        assert got.height == e["flows"] + e["seen_both_ends"] + e["failed_attempts"], e
        for side in ("caller", "callee"):
            names = set(got[side].drop_nulls().to_list())
            assert names <= ({e[side]} if e[side] is not None else set()), (e, side, names)
        seen += list(zip(got["exporter"].to_list(), got["flow_id"].to_list(), strict=True))
    assert len(seen) == len(set(seen))  # no row on two edges
    assert set(seen) == set(zip(df["exporter"].to_list(), df["flow_id"].to_list(), strict=True))


def test_offset_pages_through_the_same_order(con: duckdb.DuckDBPyConnection) -> None:
    whole = flows(con, limit=300)
    pages = [flows(con, limit=100, offset=k * 100) for k in range(3)]
    assert pa.concat_tables(pages).equals(whole)
    with pytest.raises(InputError, match="--offset"):
        flows(con, offset=-1)


def test_health_series_adds_up_to_health(
    data: tuple[pa.Table, Path], con: duckdb.DuckDBPyConnection
) -> None:
    end = sorted(data[0].column("end_ns").to_pylist())
    window = Window(end[len(end) // 4], end[3 * len(end) // 4])
    series = health_series(con, window, buckets=7).to_pylist()
    health = {g["group"]: g["rows"] for g in attribution_health(con, window).to_pylist()}
    assert len(series) == 7
    assert series[0]["start_ns"] >= window.since_ns and series[-1]["end_ns"] <= window.until_ns
    assert all(a["end_ns"] <= b["start_ns"] for a, b in itertools.pairwise(series))
    assert sum(s["rows"] for s in series) == health["all"]
    assert sum(s["attributed"] for s in series) == health["attributed"]
    for source in ("heartbeat", "event", "unattributed"):
        assert sum(s[source] for s in series) == health.get(f"source={source}", 0)
    # Each span's counts are the rows whose end falls in it.
    df = pl.from_arrow(data[0])
    assert isinstance(df, pl.DataFrame)
    for s in series:
        inside = df.filter((pl.col("end_ns") >= s["start_ns"]) & (pl.col("end_ns") < s["end_ns"]))
        assert s["rows"] == inside.height
    # An open end reaches `now`, so a source that went quiet shows as empty spans at the end.
    later = end[-1] + 10**12
    open_end = health_series(con, Window(end[0]), buckets=10, now_ns=later).to_pylist()
    assert sum(s["rows"] for s in open_end) == len(end)
    assert len(open_end) == 10 and open_end[-1]["end_ns"] == later
    assert open_end[-1]["rows"] == 0 and open_end[-1]["wait_p50_ms"] is None
    empty = health_series(con, Window(later), buckets=10)
    assert empty.num_rows == 0 and "wait_p99_ms" in empty.column_names
    with pytest.raises(InputError, match="--buckets"):
        health_series(con, buckets=0)


def test_exporters_match_a_recount(
    data: tuple[pa.Table, Path], con: duckdb.DuckDBPyConnection
) -> None:
    got = {r["exporter"]: r for r in exporters(con).to_pylist()}
    df = pl.from_arrow(data[0])
    assert isinstance(df, pl.DataFrame)
    want = df.group_by("exporter").agg(
        pl.len().alias("rows"),
        pl.col("remote_workload").is_not_null().sum().alias("attributed"),
        pl.col("received_ns").max().alias("last_received_ns"),
        pl.col("end_ns").max().alias("last_end_ns"),
    )
    assert set(got) == set(want["exporter"].to_list())
    for w in want.to_dicts():
        g = got[w["exporter"]]
        assert (g["rows"], g["last_received_ns"], g["last_end_ns"]) == (
            w["rows"],
            w["last_received_ns"],
            w["last_end_ns"],
        )
        assert g["attributed_pct"] == round(100 * w["attributed"] / w["rows"], 3)


def test_text_parameters_of_the_new_queries(con: duckdb.DuckDBPyConnection) -> None:
    edge = next(e for e in dependencies(con).to_pylist() if e["caller"] and e["callee"])
    got = run_query(con, "flows", {"caller": edge["caller"], "callee": edge["callee"]})
    assert got.equals(flows(con, where=_edge_filter(edge["caller"], edge["callee"])))
    got = run_query(con, "flows", {"unnamed": "callee", "limit": "5", "offset": "5"})
    assert got.equals(flows(con, where=FlowFilter(unnamed="callee"), limit=5, offset=5))
    got = run_query(con, "health-series", {"buckets": "3", "until": "now"}, now_ns=2**62)
    assert got.num_rows >= 1
    assert run_query(con, "exporters", {}).equals(exporters(con))


@pytest.mark.parametrize(
    ("endpoint", "query", "parameter"),
    [
        ("flows", "unnamed=nobody", "unnamed"),
        ("flows", "unnamed=caller&caller=web", "unnamed"),
        ("flows", "offset=-1", "offset"),
        ("flows", "offset=9999999999", "offset"),
        ("health-series", "buckets=0", "buckets"),
        ("health-series", "buckets=501", "buckets"),
        ("exporters", "limit=3", "limit"),
    ],
)
def test_bad_console_parameters_are_named(endpoint: str, query: str, parameter: str) -> None:
    with pytest.raises(ParamError) as err:
        parse_request(endpoint, query, 10**18)
    assert err.value.parameter == parameter


def test_console_files_are_exact_names_only() -> None:
    page = console_file("/")
    assert page is not None and page[1].startswith("text/html") and b"console.js" in page[0]
    script = console_file("/static/console.js")
    assert script is not None and script[1].startswith("text/javascript")
    for path in ("/static/../__init__.py", "/static/__init__.py", "/static/", "/index.html"):
        assert console_file(path) is None, path


def test_drops_read_the_counters_metrics_shows() -> None:
    registry = CollectorRegistry()
    refused = Counter("flowtrail_collector_refused_rows", "x", ["reason"], registry=registry)
    refused.labels("bad_token").inc(3)
    registry.register(
        AgentCounters(lambda: {"capture_drop_ringbuf_full": 2, "spool_dropped_rows": 1})
    )
    assert drops_from_registry(registry) == {
        "collector refused rows: bad_token": 3,
        "agent capture: ringbuf_full": 2,
        "agent spool full: rows dropped": 1,
    }


def test_the_cli_asks_the_same_questions(data: tuple[pa.Table, Path]) -> None:
    import json

    from click.testing import CliRunner

    from flowtrail.query.command import query

    db = str(data[1])
    run = CliRunner().invoke(query, ["exporters", "--db", db, "--format", "json"])
    assert run.exit_code == 0, run.output
    with duckdb.connect(db, read_only=True) as c:
        assert json.loads(run.output) == exporters(c).to_pylist()
    run = CliRunner().invoke(
        query, ["health-series", "--db", db, "--buckets", "4", "--format", "json"]
    )
    assert run.exit_code == 0, run.output
    spans = json.loads(run.output)
    assert sum(s["rows"] for s in spans) == data[0].num_rows
    assert spans[-1]["end_ns"] > data[0]["end_ns"].to_pylist()[0]  # open end: now, not the data's
    run = CliRunner().invoke(query, ["flows", "--db", db, "--unnamed", "both", "--offset", "0"])
    assert run.exit_code == 0, run.output
