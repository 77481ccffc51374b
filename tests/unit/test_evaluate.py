"""flowtrail eval on hand-built tables whose every count is known in advance.

No fakes: the real evaluate() on real Arrow tables, and the real CLI on real files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from flowtrail.cli import main
from flowtrail.errors import ContractError
from flowtrail.evaluate import EvalReport, evaluate, format_report, format_side_by_side
from flowtrail.evaluate.command import eval_command
from flowtrail.schema import ATTRIBUTED, TRUTH

S = 1_000_000_000  # one second in ns
BASE: dict[str, Any] = {
    "flow_id": "f",
    "exporter": "host-a",
    "local_ip": "10.0.0.1",
    "local_port": 40000,
    "remote_ip": "10.0.0.2",
    "remote_port": 443,
    "direction": "outbound",
    "start_ns": 10 * S,
    "end_ns": 11 * S,
    "state": "closed",
    "bytes_sent": 1,
    "bytes_received": 1,
    "local_workload": "web",
    "remote_workload": None,
    "remote_source": "unattributed",
    "attributed_ns": 12 * S,
}


def attributed(*rows: dict[str, Any], extra: dict[str, pa.DataType] | None = None) -> pa.Table:
    """An attributed-flows table: BASE values overridden per row; extra columns typed by `extra`."""
    full = [{**BASE, "flow_id": f"f{i}", **r} for i, r in enumerate(rows)]
    names = [c.name for c in ATTRIBUTED.columns if any(c.name in r for r in full)]
    arrays = {n: pa.array([r.get(n) for r in full], ATTRIBUTED.column(n).type) for n in names}
    for name, typ in (extra or {}).items():
        arrays[name] = pa.array([r.get(name) for r in full], typ)
    return pa.table(arrays)


def truth(*rows: tuple[str, str, int, int | None]) -> pa.Table:
    ips, workloads, froms, tos = zip(*rows, strict=True) if rows else ((), (), (), ())
    return pa.table(
        {
            "ip": pa.array(ips, pa.string()),
            "workload": pa.array(workloads, pa.string()),
            "from_ns": pa.array(froms, pa.int64()),
            "to_ns": pa.array(tos, pa.int64()),
        }
    )


def hb(workload: str, **kw: Any) -> dict[str, Any]:
    return {"remote_workload": workload, "remote_source": "heartbeat", **kw}


def ev(workload: str, **kw: Any) -> dict[str, Any]:
    return {"remote_workload": workload, "remote_source": "event", **kw}


def none(**kw: Any) -> dict[str, Any]:
    return {"remote_workload": None, "remote_source": "unattributed", **kw}


# 10.0.0.2 belonged to "api" for [0 s, 20 s), then to "db" from 20 s on (still owned).
OWNERSHIP = truth(("10.0.0.2", "api", 0, 20 * S), ("10.0.0.2", "db", 20 * S, None))


def flows_of(report: EvalReport) -> dict[str, int]:
    f = report.flows
    return {
        "rows": f.rows,
        "owned": f.owned,
        "correct": f.correct,
        "misattributed": f.misattributed,
        "unattributed": f.unattributed,
        "unattributed_unowned": f.unattributed_unowned,
    }


def test_correct_misattributed_and_unattributed_are_told_apart_per_source() -> None:
    table = attributed(
        hb("api"),  # right
        hb("db"),  # wrong: db only owns it from 20 s
        ev("api"),  # right, via the event feed
        ev("cache"),  # wrong, via the event feed
        none(),  # owner existed: an unattributed flow
        none(remote_ip="10.9.9.9"),  # nobody owned it: null was the right answer
        hb("ghost", remote_ip="10.9.9.9"),  # nobody owned it: any name is a misattribution
    )
    report = evaluate(table, OWNERSHIP)
    assert flows_of(report) == {
        "rows": 7,
        "owned": 5,
        "correct": 2,
        "misattributed": 3,
        "unattributed": 1,
        "unattributed_unowned": 1,
    }
    assert report.flows.attributed == 5
    assert report.flows.misattributed_pct == pytest.approx(100 * 3 / 7)
    assert report.flows.unattributed_pct == pytest.approx(100 * 1 / 5)
    by = report.flows_by_source
    assert (by["heartbeat"].rows, by["heartbeat"].correct, by["heartbeat"].misattributed) == (
        3,
        1,
        2,
    )
    assert (by["event"].rows, by["event"].correct, by["event"].misattributed) == (2, 1, 1)
    assert (by["unattributed"].unattributed, by["unattributed"].unattributed_unowned) == (1, 1)
    assert report.time_column == "start_ns"
    assert report.source_mismatch_rows == 0


def test_nat_resolved_address_is_judged_when_present() -> None:
    owners = truth(
        ("10.0.0.100", "load-balancer", 0, None),  # the VIP the client dialled
        ("10.0.0.7", "payments", 0, None),  # the backend DNAT sent it to
    )
    table = attributed(
        hb("payments", remote_ip="10.0.0.100", nat_remote_ip="10.0.0.7"),  # right
        hb("load-balancer", remote_ip="10.0.0.100", nat_remote_ip="10.0.0.7"),  # wrong
        ev("load-balancer", remote_ip="10.0.0.100", nat_remote_ip=None),  # no NAT: the VIP
    )
    report = evaluate(table, owners)
    assert (report.flows.correct, report.flows.misattributed) == (2, 1)
    assert report.flows_by_source["heartbeat"].misattributed == 1


def test_true_start_column_is_preferred_over_skewed_start_ns() -> None:
    # The host clock ran 50 ms fast: start_ns says 20.01 s (db's time) but the connection
    # truly started at 19.96 s, when api still owned the address.
    skewed = 20 * S + 10_000_000
    true_start = 20 * S - 40_000_000
    rows = [hb("api", start_ns=skewed, sim_true_start_ns=true_start)]
    with_true = attributed(*rows, extra={"sim_true_start_ns": pa.int64()})
    report = evaluate(with_true, OWNERSHIP)
    assert report.time_column == "sim_true_start_ns"
    assert (report.flows.correct, report.flows.misattributed) == (1, 0)
    assert "sim_true_start_ns" in format_report(report)

    without = attributed(hb("api", start_ns=skewed))
    report = evaluate(without, OWNERSHIP)
    assert report.time_column == "start_ns"
    assert (report.flows.correct, report.flows.misattributed) == (0, 1)
    assert "judged at start_ns" in format_report(report)


def test_null_true_start_falls_back_to_start_ns_and_is_counted() -> None:
    table = attributed(
        hb("api", start_ns=25 * S, sim_true_start_ns=5 * S),  # judged at 5 s: right
        hb("db", start_ns=25 * S, sim_true_start_ns=None),  # judged at 25 s: right
        extra={"sim_true_start_ns": pa.int64()},
    )
    report = evaluate(table, OWNERSHIP)
    assert report.time_fallback_rows == 1
    assert report.flows.correct == 2


def test_true_start_column_of_the_wrong_type_is_refused_by_name() -> None:
    table = attributed(
        hb("api", sim_true_start_ns="soon"), extra={"sim_true_start_ns": pa.string()}
    )
    with pytest.raises(ContractError, match="sim_true_start_ns"):
        evaluate(table, OWNERSHIP)


def test_ownership_intervals_are_half_open() -> None:
    owners = truth(("10.0.0.2", "api", 10 * S, 20 * S))
    table = attributed(
        hb("api", start_ns=10 * S),  # == from: owned
        hb("api", start_ns=20 * S - 1),  # last owned ns
        hb("api", start_ns=20 * S),  # == to: no longer owned
        hb("api", start_ns=10 * S - 1),  # before from: not yet owned
    )
    report = evaluate(table, owners)
    assert (report.flows.owned, report.flows.correct, report.flows.misattributed) == (2, 2, 2)


def test_handover_at_the_boundary_goes_to_the_next_owner() -> None:
    table = attributed(hb("db", start_ns=20 * S), hb("api", start_ns=20 * S))
    report = evaluate(table, OWNERSHIP)
    assert (report.flows.correct, report.flows.misattributed) == (1, 1)


def test_null_to_ns_means_still_owned() -> None:
    table = attributed(hb("db", start_ns=10**18), none(start_ns=10**18))
    report = evaluate(table, OWNERSHIP)
    assert (report.flows.correct, report.flows.unattributed) == (1, 1)


def test_ipv6_addresses_are_looked_up_like_ipv4() -> None:
    owners = truth(("2001:db8::1", "api", 0, None), ("10.0.0.2", "db", 0, None))
    table = attributed(
        hb("api", remote_ip="2001:db8::1", local_ip="2001:db8::99"),
        hb("db", remote_ip="2001:db8::1", local_ip="2001:db8::99"),
        hb("db"),
    )
    report = evaluate(table, owners)
    assert (report.flows.correct, report.flows.misattributed) == (2, 1)


def test_edges_run_caller_to_callee_by_direction() -> None:
    table = attributed(
        hb("api", direction="outbound", local_workload="web"),  # web -> api
        hb("api", direction="inbound", local_workload="auth"),  # api -> auth
        none(direction="outbound", local_workload="web"),  # true web -> api, not predicted anew
        none(direction="inbound", local_workload="billing"),  # true api -> billing: missed
        hb("api", local_workload=None),  # no local side: no edge at all
    )
    report = evaluate(table, OWNERSHIP)
    assert report.edges.predicted == 2
    assert report.edges.true == 3
    assert (report.edges.false, report.edges.missing) == (0, 1)
    assert report.rows_without_local_workload == 1
    # The missed edge's rows were left unattributed, so the miss is charged to that source.
    assert report.edges_by_source["unattributed"].missing == 1
    assert report.edges_by_source["heartbeat"].missing == 0


def test_inbound_misattribution_makes_a_false_edge_into_the_local_side() -> None:
    # auth accepted a connection from api's address but named the caller "db".
    table = attributed(hb("db", direction="inbound", local_workload="auth"))
    report = evaluate(table, OWNERSHIP)
    assert (report.edges.predicted, report.edges.true) == (1, 1)
    assert (report.edges.false, report.edges.missing) == (1, 1)
    (worst,) = report.worst_false_edges
    assert (worst.caller, worst.callee, worst.rows) == ("db", "auth", 1)
    assert (worst.truly_remote, worst.sources) == ("api", ("heartbeat",))


def test_false_and_missing_edges_per_source_and_worst_list() -> None:
    table = attributed(
        hb("api"),  # web -> api, true
        ev("db"),  # web -> db: false (api owned it at 10 s)
        ev("db"),
        hb("db", start_ns=21 * S),  # web -> db, true here: so the event rows' edge is true too
        ev("cache", local_workload="batch"),  # batch -> cache: false
        hb("cache", local_workload="batch", remote_ip="10.9.9.9"),  # owned by nobody: false
        none(local_workload="cron"),  # cron -> api true, never predicted: missing
    )
    report = evaluate(table, OWNERSHIP)
    e = report.edges
    # predicted: web->api, web->db, batch->cache; true: web->api, web->db, batch->api, cron->api
    assert (e.predicted, e.true, e.false, e.missing) == (3, 4, 1, 2)
    assert e.false_pct == pytest.approx(100 / 3)
    assert e.missing_pct == pytest.approx(50)
    by = report.edges_by_source
    assert (by["event"].predicted, by["event"].false) == (2, 1)
    assert (by["heartbeat"].predicted, by["heartbeat"].false) == (3, 1)
    assert by["unattributed"].missing == 1
    (worst,) = report.worst_false_edges
    assert (worst.caller, worst.callee, worst.rows) == ("batch", "cache", 2)
    assert worst.sources == ("heartbeat", "event")
    # One row's address was api's, the other's nobody's: a tie, the named owner listed first.
    assert (worst.truly_remote, worst.truly_remote_rows) == ("api", 1)


def test_worst_false_edges_are_ordered_by_rows_and_capped() -> None:
    rows = [hb("x1")] * 3 + [hb("x2")] * 5 + [hb("x3")]
    report = evaluate(attributed(*rows), OWNERSHIP, worst=2)
    assert [(w.callee, w.rows) for w in report.worst_false_edges] == [("x2", 5), ("x1", 3)]
    assert all(w.truly_remote == "api" for w in report.worst_false_edges)
    assert evaluate(attributed(*rows), OWNERSHIP, worst=0).worst_false_edges == ()


def test_regions_are_counted_when_the_column_exists() -> None:
    table = attributed(
        hb("api", region="us-east"), hb("db", region="us-east"), none(region="eu"), hb("api")
    )
    report = evaluate(table, OWNERSHIP)
    assert report.regions is not None
    assert set(report.regions) == {"us-east", "eu", "(none)"}
    assert (report.regions["us-east"].rows, report.regions["us-east"].misattributed) == (2, 1)
    assert report.regions["eu"].unattributed == 1
    assert evaluate(attributed(hb("api")), OWNERSHIP).regions is None


def test_source_that_contradicts_the_workload_is_counted() -> None:
    table = attributed(
        {"remote_workload": None, "remote_source": "heartbeat"},
        {"remote_workload": "api", "remote_source": "unattributed"},
        hb("api"),
    )
    report = evaluate(table, OWNERSHIP)
    assert report.source_mismatch_rows == 2
    assert any("remote_source disagrees" in n for n in report.notes)


def narrowed(*rows: tuple[str, str, int, int | None, str | None, int | None]) -> pa.Table:
    """Truth rows (ip, workload, from, to, exporter, port): the contract's optional columns."""
    cols = list(zip(*rows, strict=True))
    return pa.table({f.name: pa.array(c, f.type) for f, c in zip(TRUTH.schema, cols, strict=True)})


def test_a_gateways_address_is_judged_per_port() -> None:
    """Behind a NAT gateway the server sees the gateway's address; who called is per port."""
    owners = narrowed(
        ("10.0.0.2", "gateway", 0, None, None, None),  # the gateway's own connections
        ("10.0.0.2", "laptop", 5 * S, 15 * S, None, 40001),  # a translated connection
    )
    table = attributed(
        hb("gateway", remote_port=40001),  # the translated one named as the gateway: wrong
        hb("laptop", remote_port=40001, remote_ip="10.0.0.2"),
        hb("gateway", remote_port=50000),  # the gateway's own: right
        hb("gateway", remote_port=40001, start_ns=20 * S),  # the port's interval is over
        # DNAT resolved: the port judged is the resolved one
        hb("laptop", remote_ip="10.5.5.5", nat_remote_ip="10.0.0.2", nat_remote_port=40001),
    )
    report = evaluate(table, owners)
    assert (report.flows.correct, report.flows.misattributed) == (4, 1)


def test_a_host_local_address_is_judged_per_exporter() -> None:
    owners = narrowed(
        ("172.17.0.2", "web-a", 0, None, "host-a", None),
        ("172.17.0.2", "web-b", 0, 15 * S, "host-b", None),
    )
    table = attributed(
        hb("web-a", remote_ip="172.17.0.2"),  # host-a's own bridge: right
        hb("web-a", remote_ip="172.17.0.2", exporter="host-b"),  # the other host's: wrong
        hb("web-b", remote_ip="172.17.0.2", exporter="host-b"),
        none(remote_ip="172.17.0.2", exporter="host-b", start_ns=20 * S),  # nobody, rightly
        hb("web-a", remote_ip="172.17.0.2", exporter="host-c"),  # no owner on host-c: wrong
    )
    report = evaluate(table, owners)
    f = report.flows
    assert (f.correct, f.misattributed, f.unattributed_unowned) == (2, 2, 1)


def test_overlaps_are_refused_per_key_only() -> None:
    # The same address owned by two exporters, or by two ports, at once is no overlap.
    fine = narrowed(
        ("10.0.0.2", "a", 0, None, "host-a", None),
        ("10.0.0.2", "b", 0, None, "host-b", None),
        ("10.0.0.2", "c", 0, None, None, 1),
        ("10.0.0.2", "d", 0, None, None, 2),
    )
    row = hb("c", remote_port=1, exporter="host-c")  # host-a's own interval would win there
    assert evaluate(attributed(row), fine).flows.correct == 1
    clash = narrowed(
        ("10.0.0.2", "c", 0, None, None, 1),
        ("10.0.0.2", "d", 5 * S, None, None, 1),
    )
    with pytest.raises(ContractError, match=r"overlap for ip 10\.0\.0\.2 port 1"):
        evaluate(attributed(hb("c")), clash)


def test_overlapping_truth_is_refused_naming_the_ip() -> None:
    owners = truth(
        ("10.0.0.5", "a", 0, 10 * S),
        ("10.0.0.2", "api", 0, None),
        ("10.0.0.2", "db", 5 * S, 30 * S),  # api still owns it: overlap
    )
    with pytest.raises(ContractError, match=r"overlap for ip 10\.0\.0\.2") as info:
        evaluate(attributed(hb("api")), owners)
    assert info.value.row == 3


def test_backwards_interval_is_refused_and_empty_ones_ignored() -> None:
    with pytest.raises(ContractError, match=r"ends .* before it starts") as info:
        evaluate(attributed(hb("api")), truth(("10.0.0.2", "api", 10 * S, 5 * S)))
    assert (info.value.row, info.value.column) == (1, "to_ns")

    owners = truth(("10.0.0.2", "ghost", 10 * S, 10 * S), ("10.0.0.2", "api", 10 * S, None))
    report = evaluate(attributed(hb("api")), owners)
    assert report.truth_empty_ignored == 1
    assert report.flows.correct == 1


def test_missing_column_in_memory_is_a_contract_error() -> None:
    table = attributed(hb("api")).drop_columns(["remote_source"])
    with pytest.raises(ContractError, match="remote_source"):
        evaluate(table, OWNERSHIP)


def test_empty_tables_give_zero_counts_and_no_rates() -> None:
    report = evaluate(attributed(hb("api")).slice(0, 0), truth())
    assert report.flows.rows == 0
    assert report.flows.misattributed_pct is None
    assert report.edges.false_pct is None
    assert "-" in format_report(report)
    json.dumps(report.to_dict())


def test_report_to_dict_is_json_and_complete() -> None:
    report = evaluate(attributed(hb("api"), ev("db"), none()), OWNERSHIP)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["flows"]["misattributed"] == 1
    assert data["flows_by_source"]["event"]["misattributed"] == 1
    assert data["edges"]["false"] == 1
    assert data["time_column"] == "start_ns"
    assert data["worst_false_edges"][0]["callee"] == "db"
    assert set(data["flows_by_source"]) == {"heartbeat", "event", "unattributed"}


def test_side_by_side_puts_methods_in_aligned_columns() -> None:
    heartbeat = evaluate(attributed(hb("api"), none(), hb("api")), OWNERSHIP)
    event = evaluate(attributed(ev("db"), ev("api"), ev("api")), OWNERSHIP)
    text = format_side_by_side({"heartbeat": heartbeat, "event": event})
    lines = text.splitlines()
    assert lines[0].split() == ["heartbeat", "event"]
    misattributed = next(line for line in lines if line.startswith("misattributed flows"))
    assert misattributed.split()[-4:] == ["0", "(0%)", "1", "(33.3%)"]
    false_edges = next(line for line in lines if line.startswith("false edges"))
    assert false_edges.split()[-4:] == ["0", "(0%)", "1", "(50%)"]
    # Every line is as wide as the header: the columns line up.
    assert len({len(line) for line in lines}) == 1


# --- the CLI, on real files ---------------------------------------------------------------


def write_inputs(tmp_path: Path) -> tuple[Path, Path]:
    a = tmp_path / "attributed.parquet"
    t = tmp_path / "truth.csv"
    pq.write_table(
        attributed(hb("api"), ev("db"), none(), hb("db", start_ns=25 * S, local_workload="cron")), a
    )
    t.write_text(f"ip,workload,from_ns,to_ns\n10.0.0.2,api,0,{20 * S}\n10.0.0.2,db,{20 * S},\n")
    return a, t


def test_cli_prints_a_table(tmp_path: Path) -> None:
    a, t = write_inputs(tmp_path)
    result = CliRunner().invoke(main, ["eval", "--attributed", str(a), "--truth", str(t)])
    assert result.exit_code == 0, result.output
    assert "misattributed (% of rows)" in result.output
    line = next(x for x in result.output.splitlines() if x.startswith("misattributed"))
    assert line.split()[4:6] == ["1", "(25%)"]  # all: 1 of 4 rows
    assert "worst false edges" in result.output


def test_cli_json_and_out_file(tmp_path: Path) -> None:
    a, t = write_inputs(tmp_path)
    out = tmp_path / "reports" / "eval.json"
    args = ["eval", "--attributed", str(a), "--truth", str(t), "--json", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed == json.loads(out.read_text())
    assert printed["flows"]["rows"] == 4
    assert printed["flows"]["correct"] == 2
    assert printed["flows"]["misattributed"] == 1
    assert printed["flows"]["unattributed"] == 1


def test_cli_out_without_json_still_prints_the_table(tmp_path: Path) -> None:
    a, t = write_inputs(tmp_path)
    out = tmp_path / "eval.json"
    args = ["eval", "--attributed", str(a), "--truth", str(t), "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "edges (caller -> callee)" in result.output
    assert json.loads(out.read_text())["edges"]["false"] == 1


def test_cli_missing_column_names_file_and_column_and_exits_2(tmp_path: Path) -> None:
    a, t = write_inputs(tmp_path)
    broken = tmp_path / "broken.parquet"
    pq.write_table(pq.read_table(a).drop_columns(["remote_source"]), broken)
    result = CliRunner().invoke(main, ["eval", "--attributed", str(broken), "--truth", str(t)])
    assert result.exit_code == 2
    assert str(broken) in result.output
    assert "remote_source" in result.output
    assert "Traceback" not in result.output


def test_cli_bad_truth_value_names_row_and_exits_2(tmp_path: Path) -> None:
    a, _ = write_inputs(tmp_path)
    t = tmp_path / "truth.csv"
    t.write_text("ip,workload,from_ns,to_ns\n10.0.0.2,api,0,\n10.0.0.2,db,soon,\n")
    result = CliRunner().invoke(main, ["eval", "--attributed", str(a), "--truth", str(t)])
    assert result.exit_code == 2
    assert "row 2" in result.output and "from_ns" in result.output


def test_cli_overlapping_truth_exits_2_naming_file_and_ip(tmp_path: Path) -> None:
    a, _ = write_inputs(tmp_path)
    t = tmp_path / "truth.csv"
    t.write_text("ip,workload,from_ns,to_ns\n10.0.0.2,api,0,\n10.0.0.2,db,5,\n")
    result = CliRunner().invoke(main, ["eval", "--attributed", str(a), "--truth", str(t)])
    assert result.exit_code == 2
    assert str(t) in result.output and "10.0.0.2" in result.output


def test_cli_missing_file_exits_2(tmp_path: Path) -> None:
    _, t = write_inputs(tmp_path)
    missing = tmp_path / "nope.parquet"
    result = CliRunner().invoke(main, ["eval", "--attributed", str(missing), "--truth", str(t)])
    assert result.exit_code == 2
    assert str(missing) in result.output


def test_truth_schema_is_the_contracts() -> None:
    # The helper above builds the contract's truth columns but the optional narrowing ones,
    # so the tests use the same shape a simulator writes.
    assert tuple(truth(("10.0.0.2", "a", 0, None)).column_names) == TRUTH.names[:4]
    assert TRUTH.names[4:] == ("exporter", "port")


def test_every_eval_option_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "evaluation.md").read_text()
    flags = [opt for p in eval_command.params for opt in p.opts if opt.startswith("--")]
    assert flags, "the command has options"
    undocumented = [f for f in flags if f"`{f}" not in doc]
    assert not undocumented, f"options missing from docs/evaluation.md: {undocumented}"


def test_cli_csv_input_with_true_start_is_judged_at_the_true_start(tmp_path: Path) -> None:
    _, t = write_inputs(tmp_path)
    a = tmp_path / "attributed.csv"
    table = attributed(
        hb("api", start_ns=20 * S + 1, sim_true_start_ns=20 * S - 1),  # right at the true time
        extra={"sim_true_start_ns": pa.int64()},
    )
    pacsv.write_csv(table, a)
    args = ["eval", "--attributed", str(a), "--truth", str(t), "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["time_column"] == "sim_true_start_ns"
    assert (report["flows"]["correct"], report["flows"]["misattributed"]) == (1, 0)


def test_cli_unwritable_out_exits_2_naming_the_flag(tmp_path: Path) -> None:
    a, t = write_inputs(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "report.json"  # its parent is a file
    args = ["eval", "--attributed", str(a), "--truth", str(t), "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "--out" in result.output and "Traceback" not in result.output
