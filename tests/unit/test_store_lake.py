"""The Parquet lake: Hive layout by region/date/hour, atomic files, readable by DuckDB."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flowtrail.engine.replay import replay
from flowtrail.errors import ContractError, InputError
from flowtrail.schema import ATTRIBUTED
from flowtrail.sim.simulation import simulate
from flowtrail.store import Lake, lake_glob

HOUR = 3600 * 10**9


@pytest.fixture(scope="module")
def attributed() -> pa.Table:
    sim = simulate("churny", 5, flows=4_000)
    t = replay(sim.flows, sim.events, sim.regions).table
    # Spread the rows over three hours so that more than one hour partition is written.
    end = t.column("end_ns")
    shift = pa.array((np.arange(t.num_rows) % 3) * HOUR, pa.int64())
    for name in ("start_ns", "end_ns", "received_ns", "attributed_ns"):
        t = t.set_column(t.column_names.index(name), name, pc.add(t.column(name), shift))
    assert pc.max(t.column("end_ns")).as_py() > pc.max(end).as_py()
    return t


def _read(root: Path) -> pa.Table:
    sql = (
        f"SELECT * FROM read_parquet('{lake_glob(root)}', hive_partitioning = true, "
        "hive_types = {'region': VARCHAR, 'hour': INTEGER, 'date': DATE})"
    )
    return duckdb.sql(sql).to_arrow_table()


def test_layout_is_region_date_hour_and_duckdb_reads_it_back(
    tmp_path: Path, attributed: pa.Table
) -> None:
    lake = Lake(tmp_path / "lake")
    files = lake.write(attributed, batch_id="b1")
    end = np.asarray(attributed.column("end_ns"))
    regions = attributed.column("region").to_pylist()
    want_parts = {
        (r, datetime.fromtimestamp(int(e) // HOUR * 3600, UTC))
        for r, e in zip(regions, end, strict=True)
    }
    got_parts = {f.relative_to(tmp_path / "lake").parts[:3] for f in files}
    assert got_parts == {
        (f"region={r}", f"date={d:%Y-%m-%d}", f"hour={d.hour}") for r, d in want_parts
    }
    assert all(f.name == "part-b1.parquet" for f in files)
    assert not list((tmp_path / "lake").rglob(".*"))  # no temp files left behind
    back = _read(tmp_path / "lake")
    assert back.num_rows == attributed.num_rows
    # Every row sits in the partition of its own region and end_ns hour.
    hours = (np.asarray(back.column("end_ns")) // HOUR) % 24
    assert (np.asarray(back.column("hour")) == hours).all()
    key = ["exporter", "flow_id", "state", "end_ns"]
    back = back.sort_by([(k, "ascending") for k in key])
    want = attributed.sort_by([(k, "ascending") for k in key])
    for name in ATTRIBUTED.names:
        assert back.column(name).to_pylist() == want.column(name).to_pylist(), name


def test_resending_a_batch_replaces_its_files(tmp_path: Path, attributed: pa.Table) -> None:
    lake = Lake(tmp_path / "lake")
    lake.write(attributed, batch_id="same")
    lake.write(attributed, batch_id="same")
    assert _read(tmp_path / "lake").num_rows == attributed.num_rows
    lake.write(attributed.slice(0, 7))  # a fresh batch id adds files
    assert _read(tmp_path / "lake").num_rows == attributed.num_rows + 7


def test_null_and_awkward_regions_round_trip(tmp_path: Path, attributed: pa.Table) -> None:
    t = attributed.slice(0, 3)
    idx = t.column_names.index("region")
    t = t.set_column(idx, "region", pa.array([None, "eu/west=1", "us-east"], pa.string()))
    Lake(tmp_path / "lake").write(t)
    back = _read(tmp_path / "lake")
    assert sorted(back.column("region").to_pylist(), key=str) == sorted(
        [None, "eu/west=1", "us-east"], key=str
    )
    assert len(list((tmp_path / "lake").iterdir())) == 3


def test_bad_input_is_refused(tmp_path: Path, attributed: pa.Table) -> None:
    lake = Lake(tmp_path / "lake")
    with pytest.raises(ContractError, match="missing required"):
        lake.write(attributed.drop_columns(["remote_source"]))
    with pytest.raises(InputError, match="batch_id"):
        lake.write(attributed, batch_id="../escape")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        Lake(tmp_path / "file")
    assert not list((tmp_path / "lake").rglob("*.parquet"))


def test_retention_drops_whole_hours_past_it_and_nothing_younger(
    tmp_path: Path, attributed: pa.Table
) -> None:
    lake = Lake(tmp_path / "lake")
    lake.write(attributed)
    (tmp_path / "lake" / "README").write_text("not a partition")  # left alone
    end = np.asarray(attributed.column("end_ns"))
    first_hour = int(end.min()) // HOUR
    # Cut one and a half hours after the first hour began: only the first hour is past it.
    now, retention = (first_hour + 1) * HOUR + HOUR // 2 + 5 * HOUR, 5 * HOUR
    removed = lake.apply_retention(now, retention)
    assert removed == len(set(attributed.column("region").to_pylist()))
    back = _read(tmp_path / "lake")
    assert back.num_rows == int((end // HOUR > first_hour).sum())
    # Every row younger than the retention survived.
    assert int((end >= now - retention).sum()) <= back.num_rows
    assert (tmp_path / "lake" / "README").exists()
    assert not [d for d in (tmp_path / "lake").rglob("*") if d.is_dir() and not any(d.iterdir())]
    assert lake.apply_retention(now, retention) == 0
    with pytest.raises(InputError, match="retention"):
        lake.apply_retention(now, 0)
