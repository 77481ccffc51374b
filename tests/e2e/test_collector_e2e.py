"""A real collector process on 127.0.0.1: TLS, tokens, limits over the wire, kill -9 recovery.

Everything is real: the `python -m flowtrail.collector` process, TLS with a throwaway
self-signed certificate (openssl), HTTP on loopback, the write-ahead log's fsync, the sink
files. Simulator data stands in for agents' captures (the agent's kernel tests cover capture).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flowtrail.collector.client import CollectorExporter, ipc_bytes
from flowtrail.collector.devcert import self_signed
from flowtrail.collector.sink import read_parquet_sink
from flowtrail.errors import ExportError
from flowtrail.lab.wait import started, until
from flowtrail.sim.simulation import simulate

S = 1_000_000_000


def sim_flows(n: int, seed: int = 7) -> pa.Table:
    f = simulate("churny", seed, flows=n).flows.drop_columns(["received_ns"])
    shift = time.time_ns() - 5 * S - pc.max(f["end_ns"]).as_py()
    for col in ("start_ns", "end_ns"):
        f = f.set_column(f.column_names.index(col), col, pc.add(f[col], shift))
    return f


def parts(f: pa.Table) -> dict[str, pa.Table]:
    return {e: f.filter(pc.equal(f["exporter"], e)) for e in sorted(set(f["exporter"].to_pylist()))}


def token(exporter: str) -> str:
    return f"tok-{exporter}-0123456789abcdef"


class Proc:
    """One collector process; `url` once it listens."""

    def __init__(
        self,
        tmp: Path,
        exporters: list[str],
        *extra: str,
        events: bool = False,
        more: dict[str, str] | None = None,
    ) -> None:
        """`more`: what follows an exporter's token on its line (`ranges=...`)."""
        self.tmp = tmp
        self.tls = tmp / "tls"
        if not (self.tls / "cert.pem").exists():
            self_signed(self.tls)
        tokens = tmp / "tokens"
        kinds = " flows,events" if events else ""
        more = more or {}
        tokens.write_text("".join(f"{e} {token(e)}{kinds} {more.get(e, '')}\n" for e in exporters))
        self.port_file = tmp / "port"
        self.port_file.unlink(missing_ok=True)
        self.log = open(tmp / "collector.log", "ab")  # noqa: SIM115
        args = [
            sys.executable, "-m", "flowtrail.collector", "--listen", "127.0.0.1:0",
            "--port-file", str(self.port_file), "--tokens", str(tokens),
            "--data-dir", str(tmp / "data"), "--tls-cert", str(self.tls / "cert.pem"),
            "--tls-key", str(self.tls / "key.pem"), "--max-wait", "2s", *extra,
        ]  # fmt: skip
        if not events:
            args.append("--no-events")
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        started(self.p, self.port_file.exists, tmp / "collector.log", 60, "collector")
        self.port = int(self.port_file.read_text())
        self.url = f"https://127.0.0.1:{self.port}"
        self.cafile = str(self.tls / "cert.pem")

    def output(self) -> str:
        return (self.tmp / "collector.log").read_text(errors="replace")

    def get(self, path: str) -> tuple[int, bytes]:
        ctx = ssl.create_default_context(cafile=self.cafile)
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=10)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def wait_idle(self, timeout_s: float = 60) -> None:
        """Until no flow waits and nothing decided is unstored."""

        def idle(text: str) -> bool:
            return (
                "flowtrail_collector_waiting_flows 0.0" in text
                and "flowtrail_collector_sink_backlog_rows 0.0" in text
            )

        if not idle(until(lambda: self.get("/metrics")[1].decode(), idle, timeout_s, 0.3)):
            raise AssertionError("collector still has waiting flows")

    def stop(self) -> int:
        self.p.send_signal(signal.SIGTERM)
        code = self.p.wait(timeout=60)
        self.log.close()
        return code

    def kill(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(timeout=30)
        self.log.close()


def stored_rows(tmp: Path, sink: str) -> pa.Table:
    if sink == "parquet":
        return read_parquet_sink(tmp / "data" / "flows")
    from flowtrail import store  # plainly: a broken store must fail, never skip

    with store.Store(tmp / "data" / "flows.duckdb") as s:
        return s.read()


def test_tls_tokens_and_limits_over_the_wire(tmp_path: Path, procs: list[Proc]) -> None:
    flows = sim_flows(6000)
    by = parts(flows)
    names = list(by)
    proc = Proc(tmp_path, names[:-1], "--sink", "parquet", "--max-body", "64k")
    procs.append(proc)

    # A client that connects and then says nothing holds one connection, nobody else.
    silent = socket.create_connection(("127.0.0.1", proc.port))
    # The right CA and token: delivered, big batches split to fit --max-body.
    sent = 0
    for e in names[:-1]:
        client = CollectorExporter(proc.url, token(e), proc.cafile)
        client.export(by[e], f"{e}-1")
        assert client.stats["refused_batches"] == 0
        sent += by[e].num_rows
        client.close()
    assert any(by[e].num_rows > 300 for e in names[:-1])  # so some batch exceeded 64 KiB

    # A client that does not trust this certificate never talks to it.
    other = self_signed(tmp_path / "other")[0]
    with pytest.raises(ssl.SSLError):
        CollectorExporter(proc.url, token(names[0]), str(other)).export(by[names[0]], "x")
    # Unknown token (an exporter the collector does not know): 401, kept by the agent's spool.
    with pytest.raises(ExportError, match="401"):
        CollectorExporter(proc.url, token(names[-1]), proc.cafile).export(by[names[-1]], "y")
    # No Authorization header at all.
    ctx = ssl.create_default_context(cafile=proc.cafile)
    conn = http.client.HTTPSConnection("127.0.0.1", proc.port, context=ctx, timeout=10)
    conn.request("POST", "/v1/flows", body=ipc_bytes(by[names[0]].slice(0, 10)))
    assert conn.getresponse().status == 401
    conn.close()
    # A token used for another exporter's rows: 403 (the client keeps them: config error).
    with pytest.raises(ExportError, match="403"):
        CollectorExporter(proc.url, token(names[0]), proc.cafile).export(
            by[names[1]].slice(0, 50), "z"
        )
    # Plain HTTP to the TLS port gets nothing.
    plain = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=10)
    with pytest.raises((http.client.HTTPException, OSError)):
        plain.request("GET", "/healthz")
        plain.getresponse()

    silent.close()
    status, body = proc.get("/healthz")
    assert status == 200 and json.loads(body)["ok"] is True
    proc.wait_idle()
    _, metrics = proc.get("/metrics")
    text = metrics.decode()
    assert 'flowtrail_collector_refused_batches_total{reason="unauthenticated"} 2.0' in text
    assert 'flowtrail_collector_refused_batches_total{reason="exporter_mismatch"} 1.0' in text
    assert 'flowtrail_collector_refused_batches_total{reason="body_too_large"}' in text
    assert 'flowtrail_collector_refused_batches_total{reason="tls_handshake"}' in text
    assert f"flowtrail_collector_rows_stored_total {sent}.0" in text
    assert proc.stop() == 0
    out = stored_rows(tmp_path, "parquet")
    assert out.num_rows == sent
    assert len(list((tmp_path / "data" / "quarantine").glob("*.json"))) == 1


@pytest.mark.parametrize("sink", ["parquet", "store"])
def test_kill_9_mid_stream_loses_no_acknowledged_row_and_stores_none_twice(
    tmp_path: Path, procs: list[Proc], sink: str
) -> None:
    flows = sim_flows(24_000, seed=3)
    by = parts(flows)
    senders = list(by)[:6]
    batches = {e: [by[e].slice(i, 50) for i in range(0, by[e].num_rows, 50)] for e in senders}
    total = sum(len(b) for b in batches.values())
    proc = Proc(tmp_path, senders, "--sink", sink)
    procs.append(proc)

    acked: dict[tuple[str, int], int] = {}
    lock = threading.Lock()
    half = threading.Event()

    def send(e: str) -> None:
        client = CollectorExporter(proc.url, token(e), proc.cafile, timeout_s=10)
        for i, b in enumerate(batches[e]):
            try:
                client.export(b, f"{e}-{i}")
            except (OSError, ExportError):
                return  # the collector died: this batch stays unacknowledged (agent spools it)
            with lock:
                acked[(e, i)] = b.num_rows
                if len(acked) >= total // 2:
                    half.set()

    threads = [threading.Thread(target=send, args=(e,)) for e in senders]
    for t in threads:
        t.start()
    assert half.wait(60), proc.output()
    proc.kill()  # mid-stream: senders are still sending
    for t in threads:
        t.join()
    assert 0 < len(acked) < total

    proc2 = Proc(tmp_path, senders, "--sink", sink)
    procs.append(proc2)
    # The agents' spools send again what was not acknowledged, and a few acknowledged
    # batches too (an ack lost on the way): the batch ids make those no-ops.
    for e in senders:
        client = CollectorExporter(proc2.url, token(e), proc2.cafile)
        for i, b in enumerate(batches[e]):
            if (e, i) not in acked or i == 0:
                client.export(b, f"{e}-{i}")
        client.close()
    proc2.wait_idle()
    _, metrics = proc2.get("/metrics")
    replayed = next(
        float(line.split()[1])
        for line in metrics.decode().splitlines()
        if line.startswith('flowtrail_collector_rows_replayed_total{kind="flows"}')
    )
    assert replayed > 0  # the restart really rebuilt state from the log
    assert proc2.stop() == 0

    out = stored_rows(tmp_path, sink)
    want = pa.concat_tables([b for e in senders for b in batches[e]])
    assert out.num_rows == want.num_rows, "a row was lost or stored twice"
    keys = out.group_by(["exporter", "flow_id", "state", "end_ns"]).aggregate([])
    assert keys.num_rows == out.num_rows  # nothing twice
    assert sorted(out["flow_id"].to_pylist()) == sorted(want["flow_id"].to_pylist())
    assert set(out["remote_source"].to_pylist()) <= {"heartbeat", "unattributed"}
    if sink == "parquet":
        assert not list((tmp_path / "data" / "flows").rglob(".*.tmp"))
    os.sync()
