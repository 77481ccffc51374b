"""The DuckDB store: faithful round trip, idempotent writes, retention, clear refusals."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flowtrail.engine.replay import replay
from flowtrail.errors import ContractError, InputError
from flowtrail.query.queries import attribution_health, dependencies
from flowtrail.schema import ATTRIBUTED, CONTRACT_VERSION
from flowtrail.sim.simulation import simulate
from flowtrail.store import PER_BATCH, PER_ROW, Store
from flowtrail.store.columns import projection_sql, quote, sql_type
from flowtrail.store.duck import open_database

KEY = ["exporter", "flow_id", "state", "end_ns"]
HOUR = 3600 * 10**9


@pytest.fixture(scope="module")
def attributed() -> pa.Table:
    """Realistic attributed rows: a simulated fleet through the real engine."""
    sim = simulate("churny", 3, flows=6_000)
    return replay(sim.flows, sim.events, sim.regions).table


def _sorted(t: pa.Table) -> pa.Table:
    return t.sort_by([(k, "ascending") for k in KEY])


@pytest.mark.parametrize("mode", [PER_ROW, PER_BATCH])
def test_round_trip_keeps_every_contract_column_and_the_extras(
    tmp_path: Path, attributed: pa.Table, mode: str
) -> None:
    with Store(tmp_path / "f.duckdb", idempotence=mode) as store:
        assert store.write(attributed) == attributed.num_rows
        back = _sorted(store.read())
    want = _sorted(attributed)
    for name in ATTRIBUTED.names:
        assert back.column(name).type == ATTRIBUTED.column(name).type, name
        assert back.column(name).to_pylist() == want.column(name).to_pylist(), name
    extras = [json.loads(x) for x in back.column("extra").to_pylist()]
    assert [e["sim_conn_id"] for e in extras] == want.column("sim_conn_id").to_pylist()
    assert [e["sim_true_start_ns"] for e in extras] == want.column("sim_true_start_ns").to_pylist()


def test_writes_are_idempotent_per_exporter_flow_state_end(
    tmp_path: Path, attributed: pa.Table
) -> None:
    n = attributed.num_rows
    with Store(tmp_path / "f.duckdb") as store:
        first = store.write(attributed.slice(0, n // 2 + 100))
        # Overlapping resend (what a restarted collector replays): only the new rows land.
        second = store.write(attributed.slice(n // 2))
        assert first == n // 2 + 100
        assert second == n - n // 2 - 100
        assert store.write(attributed) == 0
        assert store.count() == n
        assert store.stats["rows_duplicate"] == 100 + n
        # Duplicates inside one batch count once.
        doubled = pa.concat_tables([attributed.slice(0, 10), attributed.slice(0, 10)])
        assert Store(tmp_path / "g.duckdb").write(doubled) == 10


def test_a_later_snapshot_of_the_same_flow_is_a_new_row(
    tmp_path: Path, attributed: pa.Table
) -> None:
    row = attributed.slice(0, 1)
    later = row.set_column(
        row.column_names.index("end_ns"), "end_ns", pc.add(row.column("end_ns"), 1)
    )
    other = "active" if row.column("state")[0].as_py() == "closed" else "closed"
    flipped = row.set_column(row.column_names.index("state"), "state", pa.array([other]))
    with Store(tmp_path / "f.duckdb") as store:
        assert store.write(row) == 1
        assert store.write(later) == 1
        assert store.write(flipped) == 1
        assert store.write(pa.concat_tables([row, later, flipped])) == 0


def test_key_parts_cannot_run_together(tmp_path: Path, attributed: pa.Table) -> None:
    """exporter 'ab' + flow 'c' and exporter 'a' + flow 'bc' are different rows."""
    two = attributed.slice(0, 2)
    two = two.set_column(two.column_names.index("exporter"), "exporter", pa.array(["ab", "a"]))
    two = two.set_column(two.column_names.index("flow_id"), "flow_id", pa.array(["c", "bc"]))
    two = two.set_column(two.column_names.index("end_ns"), "end_ns", pa.array([5, 5], pa.int64()))
    two = two.set_column(two.column_names.index("state"), "state", pa.array(["closed"] * 2))
    with Store(tmp_path / "f.duckdb") as store:
        assert store.write(two) == 2


@pytest.mark.parametrize("mode", [PER_ROW, PER_BATCH])
def test_retention_deletes_exactly_the_rows_older_than_it(
    tmp_path: Path, attributed: pa.Table, mode: str
) -> None:
    end = np.asarray(attributed.column("end_ns"))
    now = int(np.median(end)) + 2 * HOUR
    with Store(tmp_path / "f.duckdb", retention_ns=2 * HOUR, idempotence=mode) as store:
        store.write(attributed)
        deleted = store.apply_retention(now)
        assert deleted == int((end < now - 2 * HOUR).sum())
        assert 0 < deleted < attributed.num_rows
        left = np.asarray(store.read().column("end_ns"))
        assert left.min() >= now - 2 * HOUR
        assert store.apply_retention(now) == 0
    with Store(tmp_path / "g.duckdb", retention_ns=None) as keep_all:
        keep_all.write(attributed)
        assert keep_all.apply_retention(int(end.max()) * 2) == 0


def test_reopen_keeps_rows_and_idempotence(tmp_path: Path, attributed: pa.Table) -> None:
    path = tmp_path / "f.duckdb"
    with Store(path) as store:
        store.write(attributed)
    with Store(path) as again:
        assert again.count() == attributed.num_rows
        assert again.write(attributed) == 0


def test_a_store_of_contract_version_1_gains_the_later_columns(
    tmp_path: Path, attributed: pa.Table
) -> None:
    """A store written before flows had established_ns and outcome still opens and takes rows."""
    path = tmp_path / "old.duckdb"
    later = ("established_ns", "outcome")
    con = duckdb.connect(str(path))  # version 1's layout, with rows, as an older flowtrail left it
    old_columns = ", ".join(
        f"{quote(c.name)} {sql_type(c)}" for c in ATTRIBUTED.columns if c.name not in later
    )
    con.execute(f"CREATE TABLE flows ({old_columns}, extra VARCHAR, row_key UHUGEINT PRIMARY KEY)")
    con.execute("CREATE TABLE flowtrail_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute(
        "INSERT INTO flowtrail_meta VALUES ('store_format', '1'), ('contract_version', '1')"
    )
    old = attributed.slice(0, 10).drop_columns(list(later))
    con.register("b", old)
    con.execute(
        f"INSERT INTO flows BY NAME SELECT * EXCLUDE ({', '.join(later)}) "
        f"FROM (SELECT {projection_sql(old)} FROM b)"
    )
    con.close()
    with Store(path) as store:
        assert store.write(attributed.slice(10, 5)) == 5
        back = store.read()
        version = (
            store.cursor()
            .execute("SELECT value FROM flowtrail_meta WHERE key = 'contract_version'")
            .fetchall()
        )
    assert back.column_names == [*ATTRIBUTED.names, "extra"]
    assert back.num_rows == 15 and back.column("outcome").null_count == 15
    assert version == [(str(CONTRACT_VERSION),)]


@pytest.mark.parametrize("mode", [PER_ROW, PER_BATCH])
def test_missing_optional_columns_are_stored_as_null(
    tmp_path: Path, attributed: pa.Table, mode: str
) -> None:
    slim = attributed.select([c.name for c in ATTRIBUTED.columns if c.required]).slice(0, 50)
    with Store(tmp_path / "f.duckdb", idempotence=mode) as store:
        assert store.write(slim) == 50
        back = store.read()
    assert back.column("srtt_us").null_count == 50
    assert back.column("extra").null_count == 50


@pytest.mark.parametrize("mode", [PER_ROW, PER_BATCH])
def test_bad_batches_are_refused_and_store_nothing(
    tmp_path: Path, attributed: pa.Table, mode: str
) -> None:
    batch = attributed.slice(0, 20)
    bad_source = batch.set_column(
        batch.column_names.index("remote_source"), "remote_source", pa.array(["guess"] * 20)
    )
    with Store(tmp_path / "f.duckdb", idempotence=mode) as store:
        with pytest.raises(ContractError, match=r"row 1.*remote_source"):
            store.write(bad_source)
        with pytest.raises(ContractError, match="missing required"):
            store.write(batch.drop_columns(["attributed_ns"]))
        with pytest.raises(ContractError, match="reserved"):
            store.write(batch.append_column("row_key", pa.array(range(20))))
        assert store.count() == 0
        assert store.write(batch) == 20  # the store carries on


def test_a_database_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE flows (x INTEGER)")
    con.close()
    with pytest.raises(InputError, match="not a flowtrail store"):
        Store(other)
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(b"this is no database" * 100)
    with pytest.raises(InputError, match=r"junk\.duckdb"):
        Store(junk)
    with pytest.raises(InputError, match="no such database file"):
        open_database(tmp_path / "absent.duckdb", read_only=True)
    with pytest.raises(InputError, match="retention"):
        Store(tmp_path / "r.duckdb", retention_ns=0)


@pytest.mark.parametrize("mode", [PER_ROW, PER_BATCH])
def test_queries_on_cursors_run_while_another_thread_writes(
    tmp_path: Path, attributed: pa.Table, mode: str
) -> None:
    """What the collector and its query API do: one writer thread, readers on cursors."""
    errors: list[BaseException] = []
    seen: list[int] = []
    with Store(tmp_path / "f.duckdb", idempotence=mode) as store:
        done = threading.Event()

        def read() -> None:
            cur = store.cursor()
            try:
                while not done.is_set():
                    dependencies(cur)
                    seen.append(int(attribution_health(cur).column("rows")[0].as_py()))
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)
            finally:
                cur.close()

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for start in range(0, attributed.num_rows, 500):
                store.write(attributed.slice(start, 500))
        finally:
            done.set()
            reader.join(timeout=60)
        assert not errors, errors
        assert store.count() == attributed.num_rows
    assert seen == sorted(seen)  # each read saw a committed prefix, never less than before
    assert len(seen) >= 1


def test_a_store_idempotent_per_batch_stores_each_named_batch_once(
    tmp_path: Path, attributed: pa.Table
) -> None:
    path = tmp_path / "b.duckdb"
    n = attributed.num_rows
    first, second = attributed.slice(0, n // 2), attributed.slice(n // 2)
    with Store(path, idempotence=PER_BATCH) as store:
        assert store.idempotence == PER_BATCH
        assert not store.has("one")
        assert store.write_named(first, "one") == first.num_rows
        assert store.has("one") and not store.has("two")
        # The same name again (a writer replaying its log) stores nothing, counted.
        assert store.write_named(first, "one") == 0
        assert store.stats["rows_duplicate"] == first.num_rows
        assert store.write_named(second, "two") == second.num_rows
        assert store.count() == n
        # No per-row key: the rows are the contract's columns and `extra`, nothing else.
        names = [r[0] for r in store.cursor().execute("DESCRIBE flows").fetchall()]
        assert names == [*ATTRIBUTED.names, "extra"]
        # Unnamed writes get fresh names: a per-batch store does not look at the rows.
        assert store.write(first.slice(0, 3)) == 3
        assert store.count() == n + 3
    with Store(path) as again:  # the mode is the file's, whatever the opener asks
        assert again.idempotence == PER_BATCH
        assert again.has("one") and again.has("two")
        assert again.write_named(second, "two") == 0
        assert again.count() == n + 3
    back = _sorted(Store(path).read())
    assert back.num_rows == n + 3


def test_a_store_idempotent_per_row_keeps_that_and_also_answers_names(
    tmp_path: Path, attributed: pa.Table
) -> None:
    path = tmp_path / "r.duckdb"
    with Store(path) as store:
        assert store.idempotence == PER_ROW
        assert store.write_named(attributed, "a") == attributed.num_rows
        assert store.has("a")
        # Another name, the same rows: dropped by their keys.
        assert store.write_named(attributed, "b") == 0
        assert store.has("b")
    with Store(path, idempotence=PER_BATCH) as again:
        assert again.idempotence == PER_ROW
        assert again.write(attributed) == 0


def test_a_failed_named_write_leaves_neither_rows_nor_name(
    tmp_path: Path, attributed: pa.Table
) -> None:
    with Store(tmp_path / "f.duckdb", idempotence=PER_BATCH) as store:
        bad = attributed.slice(0, 20).drop_columns(["attributed_ns"])
        with pytest.raises(ContractError):
            store.write_named(bad, "x")
        assert not store.has("x") and store.count() == 0
        # Unchecked, a port that cannot be stored as one: refused as the rows' fault, and
        # the store goes on.
        store.validate_rows = False
        batch = attributed.slice(0, 20)
        i = batch.column_names.index("local_port")
        unreadable = batch.set_column(i, "local_port", pa.array(["x"] * 20))
        with pytest.raises(ContractError, match="local_port"):
            store.write_named(unreadable, "y")
        assert not store.has("y") and store.count() == 0
        # The disk refusing the segment file (its directory gone, a file in its place): the
        # sink's trouble, nothing stored, and once the directory is back the store goes on.
        segments = tmp_path / "f.duckdb.segments"
        segments.rmdir()
        segments.write_text("in the way")
        with pytest.raises(OSError):
            store.write_named(attributed.slice(0, 20), "z")
        assert not store.has("z") and store.count() == 0
        segments.unlink()
        segments.mkdir()
        assert store.write_named(attributed.slice(0, 20), "x") == 20
        assert store.write_named(attributed.slice(0, 20), "z") == 20
        assert len(list(segments.iterdir())) == 2  # nothing left behind by the failures


def test_retention_forgets_batch_names_written_before_the_cut(
    tmp_path: Path, attributed: pa.Table
) -> None:
    with Store(tmp_path / "f.duckdb", retention_ns=HOUR, idempotence=PER_BATCH) as store:
        store.write_named(attributed.slice(0, 10), "old")
        now = time.time_ns()
        store.apply_retention(now)
        assert store.has("old")  # written just now: within the retention
        store.apply_retention(now + 2 * HOUR)
        assert not store.has("old")
