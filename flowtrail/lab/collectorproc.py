"""A real `python -m flowtrail.collector` process for tests, plus small flow batches to send it."""

from __future__ import annotations

import http.client
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.collector.devcert import self_signed
from flowtrail.lab.wait import started
from flowtrail.sim.simulation import simulate

S = 1_000_000_000


def token(exporter: str) -> str:
    return f"tok-{exporter}-0123456789abcdef"


def flows_of(exporter: str, n: int, tag: str, seed: int = 3) -> pa.Table:
    """`n` simulator flow rows as sent by `exporter`, times moved to just now, ids unique."""
    f = simulate("churny", seed, flows=n + n // 4 + 200).flows.drop_columns(["received_ns"])
    f = f.slice(0, n)
    assert f.num_rows == n, f"the simulator gave {f.num_rows} rows, not {n}"
    shift = time.time_ns() - 5 * S - pc.max(f["end_ns"]).as_py()
    for col in ("start_ns", "end_ns"):
        f = f.set_column(f.column_names.index(col), col, pc.add(f[col], shift))
    f = f.set_column(f.column_names.index("exporter"), "exporter", pa.array([exporter] * n))
    ids = pa.array([f"{tag}-{i}" for i in range(n)])
    return f.set_column(f.column_names.index("flow_id"), "flow_id", ids)


class CollectorProc:
    """One collector process on 127.0.0.1 with TLS; `port` once it listens."""

    def __init__(
        self, tmp: Path, exporters: list[str], *extra: str, wrap: tuple[str, ...] = ()
    ) -> None:
        """`wrap`: a command prefix that ends by exec'ing its arguments (e.g. unshare)."""
        self.tmp = tmp
        tls = tmp / "tls"
        if not (tls / "cert.pem").exists():
            self_signed(tls)
        self.cafile = str(tls / "cert.pem")
        tokens = tmp / "tokens"
        tokens.write_text("".join(f"{e} {token(e)}\n" for e in exporters))
        port_file = tmp / "port"
        port_file.unlink(missing_ok=True)
        self.log_path = tmp / "collector.log"
        self.data = tmp / "data"
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        args = [
            sys.executable, "-m", "flowtrail.collector", "--listen", "127.0.0.1:0",
            "--port-file", str(port_file), "--tokens", str(tokens),
            "--data-dir", str(self.data), "--tls-cert", str(tls / "cert.pem"),
            "--tls-key", str(tls / "key.pem"), "--no-events", "--max-wait", "2s",
            "--sink", "parquet", *extra,
        ]  # fmt: skip
        self.p = subprocess.Popen([*wrap, *args], stdout=self.log, stderr=subprocess.STDOUT)
        started(self.p, port_file.exists, self.log_path, 60, "collector")
        self.port = int(port_file.read_text())
        self.url = f"https://127.0.0.1:{self.port}"

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cafile)

    def connection(self, timeout_s: float = 30) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.tls(), timeout=timeout_s
        )

    def metrics(self) -> str:
        conn = self.connection()
        try:
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of /metrics, e.g. metric("..._refused_batches_total", 'reason="x"')."""
        sample = re.escape(f"{name}{{{labels}}}" if labels else name)
        m = re.search(rf"^{sample} (\S+)$", self.metrics(), re.M)
        return float(m.group(1)) if m else 0.0

    def refused(self, reason: str) -> float:
        return self.metric("flowtrail_collector_refused_batches_total", f'reason="{reason}"')

    def rss_peak_kib(self) -> int:
        status = Path(f"/proc/{self.p.pid}/status").read_text()
        m = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.M)
        assert m is not None
        return int(m.group(1))

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.log.close()
