"""Two network namespaces joined by a veth pair, a cgroup tree, and the peers run inside them.

    with Lab("agent") as lab:
        svc = lab.service_cgroup(f"foo-{lab.tag}")
        server = lab.serve(lab.server.at(svc), Server(lab.server.ip, 8080, recv=10, send=20))
        ...

Every name carries a random tag, so labs of tests running at the same time on one machine do
not meet: namespaces `ft<name>-c-<tag>` (client) and `ft<name>-s-<tag>` (server), interfaces
`ftc<tag>` and `fts<tag>`, cgroups below /sys/fs/cgroup/unified/flowtrail-<name>-<tag>/. The
addresses are test-only and exist only inside the two namespaces: a random /24 in
10.214.0.0/15 (client .1, server .2, .100 kept for a VIP) and fd00:f10:<n>::/64 (::1, ::2).
Ports for the lab's traffic come from `port()`: random, below the kernel's ephemeral range.

Teardown (`close()`, or leaving the `with`) also runs when a test fails halfway: it kills the
peers still running, deletes the namespaces (their veth ends and nftables rules go with them)
and removes the cgroup tree deepest first. What it cannot remove is reported as a warning.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import subprocess
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from flowtrail.lab import peer
from flowtrail.lab.peer import Client, Server

CGROUP2 = Path("/sys/fs/cgroup/unified")


def _v6(text: str) -> str:
    """Canonical spelling, as the agent reports it (n=0 would otherwise read "fd00:f10:0::1")."""
    return str(ipaddress.IPv6Address(text))


# Below Linux's default ephemeral range (32768-60999): no connection elsewhere on the host gets
# one of these as the port the kernel picked for it, so a capture filtered by port finds ours.
PORTS = range(20_000, 32_768)


class LabError(RuntimeError):
    """Building the lab or starting a peer failed; the message says which command and why."""


@dataclass(frozen=True)
class Place:
    """Where a peer runs: a network namespace (by name) and a cgroup directory."""

    netns: str
    cgroup: Path


@dataclass(frozen=True)
class End:
    """One end of the veth link: its namespace, its interface and its two addresses."""

    netns: str
    ifname: str
    ip: str
    ip6: str

    def at(self, cgroup: Path) -> Place:
        return Place(self.netns, cgroup)

    def netns_inode(self) -> int:
        """The namespace's inode number: how the kernel (and so capture's netns_ino) names it."""
        return os.stat(f"/run/netns/{self.netns}").st_ino


class Lab:
    """A client namespace and a server namespace on one veth link, plus a cgroup tree.

    The constructor only picks names and addresses; `start()` (or `with`) builds them.
    """

    def __init__(self, name: str) -> None:
        self.tag = uuid.uuid4().hex[:8]
        n = random.randrange(512)
        net = f"10.{214 + n // 256}.{n % 256}"
        self.client = End(
            f"ft{name}-c-{self.tag}", f"ftc{self.tag}", f"{net}.1", _v6(f"fd00:f10:{n:x}::1")
        )
        self.server = End(
            f"ft{name}-s-{self.tag}", f"fts{self.tag}", f"{net}.2", _v6(f"fd00:f10:{n:x}::2")
        )
        self.vip = f"{net}.100"
        self.root = CGROUP2 / f"flowtrail-{name}-{self.tag}"
        self._peers: list[subprocess.Popen[str]] = []
        self._ports: set[int] = set()

    def __enter__(self) -> Lab:
        try:
            self.start()
        except BaseException:
            self.close()  # a half-built lab is torn down too
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        c, s = self.client, self.server
        sh("ip", "netns", "add", c.netns)
        sh("ip", "netns", "add", s.netns)
        # Created straight inside the namespaces: the names never touch the host's.
        sh("ip", "link", "add", c.ifname, "netns", c.netns, "type", "veth", "peer", s.ifname,
           "netns", s.netns)  # fmt: skip
        for end in (c, s):
            configure(end)
        self.root.mkdir()

    def close(self) -> None:
        for p in self._peers:
            stop(p)
        for end in (self.client, self.server):
            subprocess.run(["ip", "netns", "del", end.netns], capture_output=True)
        remove_cgroup_tree(self.root)

    # -- cgroups ---------------------------------------------------------------------------

    def cgroup(self, *parts: str) -> Path:
        """A new cgroup at root/parts..., its parents made as needed."""
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True)
        return path

    def service_cgroup(self, unit: str) -> Path:
        """A cgroup shaped like a systemd service: system.slice/<unit>.service."""
        return self.cgroup("system.slice", f"{unit}.service")

    def pod_cgroup(self, pod_uid: str, qos: str = "burstable", driver: str = "systemd") -> Path:
        """A container's cgroup as the kubelet's cgroup driver (`systemd` with containerd, or
        `cgroupfs`) names it."""
        cid = f"{uuid.uuid4().hex}{uuid.uuid4().hex}"
        if driver == "cgroupfs":
            return self.cgroup("kubepods", qos, f"pod{pod_uid}", cid)
        pod = f"kubepods-{qos}-pod{pod_uid.replace('-', '_')}.slice"
        return self.cgroup(
            "kubepods.slice", f"kubepods-{qos}.slice", pod, f"cri-containerd-{cid}.scope"
        )

    # -- traffic ---------------------------------------------------------------------------

    def port(self) -> int:
        """A TCP port for this lab's traffic: random in `PORTS`, never the same twice per lab."""
        while (port := random.choice(PORTS)) in self._ports:
            pass
        self._ports.add(port)
        return port

    def dnat(self, port: int, backend_port: int) -> None:
        """In the client's namespace, send vip:port to the server's ip:backend_port.

        A ClusterIP in miniature: the client's socket sees the VIP, conntrack knows the backend.
        """
        rule = f"ip daddr {self.vip} tcp dport {port} dnat to {self.server.ip}:{backend_port}"
        nft_chain(self.client.netns, f"ip ftnat{self.tag}", "out", NAT_OUTPUT, rule)

    def drop(self, port: int) -> None:
        """In the server's namespace, drop every TCP packet to `port`: a connect times out."""
        rule = f"tcp dport {port} drop"
        nft_chain(self.server.netns, f"inet ftdrop{self.tag}", "in", FILTER_INPUT, rule)

    def spawn(self, where: Place, role: Server | Client) -> subprocess.Popen[str]:
        """Start a peer playing `role` at `where` (stdout piped); teardown stops it if needed."""
        proc = subprocess.Popen(
            peer.argv(where.netns, where.cgroup, role), stdout=subprocess.PIPE, text=True
        )
        self._peers.append(proc)
        return proc

    def adopt(self, proc: subprocess.Popen[str]) -> None:
        """A process started elsewhere that teardown stops with the lab's peers."""
        self._peers.append(proc)

    def serve(self, where: Place, server: Server) -> subprocess.Popen[str]:
        """Start a server peer and return once it listens, so clients never race it."""
        proc = self.spawn(where, server)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise LabError(f"server {server} at {where} did not start: {line!r}")
        return proc


def sh(*argv: str, stdin: str | None = None) -> None:
    """Run one setup command; failing, raise with the command's own complaint."""
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")


NAT_OUTPUT = "type nat hook output priority -100"
FILTER_INPUT = "type filter hook input priority 0; policy accept"


def nft_chain(netns: str, table: str, chain: str, hook: str, rule: str) -> None:
    """Load a table (`<family> <name>`) with one base chain (`hook`) holding `rule` into `netns`.

    The table lives and dies with the namespace.
    """
    rules = f"table {table} {{\n chain {chain} {{\n  {hook};\n  {rule}\n }}\n}}\n"
    sh("ip", "netns", "exec", netns, "nft", "-f", "-", stdin=rules)


def configure(end: End) -> None:
    """Give an end its addresses and bring it and its namespace's loopback up."""
    ns = ("ip", "-n", end.netns)
    sh(*ns, "addr", "add", f"{end.ip}/24", "dev", end.ifname)
    # nodad: the address is usable at once instead of after duplicate detection.
    sh(*ns, "addr", "add", f"{end.ip6}/64", "dev", end.ifname, "nodad")
    sh(*ns, "link", "set", end.ifname, "up")
    sh(*ns, "link", "set", "lo", "up")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    # Reaped, so it has left its cgroup before the cgroup is removed.
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


def remove_cgroup_tree(root: Path, timeout_s: float = 5.0) -> None:
    """Remove `root` and every cgroup below it, deepest first.

    A process left inside (by a test that failed) is moved to the top cgroup first. A process
    that just exited may take a moment to leave, so each removal is retried until the deadline.
    """
    if not root.exists():
        return
    below = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    deadline = time.monotonic() + timeout_s
    for cg in [*below, root]:
        evict(cg)
        while not try_rmdir(cg):
            if time.monotonic() > deadline:
                warnings.warn(f"lab cgroup {cg} could not be removed", stacklevel=2)
                break
            time.sleep(0.1)


def evict(cgroup: Path) -> None:
    with contextlib.suppress(OSError):
        for pid in (cgroup / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):  # it may have exited meanwhile
                (CGROUP2 / "cgroup.procs").write_text(pid)


def try_rmdir(path: Path) -> bool:
    """True once `path` is gone (removed now, or by someone else before)."""
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
