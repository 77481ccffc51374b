"""A real nats-server cluster with JetStream on loopback, for tests and benchmarks.

Each server gets its own config file, JetStream file store and log under one directory.
Ports are taken free from the kernel (bind to 0) just before the servers start. A server can
be killed (SIGKILL, like a crash) and started again on the same ports and store, which is how
tests exercise JetStream's recovery.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

NATS_SERVER = os.environ.get("FLOWTRAIL_NATS_SERVER", "/usr/sbin/nats-server")


def nats_server_binary() -> str | None:
    """The nats-server executable, or None when this machine has none."""
    if Path(NATS_SERVER).is_file():
        return NATS_SERVER
    return shutil.which("nats-server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NatsServer:
    name: str
    client_port: int
    route_port: int
    monitor_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def config(self) -> Path:
        return self.directory / "server.conf"


@dataclass
class NatsLab:
    """`size` servers forming one cluster; start() waits until every client port answers."""

    root: Path
    size: int = 3
    cluster_name: str = "flowtrail-test"
    servers: list[NatsServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        binary = nats_server_binary()
        if binary is None:
            raise FileNotFoundError("nats-server not found (set FLOWTRAIL_NATS_SERVER)")
        self.binary = binary
        for i in range(self.size):
            directory = self.root / f"n{i}"
            (directory / "js").mkdir(parents=True, exist_ok=True)
            self.servers.append(
                NatsServer(f"n{i}", _free_port(), _free_port(), _free_port(), directory)
            )
        for server in self.servers:
            server.config.write_text(self._config_text(server))

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def _config_text(self, server: NatsServer) -> str:
        routes = ", ".join(
            f"nats-route://127.0.0.1:{s.route_port}" for s in self.servers if s is not server
        )
        return (
            f'server_name: "{server.name}"\n'
            f"listen: 127.0.0.1:{server.client_port}\n"
            f"http: 127.0.0.1:{server.monitor_port}\n"
            "max_payload: 8MB\n"
            f'jetstream {{\n  store_dir: "{server.directory / "js"}"\n'
            "  max_memory_store: 64MB\n  max_file_store: 1GB\n}\n"
            f'cluster {{\n  name: "{self.cluster_name}"\n'
            f"  listen: 127.0.0.1:{server.route_port}\n  routes: [{routes}]\n}}\n"
        )

    def start(self, timeout: float = 20.0) -> None:
        for server in self.servers:
            self._spawn(server)
        for server in self.servers:
            self._wait_ready(server, timeout)

    def _spawn(self, server: NatsServer) -> None:
        log = open(server.directory / "server.log", "ab")  # noqa: SIM115 (owned by the child)
        server.process = subprocess.Popen(
            [self.binary, "-c", str(server.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def _wait_ready(self, server: NatsServer, timeout: float) -> None:
        """Wait until the server's monitor says it is healthy (JetStream included)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if server.process is not None and server.process.poll() is not None:
                raise RuntimeError(f"nats-server {server.name} exited: {self.log_tail(server)}")
            try:
                with socket.create_connection(("127.0.0.1", server.monitor_port), 0.5) as s:
                    s.sendall(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
                    last = s.recv(4096).decode(errors="replace")
                if " 200 " in last.split("\r\n", 1)[0]:
                    return
            except OSError as e:
                last = str(e)
            time.sleep(0.1)
        raise TimeoutError(f"nats-server {server.name} not healthy in {timeout}s: {last!r}")

    def log_tail(self, server: NatsServer, lines: int = 20) -> str:
        path = server.directory / "server.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self, index: int) -> None:
        """SIGKILL one server (a crash: no clean shutdown, no leadership hand-off)."""
        server = self.servers[index]
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGKILL)
            server.process.wait(10)
        server.process = None

    def restart(self, index: int, timeout: float = 20.0) -> None:
        """Kill one server if running and start it again on the same ports and store."""
        self.kill(index)
        server = self.servers[index]
        self._spawn(server)
        self._wait_ready(server, timeout)

    def stop(self) -> None:
        for server in self.servers:
            process = server.process
            if process is None:
                continue
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
            server.process = None

    def __enter__(self) -> NatsLab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
