"""Times on the real command line: readable UTC in tables, ns in JSON/CSV, `--since` as
1d / 1h30m / ISO 8601, and absurd numbers refused in one line with exit status 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flowtrail.engine.replay import replay
from flowtrail.sim.simulation import simulate
from flowtrail.store import Store
from flowtrail.units import format_time_ns

HUGE = "9" * 400
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def flowtrail(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowtrail", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )  # fmt: skip


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sim = simulate("calm", 3, flows=500)
    path = tmp_path_factory.mktemp("times") / "flows.duckdb"
    with Store(path, retention_ns=None) as store:
        store.write(replay(sim.flows, sim.events, sim.regions).table)
    return path


def test_table_shows_utc_times_and_json_keeps_ns(db: Path) -> None:
    as_json = flowtrail("query", "flows", "--db", str(db), "--limit", "3", "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert all(isinstance(r["end_ns"], int) for r in rows)
    table = flowtrail("query", "flows", "--db", str(db), "--limit", "3")
    assert table.returncode == 0, table.stderr
    header, _rule, *lines = table.stdout.splitlines()
    assert header.split()[:1] == ["flow_id"] and " end " in f" {header} "
    assert "end_ns" not in header and "start_ns" not in header
    for row, line in zip(rows, lines, strict=True):
        end = row["end_ns"]
        assert format_time_ns(end) in line, line
        assert str(end) not in line
        assert len(ISO_MS.findall(line)) >= 3  # start, end, attributed (and received)


@pytest.mark.parametrize("since", ["1d", "1h30m", "2026-01-01", "1970-01-01T00:00:00Z"])
def test_since_takes_days_compound_durations_and_iso(db: Path, since: str) -> None:
    done = flowtrail("query", "health", "--db", str(db), "--since", since)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("query", "health", "--db", "DB", "--since", HUGE),
        ("query", "health", "--db", "DB", "--since", HUGE + "s"),
        ("query", "health", "--db", "DB", "--until", "9" * 30 + "d"),
        ("attribute", "--flows", "DB", "--out", "x.parquet", "--max-wait", HUGE),
        ("attribute", "--flows", "DB", "--out", "x.parquet", "--max-wait", "9" * 30 + "h"),
        ("up", "--no-agent", "--data", "fresh", "--max-wait", HUGE),
    ],
)
def test_huge_numbers_are_one_line_errors(db: Path, tmp_path: Path, args: tuple[str, ...]) -> None:
    done = flowtrail(*(str(db) if a == "DB" else a for a in args), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) <= 3  # click's usage line and hint, then the error
    assert next(a for a in args if a.startswith("--") and a not in ("--db", "--flows", "--out",
        "--no-agent", "--data")) in lines[-1]  # fmt: skip
    assert not (tmp_path / "fresh").exists()
