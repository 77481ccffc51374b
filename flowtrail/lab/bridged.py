"""Hosts as network namespaces on one bridge, for fleet tests: a server and its agents talk
over veth ports of a bridge, never over loopback.

    with BridgedHosts(["server", "web", "db"]) as net:
        net.ip("server")                     # 10.218.<n>.10
        net.popen("web", [...])              # a process in web's namespace (mounts unchanged)
        net.call("web", fn)                  # fn() on a thread inside web's namespace
        net.serve("db", cgroup, Server(...)) # a lab peer (flowtrail/lab/peer.py)

Names carry a random tag (`ft<tag>-<host>`, bridge `ft<tag>-br`); addresses are a random
/24 of 10.218.0.0/16 that exists only inside these namespaces; cgroups live under
/sys/fs/cgroup/unified/flowtrail-bridged-<tag>/. Teardown stops what was started here,
deletes the namespaces and removes the cgroups, also after a failure.
"""

from __future__ import annotations

import ctypes
import os
import random
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from flowtrail.lab import peer
from flowtrail.lab.netns import CGROUP2, LabError, remove_cgroup_tree, sh, stop
from flowtrail.lab.peer import CLONE_NEWNET, Client, Server

T = TypeVar("T")


class BridgedHosts:
    def __init__(self, hosts: list[str]) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.net = f"10.218.{random.randrange(256)}"
        self.hosts = list(hosts)
        self.bridge = f"ft{self.tag}-br"
        self.root = CGROUP2 / f"flowtrail-bridged-{self.tag}"
        self._procs: list[subprocess.Popen[Any]] = []

    def netns(self, host: str) -> str:
        return f"ft{self.tag}-{host}"

    def ip(self, host: str) -> str:
        return f"{self.net}.{10 + self.hosts.index(host)}"

    @property
    def cidr(self) -> str:
        return f"{self.net}.0/24"

    def __enter__(self) -> BridgedHosts:
        try:
            sh("ip", "netns", "add", self.bridge)
            sh("ip", "-n", self.bridge, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.bridge, "link", "set", "br0", "up")
            for i, host in enumerate(self.hosts):
                ns, port = self.netns(host), f"p{i}"
                sh("ip", "netns", "add", ns)
                sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", port,
                   "netns", self.bridge)  # fmt: skip
                sh("ip", "-n", self.bridge, "link", "set", port, "master", "br0", "up")
                sh("ip", "-n", ns, "addr", "add", f"{self.ip(host)}/24", "dev", "eth0")
                sh("ip", "-n", ns, "link", "set", "eth0", "up")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
            self.root.mkdir()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for p in self._procs:
            stop(p)
        for ns in [*(self.netns(h) for h in self.hosts), self.bridge]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        remove_cgroup_tree(self.root)

    def service_cgroup(self, unit: str) -> Path:
        """A cgroup shaped like a systemd service: the agent's systemd resolver names it
        `systemd:<unit>.service`."""
        path = self.root / "system.slice" / f"{unit}.service"
        path.mkdir(parents=True)
        return path

    def popen(self, host: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """`argv` in `host`'s network namespace only (nsenter: /sys and the cgroup tree stay
        as they are, which `ip netns exec` would remount); teardown stops it if still running."""
        ns = f"--net=/run/netns/{self.netns(host)}"
        proc = subprocess.Popen(["nsenter", ns, "--", *argv], **kwargs)
        self._procs.append(proc)
        return proc

    def call(self, host: str, fn: Callable[[], T], timeout_s: float = 120.0) -> T:
        """fn() on a new thread that has joined `host`'s network namespace (a namespace is a
        thread's own), so the sockets it opens are that host's."""
        result: list[T] = []
        error: list[BaseException] = []

        def run() -> None:
            fd = os.open(f"/run/netns/{self.netns(host)}", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {self.netns(host)}")
            finally:
                os.close(fd)
            try:
                result.append(fn())
            except BaseException as exc:
                error.append(exc)

        thread = threading.Thread(target=run, name=f"in-{host}", daemon=True)
        thread.start()
        thread.join(timeout_s)
        if thread.is_alive():
            raise TimeoutError(f"call in {host} did not return within {timeout_s} s")
        if error:
            raise error[0]
        return result[0]

    def spawn(self, host: str, cgroup: Path, role: Server | Client) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            peer.argv(self.netns(host), cgroup, role), stdout=subprocess.PIPE, text=True
        )
        self._procs.append(proc)
        return proc

    def serve(self, host: str, cgroup: Path, server: Server) -> subprocess.Popen[str]:
        """A server peer, returned once it listens."""
        proc = self.spawn(host, cgroup, server)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise LabError(f"server {server} on {host} did not start: {line!r}")
        return proc
