"""Each query against a plain recomputation (polars) on the same simulated, attributed rows.

The pairing of a connection's two ends (4-tuple, starts within a tolerance) is itself checked
against the simulator's `sim_conn_id`, the truth of which rows are one TCP connection.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from flowtrail.engine.replay import replay
from flowtrail.errors import InputError
from flowtrail.query.queries import (
    DEFAULT_PAIR_TOLERANCE_NS,
    FlowFilter,
    Window,
    attribution_health,
    dependencies,
    flows,
    top_talkers,
)
from flowtrail.sim.simulation import simulate
from flowtrail.store import Store


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[pa.Table, Path]:
    sim = simulate("churny", 7, flows=8_000)
    table = replay(sim.flows, sim.events, sim.regions).table
    path = tmp_path_factory.mktemp("q") / "store.duckdb"
    with Store(path) as store:
        store.write(table)
    return table, path


@pytest.fixture()
def con(data: tuple[pa.Table, Path]) -> Any:
    c = duckdb.connect(str(data[1]), read_only=True)
    yield c
    c.close()


def _window(table: pa.Table) -> Window:
    """The middle half of the data, so the window's edges cut through real traffic."""
    end = np.asarray(table.column("end_ns"))
    lo, hi = np.quantile(end, [0.25, 0.75])
    return Window(int(lo), int(hi))


def _in_window(table: pa.Table, w: Window) -> pl.DataFrame:
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    return df.filter((pl.col("end_ns") >= w.since_ns) & (pl.col("end_ns") < w.until_ns))


def _ends(df: pl.DataFrame) -> pl.DataFrame:
    """Each (exporter, flow_id)'s latest row in the window, seen as caller/callee."""
    latest = (
        df.sort(["end_ns", "state"], descending=[True, False])  # 'closed' < 'active'
        .group_by(["exporter", "flow_id"], maintain_order=True)
        .first()
    )
    out = pl.col("direction") == "outbound"
    nat = pl.col("nat_remote_ip").is_not_null()
    return latest.with_row_index("end_id").select(
        "end_id",
        "sim_conn_id",
        "start_ns",
        out.alias("is_out"),
        pl.when(out).then("local_workload").otherwise("remote_workload").alias("caller"),
        pl.when(out).then("remote_workload").otherwise("local_workload").alias("callee"),
        pl.when(out).then("local_ip").otherwise("remote_ip").alias("caller_ip"),
        pl.when(out).then("local_port").otherwise("remote_port").alias("caller_port"),
        pl.when(out)
        .then(pl.coalesce("nat_remote_ip", "remote_ip"))
        .otherwise("local_ip")
        .alias("callee_ip"),
        pl.when(out & nat)
        .then(pl.coalesce("nat_remote_port", "remote_port"))
        .when(out)
        .then("remote_port")
        .otherwise("local_port")
        .alias("callee_port"),
        pl.when(out).then("bytes_sent").otherwise("bytes_received").alias("to_callee"),
        pl.when(out).then("bytes_received").otherwise("bytes_sent").alias("to_caller"),
        pl.col("retransmits").fill_null(0),
        "srtt_us",
    )


TUPLE = ["caller_ip", "caller_port", "callee_ip", "callee_port"]


def _pairs(ends: pl.DataFrame) -> pl.DataFrame:
    """Client end and server end of one connection: same 4-tuple, starts within tolerance."""
    o, i = ends.filter(pl.col("is_out")), ends.filter(~pl.col("is_out"))
    return o.join(i, on=TUPLE, suffix="_in").filter(
        (pl.col("start_ns") - pl.col("start_ns_in")).abs() <= DEFAULT_PAIR_TOLERANCE_NS
    )


def _connections(df: pl.DataFrame) -> pl.DataFrame:
    """One row per connection: a pair's two ends merged (client end first), others alone."""
    ends = _ends(df)
    pairs = _pairs(ends).select(pl.col("end_id_in").alias("end_id"), pl.col("end_id").alias("conn"))
    ends = ends.join(pairs, on="end_id", how="left").with_columns(
        pl.coalesce("conn", "end_id").alias("conn")
    )
    return (
        ends.sort(["conn", "is_out"], descending=[False, True])
        .group_by("conn", maintain_order=True)
        .agg(
            pl.col("caller").drop_nulls().first(),
            pl.col("callee").drop_nulls().first(),
            pl.col("caller_ip").first(),
            pl.col("callee_ip").first(),
            pl.col("to_callee").first(),
            pl.col("to_caller").first(),
            pl.col("retransmits").sum(),
            pl.col("srtt_us").drop_nulls().first(),
            (pl.len() == 2).alias("both_ends"),
        )
    )


def test_pairing_by_4_tuple_agrees_with_the_simulators_truth(data: tuple[pa.Table, Path]) -> None:
    """Every pair is one real connection; a real pair is missed only when the client saw an
    address that no NAT resolution turned into the server's (nothing to match on)."""
    table = data[0]
    ends = _ends(_in_window(table, _window(table)))
    pairs = _pairs(ends)
    assert pairs.height > 500
    assert (pairs["sim_conn_id"] == pairs["sim_conn_id_in"]).all()
    o, i = ends.filter(pl.col("is_out")), ends.filter(~pl.col("is_out"))
    true_pairs = o.join(i, on="sim_conn_id", suffix="_in")
    missed = true_pairs.filter(~pl.col("sim_conn_id").is_in(pairs["sim_conn_id"].implode()))
    assert missed.height < 0.01 * true_pairs.height
    assert (missed["callee_ip"] != missed["callee_ip_in"]).all()


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def test_dependencies_match_a_recomputation(con: Any, data: tuple[pa.Table, Path]) -> None:
    table = data[0]
    w = _window(table)
    got = dependencies(con, w).to_pylist()
    conns = _connections(_in_window(table, w))
    want = (
        conns.group_by(["caller", "callee"])
        .agg(
            pl.len().alias("flows"),
            pl.col("both_ends").sum().alias("seen_both_ends"),
            pl.col("to_callee").sum().alias("bytes_to_callee"),
            pl.col("to_caller").sum().alias("bytes_to_caller"),
            pl.col("retransmits").sum(),
            pl.col("srtt_us").quantile(0.5, "linear").alias("rtt_p50_us"),
            pl.col("srtt_us").quantile(0.99, "linear").alias("rtt_p99_us"),
        )
        .to_dicts()
    )
    assert len(got) == len(want) > 20
    by_edge = {(r["caller"], r["callee"]): r for r in want}
    for row in got:
        ref = by_edge[(row["caller"], row["callee"])]
        for name in ("flows", "seen_both_ends", "bytes_to_callee", "bytes_to_caller"):
            assert row[name] == ref[name], (row, ref)
        assert row["retransmits"] == ref["retransmits"]
        assert _close(row["rtt_p50_us"], ref["rtt_p50_us"])
        assert _close(row["rtt_p99_us"], ref["rtt_p99_us"])
    # Pairing really happened: most connections between monitored hosts are seen twice.
    assert sum(r["seen_both_ends"] for r in got) > 0.3 * sum(r["flows"] for r in got)
    totals = [r["bytes_to_callee"] + r["bytes_to_caller"] for r in got]
    assert totals == sorted(totals, reverse=True)


def test_dependencies_filters(con: Any, data: tuple[pa.Table, Path]) -> None:
    every = dependencies(con).to_pylist()
    known = dependencies(con, known_only=True).to_pylist()
    assert known == [r for r in every if r["caller"] is not None and r["callee"] is not None]
    name = every[0]["caller"]
    touching = dependencies(con, workload=name).to_pylist()
    assert touching == [r for r in every if name in (r["caller"], r["callee"])]


@pytest.mark.parametrize("by", ["workload", "ip"])
def test_top_talkers_match_a_recomputation(con: Any, data: tuple[pa.Table, Path], by: str) -> None:
    table = data[0]
    w = _window(table)
    got = top_talkers(con, w, by=by, limit=8).to_pylist()
    conns = _connections(_in_window(table, w))
    caller, callee = ("caller", "callee") if by == "workload" else ("caller_ip", "callee_ip")
    ends = pl.concat(
        [
            conns.select(
                pl.col(caller).alias("talker"),
                pl.col("to_callee").alias("sent"),
                pl.col("to_caller").alias("received"),
            ),
            conns.select(
                pl.col(callee).alias("talker"),
                pl.col("to_caller").alias("sent"),
                pl.col("to_callee").alias("received"),
            ),
        ]
    )
    want = (
        ends.group_by("talker")
        .agg(pl.len().alias("flows"), pl.col("sent").sum(), pl.col("received").sum())
        .with_columns((pl.col("sent") + pl.col("received")).alias("total"))
        .sort(["total", "flows"], descending=True)
        .head(8)
    )
    assert [r[by] for r in got] == want["talker"].to_list()
    assert [r["bytes_total"] for r in got] == want["total"].to_list()
    assert [r["bytes_sent"] for r in got] == want["sent"].to_list()
    assert [r["flows"] for r in got] == want["flows"].to_list()


def test_flows_filters_match_a_recomputation(con: Any, data: tuple[pa.Table, Path]) -> None:
    table = data[0]
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    w = _window(table)
    wdf = _in_window(table, w)
    workload = wdf["local_workload"].drop_nulls()[0]
    ip = wdf["nat_remote_ip"].drop_nulls()[0]
    port = int(wdf["remote_port"][0])
    cases: list[tuple[FlowFilter, pl.Expr]] = [
        (
            FlowFilter(workload=workload),
            (pl.col("local_workload") == workload) | (pl.col("remote_workload") == workload),
        ),
        (
            FlowFilter(ip=ip),
            (pl.col("local_ip") == ip)
            | (pl.col("remote_ip") == ip)
            | (pl.col("nat_remote_ip") == ip),
        ),
        (
            FlowFilter(port=port),
            (pl.col("local_port") == port)
            | (pl.col("remote_port") == port)
            | (pl.col("nat_remote_port") == port),
        ),
        (FlowFilter(remote_source="unattributed"), pl.col("remote_source") == "unattributed"),
        (
            FlowFilter(workload=workload, remote_source="heartbeat"),
            ((pl.col("local_workload") == workload) | (pl.col("remote_workload") == workload))
            & (pl.col("remote_source") == "heartbeat"),
        ),
    ]
    for where, expr in cases:
        want = wdf.filter(expr.fill_null(False))
        assert want.height > 0, where
        got = flows(con, w, where=where, limit=1_000_000)
        assert got.num_rows == want.height, where
        assert sorted(got.column("flow_id").to_pylist()) == sorted(want["flow_id"].to_list())
        ends = got.column("end_ns").to_pylist()
        assert ends == sorted(ends, reverse=True)
    limited = flows(con, w, limit=5)
    assert limited.num_rows == 5
    assert limited.column("end_ns").to_pylist() == sorted(wdf["end_ns"].to_list())[::-1][:5]


def test_health_matches_a_recomputation(con: Any, data: tuple[pa.Table, Path]) -> None:
    table = data[0]
    w = _window(table)
    got = {r["group"]: r for r in attribution_health(con, w).to_pylist()}
    df = _in_window(table, w).with_columns(
        ((pl.col("attributed_ns") - pl.col("received_ns")) / 1e6).alias("wait_ms")
    )
    n = df.height

    def check(group: str, part: pl.DataFrame) -> None:
        row = got[group]
        assert row["rows"] == part.height, group
        assert _close(row["pct"], round(100.0 * part.height / n, 3)), group
        assert _close(row["wait_p50_ms"], part["wait_ms"].quantile(0.5, "linear")), group
        assert _close(row["wait_p99_ms"], part["wait_ms"].quantile(0.99, "linear")), group

    check("all", df)
    check("attributed", df.filter(pl.col("remote_workload").is_not_null()))
    for source in df["remote_source"].unique():
        check(f"source={source}", df.filter(pl.col("remote_source") == source))
    unattributed = df.filter(pl.col("remote_workload").is_null())
    assert unattributed.height > 0
    # The attributor records each unattributed row's reason; nothing is left "(not recorded)".
    assert unattributed["unattributed_reason"].null_count() == 0
    for reason in unattributed["unattributed_reason"].unique():
        check(
            f"unattributed reason={reason}",
            unattributed.filter(pl.col("unattributed_reason") == reason),
        )
    assert "unattributed reason=(not recorded)" not in got
    assert 0 < got["attributed"]["pct"] < 100


def test_health_groups_unattributed_rows_by_a_recorded_reason(
    tmp_path: Path, data: tuple[pa.Table, Path]
) -> None:
    table = data[0]
    reasons = np.where(np.arange(table.num_rows) % 3 == 0, "no_heartbeat", "ambiguous")
    is_null = np.asarray(table.column("remote_workload").is_null())
    column = pa.array(np.where(is_null, reasons, None).tolist(), pa.string())
    with Store(tmp_path / "r.duckdb") as store:
        at = table.schema.get_field_index("unattributed_reason")
        store.write(table.set_column(at, "unattributed_reason", column))
        got = {r["group"]: r["rows"] for r in attribution_health(store.cursor()).to_pylist()}
    assert got["unattributed reason=no_heartbeat"] == int(
        (is_null & (reasons == "no_heartbeat")).sum()
    )
    assert got["unattributed reason=ambiguous"] == int((is_null & (reasons == "ambiguous")).sum())


def test_empty_window_and_bad_arguments(con: Any) -> None:
    empty = attribution_health(con, Window(0, 1)).to_pylist()
    assert empty == [
        {"group": "all", "rows": 0, "pct": None, "wait_p50_ms": None, "wait_p99_ms": None}
    ]
    assert dependencies(con, Window(0, 1)).num_rows == 0
    with pytest.raises(InputError, match="empty window"):
        Window(10, 10)
    with pytest.raises(InputError, match="--port"):
        FlowFilter(port=70000)
    with pytest.raises(InputError, match="--ip"):
        FlowFilter(ip="::FFFF:10.0.0.1")
    with pytest.raises(InputError, match="--source"):
        FlowFilter(remote_source="guess")
    with pytest.raises(InputError, match="--by"):
        top_talkers(con, by="port")
    with pytest.raises(InputError, match="--limit"):
        flows(con, limit=0)


def test_results_survive_json(con: Any) -> None:
    """Query results are plain values (what the HTTP API will serve)."""
    rows = dependencies(con).to_pylist()
    assert json.loads(json.dumps(rows)) == rows
