"""The per-batch store's segment files (store format 3): the extras rendered as the per-row
store renders them, small segments merged, files nobody names removed, a format-2 store
migrated in place, a moved store still readable. Real DuckDB, real files."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flowtrail.api import QueryAPI
from flowtrail.engine.replay import replay
from flowtrail.query.command import _open
from flowtrail.query.queries import Window, dependencies
from flowtrail.schema import ATTRIBUTED
from flowtrail.sim.simulation import simulate
from flowtrail.store import PER_BATCH, PER_ROW, Store
from flowtrail.store.columns import create_table_sql, projection_sql
from flowtrail.store.duck import MERGE_FAN_IN
from flowtrail.store.segments import PYTHON_JSON_MAX

KEY = ["exporter", "flow_id", "state", "end_ns"]


@pytest.fixture(scope="module")
def attributed() -> pa.Table:
    sim = simulate("churny", 4, flows=3_000)
    return replay(sim.flows, sim.events, sim.regions).table


def _sorted(t: pa.Table) -> pa.Table:
    return t.sort_by([(k, "ascending") for k in KEY])


def _files(path: Path) -> set[str]:
    return {p.name for p in path.with_name(path.name + ".segments").iterdir()}


def _catalogued(store: Store) -> set[str]:
    cur = store.cursor()
    try:
        return {r[0] for r in cur.execute("SELECT file FROM flowtrail_segments").fetchall()}
    finally:
        cur.close()


def test_extras_are_the_json_the_per_row_store_writes(tmp_path: Path, attributed: pa.Table) -> None:
    """The per-row store renders extras with DuckDB's to_json over every row; the segment
    store renders distinct values (in Python for few text/integer/boolean values, DuckDB
    otherwise). Both must write the same text, for awkward values of every kind."""
    n = attributed.num_rows
    rng = np.random.default_rng(7)
    awkward = ['say "hi"', "back\\slash", "line\nbreak", "tab\t", "\x01", "é", "😀", "", None]
    t = attributed.select([c.name for c in ATTRIBUTED.columns])
    t = t.append_column("reason", pa.array([awkward[i % len(awkward)] for i in range(n)]))
    t = t.append_column('o\'dd "name"', pa.array(rng.integers(-3, 3, n), pa.int32()))
    t = t.append_column("ratio", pa.array(np.where(rng.random(n) < 0.1, np.nan, rng.random(n))))
    t = t.append_column("flag", pa.array([None if i % 5 == 0 else i % 2 == 0 for i in range(n)]))
    t = t.append_column("unique_id", pa.array(np.arange(n) * 7919))  # > PYTHON_JSON_MAX values
    assert n > PYTHON_JSON_MAX
    with Store(tmp_path / "r.duckdb", idempotence=PER_ROW) as per_row:
        per_row.write(t)
        want = _sorted(per_row.read())
    with Store(tmp_path / "b.duckdb", idempotence=PER_BATCH) as per_batch:
        per_batch.write(t)
        got = _sorted(per_batch.read())
    assert got.column("extra").to_pylist() == want.column("extra").to_pylist()
    assert json.loads(got.column("extra")[0].as_py())['o\'dd "name"'] in range(-3, 3)
    assert got.drop_columns(["extra"]).equals(want.drop_columns(["extra"]))


def test_small_batches_are_merged_and_each_row_is_kept_once(
    tmp_path: Path, attributed: pa.Table
) -> None:
    path = tmp_path / "s.duckdb"
    batches = [attributed.slice(i * 50, 50) for i in range(3 * MERGE_FAN_IN + 3)]
    with Store(path, idempotence=PER_BATCH) as store:
        for i, b in enumerate(batches):
            assert store.write_named(b, f"n{i}") == 50
        files = _catalogued(store)
        # 27 writes of one size class: three merges of 8, three writes left on their own.
        assert len(files) == 6
        assert all(store.has(f"n{i}") for i in range(len(batches)))
        assert store.write_named(batches[0], "n0") == 0  # names outlive the merges
        back = _sorted(store.read())
        dependencies(store.cursor())
    assert back.equals(_sorted(_through_per_row(batches, tmp_path)))
    # Merged-away files wait out a grace period for running queries; reopening (no query
    # can be running) removes them, and leaves exactly the catalogued files.
    with Store(path) as again:
        assert _files(path) == _catalogued(again) == files
        assert again.count() == sum(b.num_rows for b in batches)


def _through_per_row(batches: list[pa.Table], tmp_path: Path) -> pa.Table:
    """The same batches through a per-row store: what reading them back must give."""
    with Store(tmp_path / "reference.duckdb") as ref:
        for b in batches:
            ref.write(b)
        return ref.read()


def test_files_no_commit_names_are_removed_on_opening(tmp_path: Path, attributed: pa.Table) -> None:
    """What a kill between a segment's rename and its commit leaves (tests/unit/
    test_store_crash.py does that with real kills; here the leftovers are placed exactly)."""
    path = tmp_path / "c.duckdb"
    with Store(path, idempotence=PER_BATCH) as store:
        store.write_named(attributed.slice(0, 100), "kept")
        kept = _catalogued(store)
    segments = path.with_name(path.name + ".segments")
    (segments / "0123456789abcdef.parquet").write_bytes(next(iter(segments.iterdir())).read_bytes())
    (segments / ".tmp-feedbeef.parquet").write_bytes(b"half a file")
    with Store(path) as store:
        assert _files(path) == kept
        assert store.count() == 100


def test_a_format_2_store_is_migrated_in_place(tmp_path: Path, attributed: pa.Table) -> None:
    """A per-batch store as the previous flowtrail left it (rows in a DuckDB table) keeps its
    rows and names, and takes new batches as segments."""
    path = tmp_path / "two.duckdb"
    old = attributed.slice(0, 200)
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE flowtrail_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute(
        "INSERT INTO flowtrail_meta VALUES ('store_format', '2'), ('contract_version', '3')"
    )
    con.execute(create_table_sql("flows", with_key=False))
    con.execute(
        "CREATE TABLE flowtrail_batches (name VARCHAR PRIMARY KEY, stored_rows BIGINT, "
        "stored_ns BIGINT)"
    )
    con.register("b", old)
    con.execute(f"INSERT INTO flows BY NAME SELECT {projection_sql(old, with_key=False)} FROM b")
    con.execute("INSERT INTO flowtrail_batches VALUES ('old', 200, 1)")
    con.close()
    # Read as it is, untouched, by `flowtrail query`.
    reader, relation = _open(str(path), None, Window())
    assert reader.execute(f"SELECT count(*) FROM {relation}").fetchall() == [(200,)]
    reader.close()
    with Store(path) as store:
        assert store.idempotence == PER_BATCH and store.format == "3"
        assert store.has("old") and store.write_named(old, "old") == 0
        assert store.write_named(attributed.slice(200, 300), "new") == 300
        names = [r[0] for r in store.cursor().execute("DESCRIBE flows").fetchall()]
        back = _sorted(store.read())
    assert names == [*ATTRIBUTED.names, "extra"]
    assert back.num_rows == 500
    reader, relation = _open(str(path), None, Window())
    assert reader.execute(f"SELECT count(*) FROM {relation}").fetchall() == [(500,)]
    reader.close()


def test_a_moved_store_is_read_where_it_is_now(tmp_path: Path, attributed: pa.Table) -> None:
    first = tmp_path / "a" / "m.duckdb"
    with Store(first, idempotence=PER_BATCH) as store:
        store.write(attributed.slice(0, 100))
    moved = tmp_path / "b"
    (tmp_path / "a").rename(moved)
    reader, relation = _open(
        str(moved / "m.duckdb"), None, Window()
    )  # read-only: nothing rewritten
    assert reader.execute(f"SELECT count(*) FROM {relation}").fetchall() == [(100,)]
    reader.close()
    with Store(moved / "m.duckdb") as store:
        assert store.count() == 100
        store.write(attributed.slice(100, 10))
    raw = duckdb.connect(str(moved / "m.duckdb"), read_only=True)  # the stored view, too
    assert raw.execute("SELECT count(*) FROM flows").fetchall() == [(110,)]
    raw.close()


def test_a_merge_that_fails_does_not_fail_the_stored_write(
    tmp_path: Path, attributed: pa.Table
) -> None:
    """The write is committed before merging starts: reporting the merge's error would make
    the writer (the collector) store the same rows again under a new name."""
    path = tmp_path / "m.duckdb"
    with Store(path, idempotence=PER_BATCH) as store:
        for i in range(MERGE_FAN_IN - 1):
            store.write_named(attributed.slice(i * 50, 50), f"n{i}")
        victim = sorted(_catalogued(store))[0]
        (path.with_name(path.name + ".segments") / victim).write_bytes(b"not parquet any more")
        assert store.write_named(attributed.slice(1000, 50), "last") == 50
        assert store.has("last")
        assert store.stats["merge_failures"] == 1
        assert store.last_merge_error is not None
        assert len(_catalogued(store)) == MERGE_FAN_IN  # nothing merged, nothing lost


def _by_time(attributed: pa.Table, parts: int) -> list[pa.Table]:
    """The rows in end_ns order, cut into `parts` batches: each batch's segment spans its own
    stretch of time, as a collector's consecutive writes do."""
    rows = attributed.sort_by("end_ns")
    size = -(-rows.num_rows // parts)
    return [rows.slice(i * size, size) for i in range(parts)]


def test_a_window_opens_only_the_segments_it_overlaps(tmp_path: Path, attributed: pa.Table) -> None:
    """The catalog's end_ns span of each segment decides which files a windowed query reads.
    Proof that the others are not opened at all: the oldest segment's file is gone, and a
    window after it still answers (the store's own readers and `flowtrail query --db`), while
    a window over all time fails."""
    path = tmp_path / "w.duckdb"
    batches = _by_time(attributed, 3)
    recent = Window(pc.min(batches[2]["end_ns"]).as_py() + 1, pc.max(batches[2]["end_ns"]).as_py())
    with Store(path, idempotence=PER_BATCH) as store:
        for i, b in enumerate(batches):
            store.write_named(b, f"t{i}")
        cur = store.cursor()
        want = dependencies(cur, recent, source="flows")
        in_window = cur.execute(f"SELECT count(*) FROM flows WHERE {recent.sql()}").fetchall()
        oldest = cur.execute(
            "SELECT file FROM flowtrail_segments ORDER BY max_end_ns LIMIT 1"
        ).fetchall()[0][0]
        (path.with_name(path.name + ".segments") / oldest).unlink()
        relation = store.relation(cur, recent)
        assert dependencies(cur, recent, source=relation).equals(want)
        assert cur.execute(f"SELECT count(*) FROM {relation} WHERE {recent.sql()}").fetchall() == (
            in_window
        )
        with pytest.raises(duckdb.Error):
            cur.execute(f"SELECT count(*) FROM {store.relation(cur, Window())}").fetchall()
        cur.close()
        # The query API as `flowtrail up` serves it: each request reads its window's view.
        api = QueryAPI(store.cursor, "127.0.0.1", 0, source=store)
        api.start()
        try:
            span = f"since={recent.since_ns}&until={recent.until_ns}"
            with urllib.request.urlopen(f"{api.url()}/api/dependencies?{span}") as answer:
                edges = json.loads(answer.read())
            assert sum(e["flows"] for e in edges) == pc.sum(want["flows"]).as_py() > 0
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{api.url()}/api/dependencies")
            assert oldest in refused.value.read().decode()  # all time: the file is asked for
        finally:
            api.stop()
    reader, relation = _open(str(path), None, recent)
    try:
        assert dependencies(reader, recent, source=relation).equals(want)
    finally:
        reader.close()
    reader, relation = _open(str(path), None, Window())
    try:
        with pytest.raises(duckdb.Error):
            reader.execute(f"SELECT count(*) FROM {relation}").fetchall()
    finally:
        reader.close()


def test_readers_during_merges_see_every_stored_row_once(
    tmp_path: Path, attributed: pa.Table
) -> None:
    """Small writes on one thread (a merge every MERGE_FAN_IN of them), queries on another:
    each query sees every batch acknowledged before it began and none twice, through the
    stored view and through a window's view alike (a merge swaps files in one commit)."""
    path = tmp_path / "r.duckdb"
    size, writes = 40, 6 * MERGE_FAN_IN
    batches = [attributed.slice(i * size, size) for i in range(writes)]
    acked = [0]
    failure: list[BaseException] = []
    with Store(path, idempotence=PER_BATCH) as store:

        def write() -> None:
            try:
                for i, b in enumerate(batches):
                    store.write_named(b, f"r{i}")
                    acked[0] = (i + 1) * size
            except BaseException as exc:  # reported by the main thread
                failure.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        cur = store.cursor()
        seen = 0
        try:
            while writer.is_alive() or seen < writes * size:
                for windowed in (False, True):
                    before = acked[0]
                    # The window's view is the catalog as of now: made after `before`.
                    relation = store.relation(cur, Window()) if windowed else "flows"
                    n, distinct = cur.execute(
                        f"SELECT count(*), count(DISTINCT ({', '.join(KEY)})) FROM {relation}"
                    ).fetchall()[0]
                    after = acked[0]
                    assert n == distinct, "a row seen twice"
                    assert before <= n <= after + size, (windowed, before, n, after)
                    seen = n
        finally:
            writer.join()
            cur.close()
        assert not failure, failure
        assert len(_catalogued(store)) < writes // 2  # merges ran while the queries did
