"""A small fleet on one kernel: hosts, moving workloads, an agent-less load balancer, the truth.

    fleet = Fleet(run_dir, hosts=3, slots=12, rate=20.0)
    with fleet:                      # builds it; leaving tears everything down
        fleet.start_workloads()
        fleet.hand_over(rng)          # an address moves to a new workload, maybe on another host
        truth, events = fleet.truth(), fleet.events()

Topology: a bridge in its own namespace `ft<tag>-br`; each host is a namespace `ft<tag>-h<i>`
whose `eth0` is a veth port of that bridge; the load balancer is a namespace `ft<tag>-lb` on
the bridge too. Every address lives in 10.216.<n>.0/24 (n random per fleet), only inside these
namespaces. A workload is a process in its own cgroup (`system.slice/<name>.service` under the
fleet's cgroup root, so the agent's systemd resolver names it `systemd:<name>.service`) in its
host's namespace, serving on and connecting from its own address, an extra address of eth0.

Handing an address over: the lab takes it out of the targets file, waits `settle_s` (clients
read the file just before each attempt and give a handshake 3.5 s, so none to the leaving
address is still going on), kills the owner, then at one instant ends the old
owner's truth interval and starts the new one's; it moves the address (maybe to another host),
drops every namespace's neighbour entry for it (the new owner has another MAC) and starts the
new workload. The control-plane feed says the same (unassign, assign), some of it late.

Every `db` workload serves on a listener it bound in another cgroup before moving to its own
(as socket activation or a pre-fork server hands a listener over): its connections must still
be named by the workload, never by the listener's cgroup.

Host 0 drops every other SYN to its services (a lossy handshake); the load balancer DNATs its
VIP's port 80 to the first backends round robin (and masquerades, so replies come back through
it); its VIP is named only by the event feed (that event arrives late too).

Beside the hosts (flowtrail/lab/fleet_sites.py): a NAT gateway masquerading two LAN clients,
with connections of its own, and two isolated networks with the same addresses under two
hosts' agents. Their truth is exact for what the address alone cannot say: the gateway's
address per port (who really called from it), the overlapping addresses per exporter.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import pyarrow as pa

from flowtrail.lab import fleet_sites as sites
from flowtrail.lab import workload as wl
from flowtrail.lab.fleet_sites import Site
from flowtrail.lab.netns import CGROUP2, LabError, remove_cgroup_tree, sh, stop
from flowtrail.schema import EVENTS, TRUTH

LB_PORT = 80
LB_WORKLOAD = "lb:frontend"
KINDS = ("web", "api", "db", "cache")
HANDED_OVER_KIND = "db"  # these serve on a listener bound in another cgroup (_listener_cgroup)
LOSSY = "tcp dport 8080 tcp flags & (syn|ack) == syn numgen inc mod 2 == 0 drop"


@dataclass
class Owner:
    """One workload's tenure of one address."""

    name: str
    ip: str
    host: int
    proc: subprocess.Popen[str] | None
    from_ns: int
    to_ns: int | None = None
    site: Site | None = None  # one of the fixed workloads beside the hosts


@dataclass
class Fleet:
    run_dir: Path
    hosts: int = 3
    slots: int = 12
    rate: float = 20.0  # connections a second, the whole fleet
    backends: int = 2
    late_share: float = 0.3  # share of events that reach the collector late
    late_s: tuple[float, float] = (1.0, 6.0)
    settle_s: float = wl.CONNECT_TIMEOUT_S + 0.5  # every handshake to a leaving address is over
    seed: int = 0
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    owners: list[Owner] = field(default_factory=list)  # every tenure, in order
    live: dict[str, Owner] = field(default_factory=dict)  # ip → current owner
    event_rows: list[tuple[str, str, str, int, int]] = field(default_factory=list)
    handovers: int = 0
    across_hosts: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        n = random.randrange(256)
        self.net = f"10.216.{n}"
        self.vip = f"{self.net}.250"
        self.bridge = f"ft{self.tag}-br"
        self.lb = f"ft{self.tag}-lb"
        self.root = CGROUP2 / f"flowtrail-fleet-{self.tag}"
        self.targets_path = self.run_dir / "targets.json"
        self.logs = self.run_dir / "connections"
        self.accepted = self.run_dir / "accepted"  # who called, as each server read it
        self._counter = 0
        self.router, *self.lans = sites.gateway_sites(
            self.tag, self.net, self.hosts, str(self.targets_path)
        )
        self.overlapping = sites.overlap_sites(self.tag, self.net, self.run_dir)
        self.sites = [self.router, *self.lans, *self.overlapping]
        self.fixed: list[Owner] = []  # the sites' workloads

    def host_ns(self, i: int) -> str:
        return f"ft{self.tag}-h{i}"

    def slot_ip(self, slot: int) -> str:
        return f"{self.net}.{100 + slot}"

    # -- build and tear down ---------------------------------------------------------------

    def __enter__(self) -> Fleet:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def build(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.accepted.mkdir(parents=True, exist_ok=True)
        self.root.mkdir()
        sh("ip", "netns", "add", self.bridge)
        sh("ip", "-n", self.bridge, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.bridge, "link", "set", "br0", "up")
        for i in range(self.hosts):
            self._attach(self.host_ns(i), f"h{i}", f"{self.net}.{10 + i}")
        self._attach(self.lb, "lb", self.vip)
        self._load_balancer()
        self._attach(self.router.netns, "gw", self.router.ip)
        sites.build_gateway(self.router, self.lans)
        sites.build_overlap(self.overlapping)
        sh("ip", "netns", "exec", self.host_ns(0), "nft", "-f", "-", stdin=_table("inet", "ftloss",
           "type filter hook input priority 0; policy accept", LOSSY))  # fmt: skip

    def _attach(self, netns: str, port: str, ip: str) -> None:
        sh("ip", "netns", "add", netns)
        sh("ip", "link", "add", "eth0", "netns", netns, "type", "veth", "peer", port,
           "netns", self.bridge)  # fmt: skip
        sh("ip", "-n", self.bridge, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", netns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", netns, "link", "set", "eth0", "up")
        sh("ip", "-n", netns, "link", "set", "lo", "up")

    def _load_balancer(self) -> None:
        sh("ip", "netns", "exec", self.lb, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        backends = [self.slot_ip(s) for s in range(self.backends)]
        pick = ", ".join(f"{i} : {ip}" for i, ip in enumerate(backends))
        rules = (
            "table ip ftlb {\n"
            " chain pre {\n  type nat hook prerouting priority -100;\n"
            f"  ip daddr {self.vip} tcp dport {LB_PORT} dnat to numgen inc mod "
            f"{len(backends)} map {{ {pick} }} : {wl.SERVICE_PORT}\n }}\n"
            " chain post {\n  type nat hook postrouting priority 100;\n"
            f"  ip daddr {self.net}.0/24 tcp dport {wl.SERVICE_PORT} masquerade\n }}\n}}\n"
        )
        sh("ip", "netns", "exec", self.lb, "nft", "-f", "-", stdin=rules)
        now = time.time_ns()
        self._event(self.vip, LB_WORKLOAD, "assign", now, late=True)
        self.owners.append(Owner(LB_WORKLOAD, self.vip, -1, None, now))

    def close(self) -> None:
        for owner in self.owners:
            if owner.proc is not None:
                stop(owner.proc)
        for owner in self.fixed:
            if owner.proc is not None:
                stop(owner.proc)
        spaces = [*(self.host_ns(i) for i in range(self.hosts)), self.lb, self.bridge]
        for ns in spaces + [site.netns for site in self.sites]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        remove_cgroup_tree(self.root)

    # -- workloads ---------------------------------------------------------------------------

    def start_workloads(self) -> None:
        for slot in range(self.slots):
            self._start(self.slot_ip(slot), self.rng.randrange(self.hosts), time.time_ns())
        self._write_targets()
        for site in self.sites:
            # At half a host workload's rate: the sites add a third to the fleet's traffic.
            rate = self.rate / self.slots / 2
            proc = self._spawn(site.name, site.ip, site.netns, site.targets, rate, site.long_share)
            self.fixed.append(Owner(workload_name(site.name), site.ip, site.host, proc,
                                    time.time_ns(), site=site))  # fmt: skip

    def _start(self, ip: str, host: int, from_ns: int) -> Owner:
        self._counter += 1
        name = f"{KINDS[self._counter % len(KINDS)]}-{self._counter}"
        sh("ip", "-n", self.host_ns(host), "addr", "add", f"{ip}/24", "dev", "eth0")
        rate = self.rate / self.slots
        proc = self._spawn(name, ip, self.host_ns(host), str(self.targets_path), rate)
        owner = Owner(workload_name(name), ip, host, proc, from_ns)
        self.owners.append(owner)
        self.live[ip] = owner
        self._event(ip, owner.name, "assign", from_ns)
        return owner

    def _spawn(
        self, name: str, ip: str, netns: str, targets: str, rate: float, long_share: float = 0.05
    ) -> subprocess.Popen[str]:
        """Start workload `name` serving and calling from `ip` in `netns`; once it listens."""
        cgroup = self.root / "system.slice" / f"{name}.service"
        cgroup.mkdir(parents=True)
        spec = wl.Workload(
            name=name,
            ip=ip,
            targets=targets,
            log=str(self.logs / f"{name}.jsonl"),
            rate=rate,
            long_share=long_share,
            seed=self.seed,
            listener_cgroup=self._listener_cgroup(name),
            accepted=str(self.accepted / f"{name}.jsonl"),
        )
        proc = subprocess.Popen(
            wl.argv(netns, cgroup, spec), stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise LabError(f"workload {name} at {ip} in {netns} did not start: {line!r}")
        return proc

    def stop_fixed(self, owner: Owner) -> None:
        """Stop one of the sites' workloads as a handover stops an owner: its callers stop
        calling it first, then it goes (its address stays where it was, unowned: calls to it
        are refused from then on)."""
        assert owner.site is not None and owner.proc is not None
        others = [o.ip for o in self.fixed if o.site and o.site.targets == owner.site.targets]
        sites.write_targets(owner.site.targets, [ip for ip in others if ip != owner.ip])
        time.sleep(self.settle_s)
        stop(owner.proc)
        self._destroy_sockets(owner)
        owner.to_ns = time.time_ns()
        sites.write_targets(owner.site.targets, others)

    def _listener_cgroup(self, name: str) -> str | None:
        """Where a handed-over workload's listener is bound (None: in its own cgroup).

        Every `HANDED_OVER_KIND` workload binds its listener in a cgroup of its own,
        `system.slice/<name>-listener.service`, then serves from its own: the kernel files the
        connections it accepts under the listener's cgroup, a name no truth interval holds.
        """
        if not name.startswith(f"{HANDED_OVER_KIND}-"):
            return None
        where = self.root / "system.slice" / f"{name}-listener.service"
        where.mkdir(parents=True)
        return str(where)

    def hand_over(self) -> Owner:
        """Move one address to a new workload (on a random host); returns the new owner."""
        ip = self.rng.choice(sorted(self.live))
        old = self.live.pop(ip)
        self._write_targets()
        time.sleep(self.settle_s)  # attempts begun before the file changed are over
        assert old.proc is not None
        stop(old.proc)
        self._destroy_sockets(old)
        now = time.time_ns()
        old.to_ns = now
        self._event(ip, old.name, "unassign", now)
        sh("ip", "-n", self.host_ns(old.host), "addr", "del", f"{ip}/24", "dev", "eth0")
        host = self.rng.randrange(self.hosts)
        for ns in [*(self.host_ns(i) for i in range(self.hosts)), self.lb]:
            subprocess.run(["ip", "-n", ns, "neigh", "del", ip, "dev", "eth0"], capture_output=True)
        new = self._start(ip, host, now)
        self._write_targets()
        self.handovers += 1
        self.across_hosts += host != old.host
        return new

    def _destroy_sockets(self, owner: Owner) -> None:
        """Reset what the stopped workload's sockets left behind on its address (orphans
        waiting for a FIN's answer), as deleting a pod's namespace does: otherwise one may
        close only after its address has moved, or after the agents have stopped."""
        ns = self.host_ns(owner.host) if owner.site is None else owner.site.netns
        subprocess.run(["ip", "netns", "exec", ns, "ss", "-K", "-t", "src", owner.ip],
                       capture_output=True)  # fmt: skip

    def _write_targets(self, lb: bool = True) -> None:
        targets = [[ip, wl.SERVICE_PORT] for ip in sorted(self.live)]
        targets += [[self.vip, LB_PORT]] if lb else []
        tmp = self.targets_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(targets))
        os.replace(tmp, self.targets_path)

    def _event(self, ip: str, workload: str, action: str, t: int, late: bool = False) -> None:
        delay = 0.0
        if late or self.rng.random() < self.late_share:
            delay = self.rng.uniform(*self.late_s)
        self.event_rows.append((ip, workload, action, t, t + int(delay * 1e9)))

    def stop_all(self) -> int:
        """Stop every workload (their tenures end now); returns the time.

        Like a handover: clients get nothing more to connect to, and the workloads are stopped
        only once every handshake begun before is over (a server stopped halfway through one
        never has the connection its client has).
        """
        stopping = list(self.live.values())
        self.live.clear()
        self._write_targets(lb=False)
        for owner in self.fixed:
            if owner.site is not None and owner.site.targets != str(self.targets_path):
                sites.write_targets(owner.site.targets, [])
        time.sleep(self.settle_s)
        for owner in stopping:
            if owner.proc is not None:
                stop(owner.proc)
            self._destroy_sockets(owner)
        for owner in self.fixed:
            if owner.proc is not None and owner.to_ns is None:
                stop(owner.proc)
                self._destroy_sockets(owner)
        now = time.time_ns()
        for owner in [*self.owners, *self.fixed]:
            if owner.to_ns is None:
                owner.to_ns = now
        return now

    # -- what the lab did --------------------------------------------------------------------

    def truth(self) -> pa.Table:
        """Who owned what: hosts' addresses by address; the sites' host-local addresses per
        exporter; the gateway's address per port, from who really called from it (it owns
        nothing else: it serves nobody)."""
        rows: list[tuple[str, str, int, int | None, str | None, int | None]] = [
            (o.ip, o.name, o.from_ns, o.to_ns, None, None) for o in self.owners
        ]
        for o in self.fixed:
            if o.site is not None and o.site.host_local:
                rows.append((o.ip, o.name, o.from_ns, o.to_ns, exporter_name(o.host), None))
        margin = int(1e9)
        callers = sites.callers_from(self.accepted, self.router.ip, workload_name, margin)
        rows += [(self.router.ip, who, a, b, None, port) for port, who, a, b in callers]
        cols = list(zip(*rows, strict=True))
        return pa.table(
            {f.name: list(c) for f, c in zip(TRUTH.schema, cols, strict=True)},
            schema=TRUTH.schema,
        )

    def translated_prefixes(self) -> tuple[str, ...]:
        """Address prefixes (text) of the callers the gateway masquerades."""
        return tuple(s.ip.rsplit(".", 1)[0] + "." for s in self.lans)

    @property
    def overlap_prefix(self) -> str:
        """The overlapping networks' addresses' common prefix (text)."""
        return self.overlapping[0].ip.rsplit(".", 1)[0] + "."

    def halfway(self) -> None:
        """Pair B's `.2` workload goes (see flowtrail/lab/fleet_sites.py)."""
        (owner,) = [o for o in self.fixed if o.site is not None and o.site.name == "netb-2"]
        self.stop_fixed(owner)

    def events(self) -> pa.Table:
        cols = list(zip(*self.event_rows, strict=True))
        names = ["ip", "workload", "action", "time_ns", "received_ns"]
        return pa.table(
            {n: list(c) for n, c in zip(names, cols, strict=True)}, schema=EVENTS.schema
        )

    def regions(self) -> pa.Table:
        return pa.table({"cidr": [f"{self.net}.0/24"], "region": ["lab"]})

    def host_namespaces(self) -> list[str]:
        return [self.host_ns(i) for i in range(self.hosts)]

    def agent_namespaces(self, host: int) -> list[str]:
        """What host `host`'s agent captures: its namespace and the sites' it holds."""
        return [self.host_ns(host), *(s.netns for s in self.sites if s.host == host)]


def exporter_name(host: int) -> str:
    """The `exporter` of host `host`'s agent."""
    return f"host-{host}"


def workload_name(unit: str) -> str:
    """The systemd resolver's name for the workload in cgroup system.slice/<unit>.service."""
    return f"systemd:{unit}.service"


def _table(family: str, name: str, hook: str, rule: str) -> str:
    return f"table {family} {name} {{\n chain in {{\n  {hook};\n  {rule}\n }}\n}}\n"
