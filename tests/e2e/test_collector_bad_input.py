"""The real collector process and bad input: a batch the contract refuses is a 400 (never a
500), and a data directory it cannot use stops it with exit 2 and one line naming the flag
and the path.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from test_cli_bad_input import one_line_error
from test_collector_e2e import Proc, token

from flowtrail.collector.client import CollectorExporter
from flowtrail.lab.wait import started


def flows(ports: pa.Array) -> pa.Table:
    n, t = len(ports), time.time_ns()
    return pa.table({
        "flow_id": [f"f{i}" for i in range(n)], "exporter": ["h1"] * n,
        "local_ip": ["10.0.0.1"] * n, "local_port": ports, "remote_ip": ["10.0.0.2"] * n,
        "remote_port": pa.array([443] * n, pa.int32()), "direction": ["outbound"] * n,
        "start_ns": [t] * n, "end_ns": [t] * n, "state": ["closed"] * n,
        "bytes_sent": [1] * n, "bytes_received": [1] * n,
    })  # fmt: skip


def test_a_uint64_port_beyond_int32_is_refused_with_400(tmp_path: Path) -> None:
    proc = Proc(tmp_path, ["h1"], "--sink", "parquet")
    try:
        client = CollectorExporter(proc.url, token("h1"), proc.cafile)
        client.export(flows(pa.array([1, 2, 2**64 - 1], pa.uint64())), "bad")
        assert client.last_refusal is not None
        assert client.last_refusal.startswith("400: ")
        assert "row 3, column 'local_port': value out of range for int32" in client.last_refusal
        client.export(flows(pa.array([1, 2, 3], pa.uint64())), "good")  # in range: fine
        assert client.stats["sent_rows"] == 3
        status, _ = proc.get("/healthz")
        assert status == 200
    finally:
        assert proc.stop() == 0


def collector(data: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    tokens = tmp / "tokens"
    tokens.write_text(f"h1 {token('h1')}\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    args = [sys.executable, "-m", "flowtrail", "collector", "--tokens", str(tokens),
            "--data-dir", str(data), "--plaintext", "--listen", "127.0.0.1:0", *extra]  # fmt: skip
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)


def test_a_data_dir_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    a_file = tmp_path / "plain"
    a_file.write_text("")
    for data in (a_file / "data", Path("/proc/flowtrail-test")):
        line = one_line_error(collector(data, tmp_path))
        assert line.startswith(f"flowtrail: error: --data-dir {data}: cannot use: "), line


def test_a_data_dir_not_yet_made_is_made(tmp_path: Path) -> None:
    data, db = tmp_path / "new" / "data", tmp_path / "elsewhere" / "flows.duckdb"
    port_file, log = tmp_path / "port", tmp_path / "collector.log"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"h1 {token('h1')}\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with open(log, "wb") as out:
        p = subprocess.Popen(
            [sys.executable, "-m", "flowtrail", "collector", "--tokens", str(tokens),
             "--data-dir", str(data), "--db", str(db), "--plaintext",
             "--listen", "127.0.0.1:0", "--port-file", str(port_file)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        try:
            started(p, port_file.exists, log, 60, "collector")
        finally:
            p.send_signal(signal.SIGTERM)
            assert p.wait(60) == 0, log.read_text()
    assert (data / "wal").is_dir() and db.exists()


@pytest.mark.kernel  # root: a read-only bind mount in a private mount namespace
def test_a_read_only_log_directory_is_named(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    data, wal = tmp_path / "data", tmp_path / "data" / "wal"
    wal.mkdir(parents=True)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"h1 {token('h1')}\n")
    db = tmp_path / "elsewhere.duckdb"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    script = (
        f"mount --bind {wal} {wal} && mount -o remount,bind,ro {wal} && "
        f"exec {sys.executable} -m flowtrail collector --tokens {tokens} --data-dir {data} "
        f"--db {db} --plaintext --listen 127.0.0.1:0"
    )
    res = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                         timeout=120, env=env)  # fmt: skip
    line = one_line_error(res)
    assert line.startswith(f"flowtrail: error: --data-dir {data}: cannot use: "), line
    assert "Read-only file system" in line and str(wal) in line
