"""Each documented failure answer of the collector (docs/collector.md), on a real collector
process over TLS: 503 when the log cannot take a batch, 409 while the same batch is being
logged, connection limits, reserved columns, and the quarantine's bound. (411, 404 and 400
before the body are in test_collector_dos.py, which checks that they reach the sender.)
"""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from flowtrail.collector.client import CollectorExporter, ipc_bytes
from flowtrail.collector.wal import WriteAheadLog
from flowtrail.errors import ExportError
from flowtrail.lab.collectorproc import CollectorProc, flows_of, token
from flowtrail.lab.wait import until

ACCEPTED = "flowtrail_collector_rows_accepted_total"


@pytest.fixture
def collectors() -> Iterator[list[CollectorProc]]:
    made: list[CollectorProc] = []
    yield made
    for c in made:
        c.kill()


def post(
    proc: CollectorProc, body: bytes, batch: str, exporter: str = "web"
) -> tuple[int, str, dict[str, str]]:
    conn = proc.connection()
    try:
        conn.request(
            "POST", "/v1/flows", body=body,
            headers={"Authorization": f"Bearer {token(exporter)}", "X-Flowtrail-Batch": batch},
        )  # fmt: skip
        r = conn.getresponse()
        return r.status, r.read().decode(), dict(r.getheaders())
    finally:
        conn.close()


def logged_batches(wal: Path) -> list[str]:
    records = WriteAheadLog(wal).replay()
    return [str(r.header.get("batch")) for r in records if r.header.get("kind") == "flows"]


@pytest.mark.kernel  # needs root: a private mount namespace with a small tmpfs for the log
def test_a_batch_the_log_cannot_take_is_503_and_never_acknowledged(
    tmp_path: Path, collectors: list[CollectorProc]
) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    wal = tmp_path / "data" / "wal"
    wal.mkdir(parents=True)
    # The log lives on a 256 KiB tmpfs seen only by the collector (gone when it exits).
    wrap = ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount -t tmpfs -o size=256k tmpfs "$0" && exec "$@"', str(wal))  # fmt: skip
    proc = CollectorProc(tmp_path, ["web"], wrap=wrap)
    collectors.append(proc)
    seen_wal = Path(f"/proc/{proc.p.pid}/root") / str(wal).lstrip("/")

    small = ipc_bytes(flows_of("web", 100, "small"))
    status, text, _ = post(proc, small, "fits")
    assert status == 200, text
    # 200 means it is in the log on disk: an intact record of it is there already.
    assert logged_batches(seen_wal) == ["fits"]

    big = ipc_bytes(flows_of("web", 4000, "big"))
    assert len(big) > 256 << 10
    status, text, _ = post(proc, big, "too-big-for-the-disk")
    assert status == 503, text
    assert "cannot log the batch durably" in text
    assert proc.refused("log_failed") == 1
    assert proc.metric(ACCEPTED, 'kind="flows"') == 100  # not counted as accepted
    assert logged_batches(seen_wal) == ["fits"]  # at most a torn, unreadable part of it
    # The agent's exporter keeps such a batch for a retry (it was not acknowledged).
    exporter = CollectorExporter(proc.url, token("web"), proc.cafile)
    with pytest.raises(ExportError, match="503"):
        exporter.export(flows_of("web", 4000, "big"), "too-big-for-the-disk")
    exporter.close()
    # The process carries on and still answers (storing waits for log space: with the Parquet
    # sink the `stored` mark goes into the log before the file).
    assert proc.p.poll() is None
    assert proc.metric(ACCEPTED, 'kind="flows"') == 100


def test_the_same_batch_while_it_is_logged_is_409_and_applied_once(
    tmp_path: Path, collectors: list[CollectorProc]
) -> None:
    proc = CollectorProc(tmp_path, ["web"])
    collectors.append(proc)
    base = flows_of("web", 20_000, "dup")
    rows = base.num_rows
    seen_409 = 0
    rounds = 0
    while seen_409 == 0 and rounds < 15:
        batch = base.set_column(
            base.column_names.index("flow_id"),
            "flow_id",
            pa.array([f"r{rounds}-{i}" for i in range(rows)]),
        )
        body = ipc_bytes(batch)
        answers: list[tuple[int, str, dict[str, str]]] = []
        gate = threading.Barrier(2)

        def send(
            body: bytes = body,
            gate: threading.Barrier = gate,
            n: int = rounds,
            answers: list[tuple[int, str, dict[str, str]]] = answers,
        ) -> None:
            gate.wait()
            answers.append(post(proc, body, f"batch-{n}"))

        threads = [threading.Thread(target=send) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        fresh = [a for a in answers if a[0] == 200 and '"duplicate"' not in a[1]]
        assert len(fresh) == 1, answers  # exactly one of the two was applied
        other = next(a for a in answers if a is not fresh[0])
        if other[0] == 409:
            seen_409 += 1
            assert "being logged now" in other[1] and other[2].get("Retry-After") == "2"
            # The retry the answer asks for is acknowledged as the duplicate it is.
            status, text, _ = post(proc, body, f"batch-{rounds}")
            assert status == 200 and '"duplicate": true' in text
        else:
            assert other[0] == 200 and '"duplicate": true' in other[1], other
        rounds += 1
    assert seen_409, f"no two posts overlapped in {rounds} rounds"
    assert proc.refused("in_flight") == seen_409
    assert proc.metric(ACCEPTED, 'kind="flows"') == rounds * rows


def _tls_connect(proc: CollectorProc, source: str = "127.0.0.1") -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", proc.port), timeout=10, source_address=(source, 0))
    return proc.tls().wrap_socket(raw, server_hostname="127.0.0.1")


def _busy(proc: CollectorProc, source: str = "127.0.0.1") -> ssl.SSLSocket:
    """A connection in the middle of sending a body: busy, so nobody may take its place.
    It asks for 100-continue, so it knows the server has its request before going on."""
    s = _tls_connect(proc, source)
    s.sendall(
        f"POST /v1/flows HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token('web')}\r\n"
        "Content-Length: 100000\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(100)
        assert chunk, "closed instead of 100 Continue"
        got += chunk
    assert got.startswith(b"HTTP/1.1 100 "), got
    s.sendall(b"\0" * 1000)
    return s


def _admitted(proc: CollectorProc, source: str) -> ssl.SSLSocket | None:
    """A connection whose TLS handshake completed (a refused one is closed before it)."""
    try:
        return _tls_connect(proc, source)
    except (ssl.SSLError, OSError):
        return None


def _closed_by_server(s: ssl.SSLSocket) -> bool:
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        return s.recv(100) == b""
    except (ssl.SSLError, OSError):
        return True


def _refused_when_let_in(proc: CollectorProc) -> float | None:
    try:
        return proc.refused("too_many_connections")
    except (ssl.SSLError, OSError):
        return None


def test_connection_limits(tmp_path: Path, collectors: list[CollectorProc]) -> None:
    proc = CollectorProc(
        tmp_path, ["web"], "--max-connections", "4", "--max-connections-per-peer", "2"
    )
    collectors.append(proc)
    # Per peer: a third connection from one address is closed at once.
    held = [_busy(proc, "127.0.0.30") for _ in range(2)]
    assert _admitted(proc, "127.0.0.30") is None
    assert proc.refused("too_many_connections_from_peer") == 1
    # In all: with every slot busy with a request, a newcomer is turned away (counted below:
    # reading /metrics now would be turned away too).
    held += [_busy(proc, "127.0.0.31"), _busy(proc, "127.0.0.32")]
    assert _admitted(proc, "127.0.0.33") is None
    # A connection that has sent no request yet gives its slot to a newcomer.
    held.pop().close()
    turned_away = [1]  # the newcomer above; then any try before the closed slot is free again

    def newcomer() -> ssl.SSLSocket | None:
        got = _admitted(proc, "127.0.0.34")
        turned_away[0] += got is None
        return got

    idle = until(newcomer, lambda s: s is not None, 10)
    assert idle is not None
    status, text, _ = post(proc, ipc_bytes(flows_of("web", 10, "room")), "room")
    assert status == 200, text
    assert _closed_by_server(idle)

    # The slots are all but full still: a connection that has just been answered counts as
    # busy until its thread turns to wait for the next request, so read the count when let in.
    def read_count() -> float | None:
        got = _refused_when_let_in(proc)
        turned_away[0] += got is None  # this read was turned away itself
        return got

    count = until(read_count, lambda n: n is not None, 10)
    assert count == turned_away[0]
    assert proc.refused("evicted_waiting") >= 1  # the idle one (and perhaps an answered one)
    for s in [*held, idle]:
        s.close()


def test_reserved_columns_are_refused_and_quarantined(
    tmp_path: Path, collectors: list[CollectorProc]
) -> None:
    proc = CollectorProc(tmp_path, ["web"])
    collectors.append(proc)
    batch = flows_of("web", 10, "res").append_column("__flowtrail_row", pa.array(range(10)))
    status, text, _ = post(proc, ipc_bytes(batch), "reserved")
    assert status == 400, text
    assert "__flowtrail_row" in text and "reserved_column" in text
    assert proc.refused("reserved_column") == 1
    notes = list((proc.data / "quarantine").glob("*.json"))
    assert len(notes) == 1 and '"reason": "reserved_column"' in notes[0].read_text()
    assert notes[0].with_suffix(".arrows").read_bytes() == ipc_bytes(batch)
    assert proc.metric(ACCEPTED, 'kind="flows"') == 0


def test_the_quarantine_keeps_within_its_bound_newest_first(
    tmp_path: Path, collectors: list[CollectorProc]
) -> None:
    proc = CollectorProc(tmp_path, ["web"], "--quarantine-max", "64k")
    collectors.append(proc)
    bodies = []
    for i in range(8):
        batch = flows_of("web", 100, f"q{i}").append_column("__flowtrail_x", pa.array([i] * 100))
        bodies.append(ipc_bytes(batch))
        status, text, _ = post(proc, bodies[-1], f"q{i}")
        assert status == 400, text
    assert sum(map(len, bodies)) > 2 * 64 * 1024
    kept = sorted((proc.data / "quarantine").glob("*.arrows"))
    assert sum(p.stat().st_size for p in kept) <= 64 * 1024
    assert kept and kept[-1].read_bytes() == bodies[-1]  # the newest stays, the oldest went
    assert kept[0].read_bytes() != bodies[0]
    assert {p.stem for p in kept} == {p.stem for p in (proc.data / "quarantine").glob("*.json")}
    assert proc.metric("flowtrail_collector_quarantined_batches_total") == 8
