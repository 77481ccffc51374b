"""kill -9 during writes: the reopened store holds every acknowledged batch, whole, and no part
of any other; in a store idempotent per batch, a batch's name is stored exactly when its rows
are. A real child process, a real SIGKILL, the real DuckDB file (no fakes)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from flowtrail.errors import InputError
from flowtrail.store import PER_BATCH, PER_ROW, Store
from flowtrail.store.duck import MERGE_FAN_IN, open_database

ROWS = 40_000

WRITER = """
import sys
import numpy as np
import pyarrow as pa
from flowtrail.store import PER_BATCH, PER_ROW, Store

path, rows, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
store = Store(path, idempotence=mode)
print("open", flush=True)
j = np.arange(rows)
for i in range(10_000):
    t = 1_700_000_000_000_000_000 + i * 1_000_000_000
    batch = pa.table({
        "flow_id": pa.array([f"b{i}-{k}" for k in range(rows)]),
        "exporter": pa.array(["host-a"] * rows),
        "local_ip": pa.array(["10.0.0.1"] * rows),
        "local_port": pa.array((j % 60000).astype(np.int32)),
        "remote_ip": pa.array(["10.0.0.2"] * rows),
        "remote_port": pa.array(np.full(rows, 443, np.int32)),
        "direction": pa.array(["outbound"] * rows),
        "start_ns": pa.array(np.full(rows, t, np.int64)),
        "end_ns": pa.array(np.full(rows, t + 5, np.int64)),
        "state": pa.array(["closed"] * rows),
        "bytes_sent": pa.array(j.astype(np.int64)),
        "bytes_received": pa.array(j.astype(np.int64)),
        "remote_source": pa.array(["unattributed"] * rows),
        "attributed_ns": pa.array(np.full(rows, t + 9, np.int64)),
    })
    store.write_named(batch, f"b{i}")
    print(f"ack {i}", flush=True)
"""


def _run_and_kill(path: Path, acks_before_kill: int, delay_s: float, mode: str) -> list[int]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(ROWS), mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    acked: list[int] = []
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "open"
        # While the writer lives, another process is refused with a clear reason.
        with pytest.raises(InputError, match="in use by another process"):
            open_database(path, read_only=True)
        while len(acked) < acks_before_kill:
            line = child.stdout.readline()
            assert line.startswith("ack "), line
            acked.append(int(line.split()[1]))
        time.sleep(delay_s)  # lands inside the next write (each takes ~0.1-0.3 s)
        child.send_signal(signal.SIGKILL)
        rest = child.stdout.read()  # acks printed before the kill still count
        acked += [int(x.split()[1]) for x in rest.splitlines() if x.startswith("ack ")]
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return acked


@pytest.mark.parametrize("mode", [PER_ROW, PER_BATCH])
@pytest.mark.parametrize("delay_s", [0.0, 0.05, 0.3])
def test_kill_9_mid_write_keeps_whole_acknowledged_batches_only(
    tmp_path: Path, delay_s: float, mode: str
) -> None:
    path = tmp_path / "crash.duckdb"
    acked = _run_and_kill(path, 3, delay_s, mode)
    # Acknowledged commits sit in DuckDB's write-ahead log or, once its autocheckpoint ran,
    # in the main file (the log removed): either way reopening must find every one of them.
    with Store(path) as store:
        assert store.idempotence == mode
        # The rows and the batch's name were committed together, or neither.
        named = {i for i in range(max(acked) + 3) if store.has(f"b{i}")}
        cur = store.cursor()
        per_batch = dict(
            cur.execute(
                "SELECT split_part(flow_id, '-', 1), count(*) FROM flows GROUP BY 1"
            ).fetchall()
        )
        if mode == PER_BATCH:
            # A segment file renamed into place whose commit the kill cut off (or a temp
            # file) is gone: the directory holds exactly the committed segments.
            files = {r[0] for r in cur.execute("SELECT file FROM flowtrail_segments").fetchall()}
            on_disk = {p.name for p in path.with_name(path.name + ".segments").iterdir()}
            assert on_disk == files
        cur.close()
    counts = {int(k[1:]): v for k, v in per_batch.items()}
    assert all(counts.get(i) == ROWS for i in acked), (acked, counts)
    assert all(v == ROWS for v in counts.values()), counts  # no partial batch
    # At most the one batch in flight may be there unacknowledged (committed, then killed
    # before it could print).
    assert set(counts) - set(acked) <= {max(acked) + 1}
    assert named == set(counts)


FOLDING_WRITER = """
import sys
import numpy as np
import pyarrow as pa
from flowtrail.store import PER_BATCH, Store

path, rows = sys.argv[1], int(sys.argv[2])
store = Store(path, idempotence=PER_BATCH)
print("open", flush=True)
j = np.arange(rows)
for i in range(10_000):
    t = 1_700_000_000_000_000_000 + i * 1_000_000_000
    batch = pa.table({
        "flow_id": pa.array([f"b{i}-{k}" for k in range(rows)]),
        "exporter": pa.array(["host-a"] * rows),
        "local_ip": pa.array(["10.0.0.1"] * rows),
        "local_port": pa.array((j % 60000).astype(np.int32)),
        "remote_ip": pa.array(["10.0.0.2"] * rows),
        "remote_port": pa.array(np.full(rows, 443, np.int32)),
        "direction": pa.array(["outbound"] * rows),
        "start_ns": pa.array(np.full(rows, t, np.int64)),
        "end_ns": pa.array((t + j).astype(np.int64)),
        "state": pa.array(["closed"] * rows),
        "bytes_sent": pa.array(j.astype(np.int64)),
        "bytes_received": pa.array(j.astype(np.int64)),
        "remote_source": pa.array(["unattributed"] * rows),
        "attributed_ns": pa.array((t + j + 9).astype(np.int64)),
    })
    store.write_named(batch, f"b{i}")
    print(f"ack {i}", flush=True)
"""
FOLD_ROWS = 3_000  # 8 writes fold into a segment of 24,000 rows (under MERGE_BELOW_ROWS)


def _lines(stream: IO[str], out: queue.Queue[str]) -> None:
    for line in stream:
        out.put(line.strip())
    out.put("")  # end of output


def _kill_inside_a_fold(path: Path, point: str) -> tuple[list[int], int]:
    """Run the folding writer and SIGKILL it inside a fold: after a cycle's seventh write is
    acknowledged, the eighth writes its own segment and then folds the eight into one (a
    temporary file renamed into place, then one commit). `point`: kill once the fold's
    temporary file exists ("writing") or once the folded file was renamed into place
    ("renamed": its commit may or may not have happened). Returns (acks, fold cycles run)."""
    directory = path.with_name(path.name + ".segments")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    child = subprocess.Popen(
        [sys.executable, "-c", FOLDING_WRITER, str(path), str(FOLD_ROWS)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert child.stdout is not None
    threading.Thread(target=_lines, args=(child.stdout, lines), daemon=True).start()
    acked: list[int] = []
    try:
        assert lines.get(timeout=60) == "open"
        for cycle in range(20):
            while len(acked) < cycle * MERGE_FAN_IN + MERGE_FAN_IN - 1:
                line = lines.get(timeout=60)
                assert line.startswith("ack "), line
                acked.append(int(line.split()[1]))
            before = {p.name for p in directory.iterdir()}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                new = {p.name for p in directory.iterdir()} - before
                final = {n for n in new if not n.startswith(".tmp-")}
                # The eighth write's own segment is the first new final file; a temporary
                # file beside it is the fold's, a second final file the folded one.
                hit = (len(final) == 1 and len(new) > 1) if point == "writing" else len(final) > 1
                if hit:
                    child.send_signal(signal.SIGKILL)
                    child.wait(timeout=30)
                    while (line := lines.get(timeout=30)) != "":
                        acked.append(int(line.split()[1]))
                    assert child.returncode == -signal.SIGKILL
                    return acked, cycle + 1
                if not lines.empty():  # the eighth write (and its fold) finished first
                    line = lines.get()
                    assert line.startswith("ack "), line
                    acked.append(int(line.split()[1]))
                    break
        raise AssertionError(f"no kill landed inside a fold ({point}) in 20 cycles")
    finally:
        child.kill()
        child.wait(timeout=30)


@pytest.mark.parametrize("point", ["writing", "renamed"])
def test_kill_9_inside_a_fold_leaves_every_batch_once_and_its_name(
    tmp_path: Path, point: str
) -> None:
    path = tmp_path / "fold.duckdb"
    acked, cycles = _kill_inside_a_fold(path, point)
    with Store(path) as store:
        cur = store.cursor()
        per_batch = dict(
            cur.execute(
                "SELECT split_part(flow_id, '-', 1), count(*) FROM flows GROUP BY 1"
            ).fetchall()
        )
        distinct = cur.execute("SELECT count(DISTINCT flow_id) FROM flows").fetchall()[0][0]
        files = {r[0] for r in cur.execute("SELECT file FROM flowtrail_segments").fetchall()}
        on_disk = {p.name for p in path.with_name(path.name + ".segments").iterdir()}
        named = {i for i in range(max(acked) + 3) if store.has(f"b{i}")}
        cur.close()
        counts = {int(k[1:]): v for k, v in per_batch.items()}
        # Every acknowledged batch whole, once; the folded file or the eight it replaces,
        # never both nor neither; nothing on disk the catalog does not name.
        assert all(counts.get(i) == FOLD_ROWS for i in acked), (acked, counts)
        assert all(v == FOLD_ROWS for v in counts.values()), counts
        assert distinct == sum(counts.values())
        # The eighth write had committed (a fold starts after it) but was not acknowledged.
        stored = {*acked, max(acked) + 1}
        assert set(counts) == stored
        assert named == stored
        assert on_disk == files
        # Replayed after the crash, every stored batch is recognised, folded or not.
        for i in stored:
            rows = store.read("split_part(flow_id, '-', 1) = ?", [f"b{i}"]).drop_columns("extra")
            assert store.write_named(rows, f"b{i}") == 0
        assert store.count() == distinct
    assert cycles >= 1
