"""A store that cannot be written: counted, /healthz 503, rows kept, and stored once it can.

The failure is real: the DuckDB store lives on its own small tmpfs, and the test fills that
file system (ENOSPC on DuckDB's commit) while the collector's write-ahead log, on another file
system, goes on accepting batches. Then the test frees the space. Mounting needs root, hence
the `kernel` marker.
"""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flowtrail.collector.client import ipc_bytes
from flowtrail.lab.wait import started, until
from flowtrail.sim.simulation import simulate
from flowtrail.store import Store

pytestmark = pytest.mark.kernel
S = 1_000_000_000
TOKEN = "tok-sink-test-0123456789abcdef"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(fs: Path) -> Path:
    """Write a file until the file system is full; returns it."""
    filler = fs / "filler"
    # Unbuffered: a buffered file would keep the bytes that did not fit and fail again at close.
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC
    return filler


def rows_of(exporter: str, n: int, seed: int) -> pa.Table:
    """Simulated rows sent as one exporter (flow ids kept apart), shifted to now (the door
    refuses old times)."""
    f = simulate("calm", seed, flows=2 * n).flows.drop_columns(["received_ns"]).slice(0, n)
    ids = pc.binary_join_element_wise(f["exporter"], f["flow_id"], f"-{seed}-")
    f = f.set_column(f.column_names.index("flow_id"), "flow_id", ids)
    f = f.set_column(f.column_names.index("exporter"), "exporter", pa.array([exporter] * len(f)))
    shift = time.time_ns() - 5 * S - pc.max(f["end_ns"]).as_py()
    for col in ("start_ns", "end_ns"):
        f = f.set_column(f.column_names.index(col), col, pc.add(f[col], shift))
    return f


def request(
    url: str, body: bytes | None = None, cafile: str | None = None, token: str = TOKEN
) -> tuple[int, Any]:
    headers = {}
    if body is not None:
        headers = {"Authorization": f"Bearer {token}", "Content-Length": str(len(body))}
    ctx = ssl.create_default_context(cafile=cafile) if cafile else None
    try:
        with urlopen(Request(url, data=body, headers=headers), timeout=10, context=ctx) as r:
            status, raw = r.status, r.read()
    except HTTPError as exc:
        status, raw = exc.code, exc.read()
    return status, raw.decode()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def fail_then_recover(
    url: str, health_urls: list[str], store_fs: Path, exporter: str, cafile: str | None,
    token: str = TOKEN,
) -> int:  # fmt: skip
    """Post rows while the store's file system is full, see the failure, free it, see the rows
    stored; returns how many rows were posted."""
    first = rows_of(exporter, 40, 1)
    assert request(f"{url}/v1/flows", ipc_bytes(first), cafile, token)[0] == 200

    def scrape() -> str:
        return str(request(f"{url}/metrics", None, cafile)[1])

    stored = until(scrape, lambda t: metric(t, "flowtrail_collector_rows_stored_total") >= 40, 60)
    assert metric(stored, "flowtrail_collector_rows_stored_total") == 40
    assert metric(stored, "flowtrail_collector_sink_failures_total") == 0

    filler = fill(store_fs)
    second = rows_of(exporter, 60, 2)
    assert request(f"{url}/v1/flows", ipc_bytes(second), cafile, token)[0] == 200  # the log is fine

    failing = until(scrape, lambda t: metric(t, "flowtrail_collector_sink_failures_total") >= 2, 60)
    assert metric(failing, "flowtrail_collector_sink_failures_total") >= 2
    assert metric(failing, "flowtrail_collector_sink_backlog_rows") == 60
    assert metric(failing, "flowtrail_collector_rows_stored_total") == 40
    for health in health_urls:
        status, body = request(health, None, cafile)
        assert status == 503, (health, body)
        assert "No space left on device" in json.loads(body)["sink_error"], (health, body)

    filler.unlink()
    for health in health_urls:
        healthy = until(lambda h=health: request(h, None, cafile), lambda a: a[0] == 200, 60)
        assert healthy[0] == 200, (health, healthy)
    recovered = request(f"{url}/metrics", None, cafile)[1]
    assert metric(recovered, "flowtrail_collector_rows_stored_total") == 100
    assert metric(recovered, "flowtrail_collector_sink_backlog_rows") == 0
    return 100


def test_collector_store_on_a_full_disk(tmp_path: Path, small_fs: Path) -> None:
    (tmp_path / "tokens").write_text(f"edge-1 {TOKEN}\n")
    port_file, log = tmp_path / "port", tmp_path / "collector.log"
    db = small_fs / "flows.duckdb"
    with open(log, "wb") as out:
        p = subprocess.Popen(
            [sys.executable, "-m", "flowtrail.collector", "--listen", "127.0.0.1:0",
             "--plaintext", "--port-file", str(port_file), "--tokens", str(tmp_path / "tokens"),
             "--data-dir", str(tmp_path / "data"), "--db", str(db), "--no-events",
             "--max-wait", "1s"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            started(p, port_file.exists, log, 60, "collector")
            url = f"http://127.0.0.1:{int(port_file.read_text())}"
            fail_then_recover(url, [f"{url}/healthz"], small_fs, "edge-1", None)
        finally:
            p.send_signal(signal.SIGTERM)
            assert p.wait(60) == 0, log.read_text()
    with Store(db) as store:
        got = store.read()
    assert got.num_rows == 100
    assert len(set(zip(got["flow_id"].to_pylist(), got["end_ns"].to_pylist(), strict=True))) == 100


def test_up_store_on_a_full_disk(tmp_path: Path) -> None:
    """`flowtrail up --no-agent` with its data directory on a small file system and its
    write-ahead log on another: the collector's and the query API's /healthz both say 503."""
    data = tmp_path / "data"
    data.mkdir()
    mounts = [(data, "4m"), (data / "wal", "64m")]
    try:
        for where, size in mounts:
            where.mkdir(exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                           check=True)  # fmt: skip
        log = tmp_path / "up.log"
        with open(log, "wb") as out:
            p = subprocess.Popen(
                [sys.executable, "-m", "flowtrail.up", "--data", str(data), "--no-agent",
                 "--exporter", "edge-up", "--port-collector", "0", "--port-api", "0",
                 "--max-wait", "1s"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                started(p, (data / "up.json").exists, log, 45, "flowtrail up")
                state = json.loads((data / "up.json").read_text())
                lines = (data / "tokens.txt").read_text().splitlines()
                token = next(ln.split()[1] for ln in lines if ln.startswith("edge-up "))
                url, cafile = state["collector"], str(data / "tls" / "cert.pem")
                healths = [f"{url}/healthz", f"{state['api']}/healthz"]
                fail_then_recover(url, healths, data, "edge-up", cafile, token)
            finally:
                p.send_signal(signal.SIGTERM)
                assert p.wait(60) == 0, log.read_text()
        with Store(data / "flows.duckdb") as store:
            assert store.count() == 100
    finally:
        for where, _ in reversed(mounts):
            subprocess.run(["umount", "-l", str(where)], check=False)
