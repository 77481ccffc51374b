"""kill -9 during writes: the reopened store holds every acknowledged batch, whole, and no part
of any other; in a store idempotent per batch, a batch's name is stored exactly when its rows
are. A real child process, a real SIGKILL, the real DuckDB file (no fakes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowtrail.errors import InputError
from flowtrail.store import PER_BATCH, PER_ROW, Store
from flowtrail.store.duck import open_database

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
