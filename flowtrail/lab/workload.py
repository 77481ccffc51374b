"""One workload of the kernel lab's fleet: a server and a client in one process.

It joins its cgroup and network namespace (as every lab peer does), listens on its own address,
and connects to the fleet's live services at a steady random rate from a few threads, so a
lost SYN (a handshake taking seconds) does not stall the rest. Where to connect is read from the
lab's targets file before every attempt: the lab takes an address out of it a while before it
hands the address to another workload. Some connections are long-lived (writes seconds apart),
some go to a port nobody listens on (refused).

Every attempt is logged, one JSON line flushed at once, as soon as its outcome is known:
`[local_ip, local_port, remote_ip, remote_port, outcome, time_ns]` (outcome: established,
refused, abandoned (the client's own connect timeout), failed). The lab compares that log
with what the agents captured. The lab stops a workload with SIGKILL; whatever it logged is
already on disk.

Every request begins with a line `<name> <time_ns>\n`: who made the connection and when its
connect began. A server given `accepted` logs, per connection it reads that line on,
`[peer_ip, peer_port, name, time_ns, logged_ns]`: who really called from the address and port
it saw, which behind a NAT gateway is not who owns the address (the lab's truth for
translated connections).
"""

from __future__ import annotations

import json
import random
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from flowtrail.lab.peer import join

ENTRY = "from flowtrail.lab.workload import main; main()"
SERVICE_PORT = 8080
CLOSED_PORT = 8081  # nobody listens: an attempt there is refused
# A client gives up a handshake after this long (a lost SYN is retried at 1 s, a second at
# 3 s, a third would be at 7 s), as applications' connect timeouts do. The lab waits longer
# than this between taking an address out of the targets and handing it over, so no handshake
# spans a handover: a connection's remote owner at its first SYN is the one that answered.
CONNECT_TIMEOUT_S = 3.5


@dataclass(frozen=True)
class Workload:
    """Serve on ip:SERVICE_PORT; make `rate` connections a second to the targets file's entries."""

    name: str
    ip: str
    targets: str  # JSON file: [[ip, port], ...], rewritten atomically by the lab
    log: str  # JSON lines, one per attempt
    rate: float
    long_share: float = 0.05  # share of connections held open for seconds
    refused_share: float = 0.03  # share of attempts to CLOSED_PORT
    threads: int = 3
    seed: int = 0
    # A cgroup to bind the listener in before moving to the workload's own (a handed-over
    # listener: its accepted sockets get this cgroup from the kernel; see listen_elsewhere).
    listener_cgroup: str | None = None
    accepted: str | None = None  # JSON lines: who called, per connection served (see above)


def argv(netns: str, cgroup: Path, w: Workload) -> list[str]:
    spec = {"netns": netns, "cgroup": str(cgroup), "workload": asdict(w)}
    return [sys.executable, "-c", ENTRY, json.dumps(spec)]


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the lab stops us, not the terminal's Ctrl-C
    spec = json.loads(sys.argv[1])
    w = Workload(**spec["workload"])
    if w.listener_cgroup is not None:
        run(w, listen_elsewhere(w, spec["netns"], Path(spec["cgroup"])))
        return
    join(spec["netns"], Path(spec["cgroup"]))
    run(w)


def listen(w: Workload) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((w.ip, SERVICE_PORT))
    listener.listen(128)
    return listener


def listen_elsewhere(w: Workload, netns: str, cgroup: Path) -> socket.socket:
    """Bind the listener in `w.listener_cgroup`, then move to `cgroup` to serve and connect.

    What a socket-activated service or a pre-fork server's moved child sees: the listener (and
    so every socket the kernel accepts on it) belongs to another cgroup than the server.
    """
    assert w.listener_cgroup is not None
    join(netns, Path(w.listener_cgroup))
    listener = listen(w)
    (cgroup / "cgroup.procs").write_text("0")
    return listener


def run(w: Workload, listener: socket.socket | None = None) -> None:
    listener = listen(w) if listener is None else listener
    log = open(w.log, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    lock = threading.Lock()
    for i in range(w.threads):
        rng = random.Random(f"{w.seed}-{w.name}-{i}")
        threading.Thread(target=_client_loop, args=(w, rng, log, lock), daemon=True).start()
    print("ready", flush=True)
    accepted = None if w.accepted is None else open(w.accepted, "a", buffering=1)  # noqa: SIM115
    while True:
        conn, peer = listener.accept()
        args = (conn, peer, accepted, lock)
        threading.Thread(target=_answer, args=args, daemon=True).start()


def _answer(
    conn: socket.socket, peer: tuple[str, int], accepted: TextIO | None, lock: threading.Lock
) -> None:
    """Read until the client half-closes (logging who called, once its first line is in),
    answer, close."""
    try:
        conn.settimeout(60)
        head = b""
        while chunk := conn.recv(65536):
            if accepted is not None and b"\n" not in head and len(head) < 4096:
                head += chunk
                if b"\n" in head:
                    name, t = head.split(b"\n", 1)[0].decode().split()
                    line = [peer[0], peer[1], name, int(t), time.time_ns()]
                    with lock:
                        accepted.write(json.dumps(line) + "\n")
        conn.sendall(b"ok")
    except (OSError, ValueError):
        pass
    finally:
        conn.close()


def _targets(path: str) -> list[list[object]]:
    try:
        got: list[list[object]] = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    return got


def _client_loop(w: Workload, rng: random.Random, log: TextIO, lock: threading.Lock) -> None:
    per_thread = w.rate / w.threads
    while True:
        time.sleep(rng.expovariate(per_thread))
        targets = [t for t in _targets(w.targets) if t[0] != w.ip]
        if not targets:
            continue
        ip, port = rng.choice(targets)
        if rng.random() < w.refused_share:
            port = CLOSED_PORT
        hold_s = rng.uniform(3.0, 8.0) if rng.random() < w.long_share else 0.0
        line, sock = _connect(w.ip, str(ip), int(str(port)))
        with lock:  # logged before the exchange: a workload killed meanwhile still logged it
            log.write(json.dumps(line) + "\n")
        if sock is not None:
            _exchange(sock, hold_s, f"{w.name} {line[-1]}\n".encode())


def _connect(local_ip: str, ip: str, port: int) -> tuple[list[object], socket.socket | None]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT_S)
    sock.bind((local_ip, 0))
    lport = sock.getsockname()[1]
    t = time.time_ns()
    try:
        sock.connect((ip, port))
    except ConnectionRefusedError:
        outcome = "refused"
    except TimeoutError:  # our own connect timeout: the kernel was still retrying
        outcome = "abandoned"
    except OSError:
        outcome = "failed"
    else:
        return [local_ip, lport, ip, port, "established", t], sock
    sock.close()
    return [local_ip, lport, ip, port, outcome, t], None


def _exchange(sock: socket.socket, hold_s: float, head: bytes) -> None:
    """Send a request (in pieces a second apart when held open), half-close, read the answer."""
    try:
        sock.settimeout(30)
        deadline = time.monotonic() + hold_s
        sock.sendall(head + b"q" * 200)
        while time.monotonic() < deadline:
            time.sleep(1.0)
            sock.sendall(b"q" * 50)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    except OSError:
        pass  # the server was stopped meanwhile: the connection still happened
    finally:
        sock.close()
