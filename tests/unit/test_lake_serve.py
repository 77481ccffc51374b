"""Queries over the lake: only the window's partitions are read, copies count once, and
`flowtrail serve --lake` answers over HTTP exactly what `flowtrail query --lake` prints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from flowtrail.engine.replay import replay
from flowtrail.query.command import query
from flowtrail.query.lake import files_in_window
from flowtrail.query.queries import Window
from flowtrail.sim.simulation import simulate
from flowtrail.store import Lake, Store
from flowtrail.store.lake import HOUR_NS


@pytest.fixture(scope="module")
def rows() -> pa.Table:
    """Attributed rows spread over three hours."""
    sim = simulate("churny", 7, flows=3_000)
    t = replay(sim.flows, sim.events, sim.regions).table
    shift = pa.array((np.arange(t.num_rows) % 3) * HOUR_NS, pa.int64())
    for name in ("start_ns", "end_ns", "received_ns", "attributed_ns"):
        t = t.set_column(t.column_names.index(name), name, pc.add(t.column(name), shift))
    return t


@pytest.fixture(scope="module")
def places(rows: pa.Table, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The rows once in a store, and in a lake written by two "nodes" where the second
    stored a tenth of the first's rows again (a takeover after a node was killed)."""
    root = tmp_path_factory.mktemp("lake-serve")
    with Store(root / "store.duckdb") as store:
        store.write(rows)
    lake = Lake(root / "lake")
    half = rows.num_rows // 2
    lake.write(rows.slice(0, half), batch_id="node-a-1")
    lake.write(rows.slice(half), batch_id="node-b-1")
    lake.write(rows.slice(half - rows.num_rows // 10, rows.num_rows // 10), batch_id="node-b-2")
    return root / "store.duckdb", root / "lake"


def cli(*args: str) -> object:
    done = CliRunner().invoke(query, [*args, "--format", "json"])
    assert done.exit_code == 0, done.output
    return json.loads(done.output)


@pytest.mark.parametrize("sub", ["dependencies", "top-talkers", "health", "exporters"])
def test_copies_across_nodes_count_once(places: tuple[Path, Path], sub: str) -> None:
    db, lake = places
    assert cli(sub, "--lake", str(lake)) == cli(sub, "--db", str(db))


def test_flows_lists_each_row_once(places: tuple[Path, Path], rows: pa.Table) -> None:
    _, lake = places
    got = cli("flows", "--lake", str(lake), "--limit", str(rows.num_rows))
    assert isinstance(got, list)
    keys = {(r["exporter"], r["flow_id"], r["state"], r["end_ns"]) for r in got}
    assert len(got) == len(keys) == rows.num_rows


def test_a_window_reads_only_its_hours(
    places: tuple[Path, Path], rows: pa.Table, tmp_path: Path
) -> None:
    db, shared = places
    lake = tmp_path / "lake"
    shutil.copytree(shared, lake)
    first_hour = int(pc.min(rows.column("end_ns")).as_py()) // HOUR_NS * HOUR_NS
    one_hour = Window(first_hour, first_hour + HOUR_NS)
    files = files_in_window(lake, one_hour)
    hour = datetime.fromtimestamp(first_hour // 10**9, UTC)
    assert files
    for f in files:
        assert Path(f).parent.name == f"hour={hour.hour}", f
        assert Path(f).parent.parent.name == f"date={hour:%Y-%m-%d}", f
    everything = files_in_window(lake, Window())
    assert len(everything) > len(files)
    # A broken file in another hour is never opened by a question about the first hour.
    other = sorted(set(everything) - set(files))[0]
    Path(other).with_name("part-broken.parquet").write_bytes(b"not parquet")
    since, until = str(first_hour), str(first_hour + HOUR_NS)
    window = ("--since", since, "--until", until)
    assert cli("dependencies", "--lake", str(lake), *window) == cli(
        "dependencies", "--db", str(db), *window
    )
    broken = CliRunner().invoke(query, ["dependencies", "--lake", str(lake)])
    assert broken.exit_code == 2 and "query failed" in broken.output


def test_serve_answers_like_query(places: tuple[Path, Path], tmp_path: Path) -> None:
    _, lake = places
    port_file = tmp_path / "port"
    argv = ["serve", "--lake", str(lake), "--listen", "127.0.0.1:0", "--port-file", str(port_file)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowtrail", *argv],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().endswith("\n")):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        base = f"http://127.0.0.1:{int(port_file.read_text())}"
        for sub in ("dependencies", "health"):
            with urllib.request.urlopen(f"{base}/api/{sub}", timeout=30) as r:
                assert json.load(r) == cli(sub, "--lake", str(lake)), sub
        with urllib.request.urlopen(f"{base}/", timeout=30) as r:
            assert b"flowtrail" in r.read()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode in (0, -15)


def test_a_directory_that_is_no_lake_is_refused(tmp_path: Path) -> None:
    (tmp_path / "date=2026-01-01" / "hour=1").mkdir(parents=True)
    done = CliRunner().invoke(query, ["dependencies", "--lake", str(tmp_path)])
    assert done.exit_code == 2 and "no partitions" in done.output


def test_serving_other_hosts_needs_tls_and_read_tokens(places: tuple[Path, Path]) -> None:
    """Off loopback, `serve` refuses to start without TLS and read tokens (the query API then
    asks other hosts for a read token: tests/e2e/test_fleet_auth.py, on the same server)."""
    from flowtrail.cli import main

    _, lake = places
    serve = ["serve", "--lake", str(lake)]
    bare = CliRunner().invoke(main, [*serve, "--listen", "0.0.0.0:0"])
    assert bare.exit_code == 2 and "--tls-cert, --tls-key and --tokens" in bare.output
    half = CliRunner().invoke(main, [*serve, "--tls-cert", "c.pem"])
    assert half.exit_code == 2 and "go together" in half.output
