"""`flowtrail query`: formats, windows, the lake as a source, and clear refusals."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from flowtrail.engine.replay import replay
from flowtrail.query.api import parse_time
from flowtrail.query.command import query
from flowtrail.query.queries import attribution_health, dependencies, top_talkers
from flowtrail.sim.simulation import simulate
from flowtrail.store import Lake, Store

S = 1_000_000_000


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same attributed rows in a store and in a lake."""
    sim = simulate("churny", 9, flows=3_000)
    table = replay(sim.flows, sim.events, sim.regions).table
    root = tmp_path_factory.mktemp("cli")
    with Store(root / "store.duckdb") as store:
        store.write(table)
    Lake(root / "lake").write(table)
    return root / "store.duckdb", root / "lake"


def _run(*args: str) -> Result:
    return CliRunner().invoke(query, list(args))


def _db_results(db: Path) -> dict[str, list[dict[str, object]]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {
            "dependencies": dependencies(con).to_pylist(),
            "top-talkers": top_talkers(con).to_pylist(),
            "health": attribution_health(con).to_pylist(),
        }
    finally:
        con.close()


@pytest.mark.parametrize("sub", ["dependencies", "top-talkers", "health"])
def test_json_and_csv_carry_the_query_results(sources: tuple[Path, Path], sub: str) -> None:
    db = sources[0]
    want = _db_results(db)[sub]
    as_json = _run(sub, "--db", str(db), "--format", "json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output) == want
    as_csv = _run(sub, "--db", str(db), "--format", "csv")
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.DictReader(io.StringIO(as_csv.output)))
    assert len(rows) == len(want)
    assert list(rows[0]) == list(want[0])
    for got, ref in zip(rows, want, strict=True):
        for name, value in ref.items():
            text = got[name]
            if value is None:
                assert text == ""
            elif isinstance(value, float):
                assert float(text) == pytest.approx(value)
            else:
                assert text == str(value)


def test_table_format_lines_up(sources: tuple[Path, Path]) -> None:
    out = _run("top-talkers", "--db", str(sources[0]), "--limit", "4")
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split() == ["workload", "flows", "bytes_sent", "bytes_received", "bytes_total"]
    assert set(lines[1]) <= {"-", " "}
    assert len(lines) == 2 + 4
    # Numbers are right-aligned under their headers.
    assert all(len(line) == len(lines[0]) for line in lines[1:])


def test_the_lake_answers_like_the_store(sources: tuple[Path, Path]) -> None:
    db, lake = sources
    for sub in ("dependencies", "top-talkers", "health"):
        from_db = _run(sub, "--db", str(db), "--format", "json")
        from_lake = _run(sub, "--lake", str(lake), "--format", "json")
        assert from_lake.exit_code == 0, from_lake.output
        assert json.loads(from_lake.output) == json.loads(from_db.output), sub
    rows = _run("flows", "--lake", str(lake), "--format", "json", "--limit", "7")
    assert len(json.loads(rows.output)) == 7


def test_a_lake_of_contract_version_1_answers_too(tmp_path: Path) -> None:
    """Files without established_ns and outcome (written before version 2) still answer, their
    rows read as connections."""
    sim = simulate("calm", 4, flows=400)
    table = replay(sim.flows, sim.events, sim.regions).table.drop_columns(
        ["established_ns", "outcome"]
    )
    part = tmp_path / "lake" / "region=r" / "date=2026-01-01" / "hour=0"
    part.mkdir(parents=True)
    pq.write_table(table.drop_columns(["region"]), part / "old.parquet")
    deps = _run("dependencies", "--lake", str(tmp_path / "lake"), "--format", "json")
    assert deps.exit_code == 0, deps.output
    assert sum(e["flows"] for e in json.loads(deps.output)) > 0
    assert all(e["failed_attempts"] == 0 for e in json.loads(deps.output))
    for outcome, want in (("connected", 5), ("established", 5), ("attempts", 0)):
        rows = _run("flows", "--lake", str(tmp_path / "lake"), "--format", "json",
                    "--outcome", outcome, "--limit", "5")  # fmt: skip
        assert rows.exit_code == 0, rows.output
        assert len(json.loads(rows.output)) == want, outcome
    bad = _run("flows", "--lake", str(tmp_path / "lake"), "--outcome", "fine")
    assert bad.exit_code == 2 and "--outcome" in bad.output


def test_windows_as_durations_ago_and_as_ns(tmp_path: Path, sources: tuple[Path, Path]) -> None:
    now = time.time_ns()
    sim = simulate("calm", 1, flows=200)
    table = replay(sim.flows, sim.events).table.slice(0, 3)
    ends = [now - 30 * 60 * S, now - 3 * 3600 * S, now - 10 * S]
    idx = table.column_names.index("end_ns")
    table = table.set_column(idx, "end_ns", pa.array(ends, pa.int64()))
    idx = table.column_names.index("start_ns")
    table = table.set_column(idx, "start_ns", pa.array([e - S for e in ends], pa.int64()))
    db = tmp_path / "w.duckdb"
    with Store(db) as store:
        store.write(table)

    def flows(*window: str) -> list[int]:
        out = _run("flows", "--db", str(db), "--format", "json", *window)
        assert out.exit_code == 0, out.output
        return sorted(r["end_ns"] for r in json.loads(out.output))

    assert flows() == sorted(ends)
    assert flows("--since", "1h") == sorted(ends[::2])
    assert flows("--since", "1h", "--until", "1m") == [ends[0]]
    assert flows("--since", str(ends[1]), "--until", str(ends[1] + 1)) == [ends[1]]
    assert parse_time("now", "--until", 5) == 5
    assert parse_time("90s", "--since", 100 * S) == 10 * S


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["flows", "--db", "{tmp}/absent.duckdb"], "no such database file"),
        (["flows"], "exactly one of --db"),
        (["flows", "--db", "{db}", "--lake", "{tmp}"], "exactly one of --db"),
        (["flows", "--lake", "{tmp}/nowhere"], "no such directory"),
        (["flows", "--lake", "{tmp}"], "holds no partitions"),
        (["flows", "--db", "{db}", "--since", "yesterday"], "--since 'yesterday'"),
        (["flows", "--db", "{db}", "--since", "1m", "--until", "1h"], "empty window"),
        (["flows", "--db", "{db}", "--port", "99999"], "--port 99999"),
        (["flows", "--db", "{db}", "--ip", "10.1.2.300"], "--ip '10.1.2.300'"),
        (["flows", "--db", "{db}", "--limit", "0"], "--limit 0"),
        (["health", "--db", "{tmp}/plain.duckdb"], "not a flowtrail store"),
    ],
)
def test_bad_input_is_one_clear_line(
    tmp_path: Path, sources: tuple[Path, Path], args: list[str], message: str
) -> None:
    plain = duckdb.connect(str(tmp_path / "plain.duckdb"))
    plain.execute("CREATE TABLE t (x INTEGER)")
    plain.close()
    filled = [a.format(tmp=tmp_path, db=sources[0]) for a in args]
    out = _run(*filled)
    assert out.exit_code == 2, out.output
    assert message in out.output
    assert "Traceback" not in out.output


def test_every_option_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "queries.md").read_text()
    for name, command in query.commands.items():
        assert f"## `{name}`" in doc, name
        for param in command.params:
            for flag in param.opts:
                assert f"`{flag}" in doc, (name, flag)
