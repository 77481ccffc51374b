"""Which addresses are host-local here: the `local_scope` / `remote_scope` marks on each row.

An address on a network that never leaves this host unchanged (a container bridge behind NAT,
a namespace without a route out) may be in use on every host at once: Docker gives each host
172.17.0.0/16, two labs both use 10.0.9.0/24. The collector owns such addresses per exporter
(flowtrail/engine/scopes.py), so it must be told which they are. An address is host-local
when it lies in one of these prefixes (and in no `--routable` one):

* configured: `--host-local CIDR`;
* a namespace without a route out: no default route and no route through a gateway in that
  address family; its connected prefixes are host-local (the agent's own namespace excepted:
  its networks are the host's real ones, shared with other hosts);
* behind source NAT: a `masquerade`/`snat` rule in a namespace's nftables ruleset. Its
  `ip saddr`/`ip6 saddr` prefixes where it has them; else, for a rule matching `oifname X`
  (a router's uplink), the namespace's connected prefixes on every other interface. A rule
  that picks by anything else (kube-proxy's packet mark) says nothing about which networks
  it hides: `--host-local` does.

Loopback and link-local are always host-local. Facts are read per namespace (`ip -j`, `nft`,
run inside it) on first sight and again in the background every RULES_TTL_S, for the
namespaces that rows come from plus the agent's own (where a container host's masquerade
rules live); the prefixes found anywhere apply to every row of the host.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.addressranges import AddressRanges, Network
from flowtrail.agent.netlink import NetnsIndex

RULES_TTL_S = 10.0
HOST = "host"
_NAT_LINE = re.compile(r"\b(masquerade|snat)\b")
_SADDR = re.compile(r"\bip6? saddr (\{[^}]*\}|\S+)")
_OIFNAME = re.compile(r"\boifname \"?([\w.@:-]+)\"?")  # not `oifname != ...`


def _run(argv: list[str], path: str) -> str | None:
    if path:
        argv = ["nsenter", f"--net={path}", *argv]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


def _networks(text: str) -> list[Network]:
    out: list[Network] = []
    for item in text.strip("{} ").split(","):
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            continue  # a named set or a range: not read
    return out


def host_local_prefixes(
    addrs: list[dict[str, object]],
    routes: list[dict[str, object]],
    ruleset: str,
    *,
    own: bool,
) -> set[Network]:
    """The host-local prefixes one namespace shows (`ip -j addr`, `ip -j route`, `nft list
    ruleset` texts parsed), by the rules in this module's docstring."""
    connected: dict[str, list[Network]] = {}  # interface → its prefixes (loopback aside)
    for link in addrs:
        name = str(link.get("ifname"))
        for a in link.get("addr_info", []) or []:  # type: ignore[attr-defined]
            if a.get("scope") == "host":
                continue
            net = ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network
            connected.setdefault(name, []).append(net)
    out: set[Network] = set()
    if not own:
        for version in (4, 6):
            leaves = any(
                r.get("dst") == "default" or "gateway" in r
                for r in routes
                if r.get("family") == version
            )
            if not leaves:
                out |= {n for nets in connected.values() for n in nets if n.version == version}
    for line in ruleset.lower().splitlines():
        if not _NAT_LINE.search(line):
            continue
        saddr = _SADDR.search(line)
        if saddr and not line[saddr.start() :].startswith(("ip saddr !=", "ip6 saddr !=")):
            out |= set(_networks(saddr.group(1)))
            continue
        oif = _OIFNAME.search(line)
        if oif:  # a router's "whatever leaves the uplink": every other network is behind it
            out |= {n for dev, nets in connected.items() if dev != oif.group(1) for n in nets}
        # Otherwise the rule picks by something else (kube-proxy's packet mark): which
        # networks it hides cannot be read from it (--host-local says).
    return out


class ScopeMarker:
    """Marks rows' local and remote addresses `host` where they are host-local (see above)."""

    def __init__(
        self,
        netns: NetnsIndex | None = None,
        *,
        host_local: Iterable[Network] = (),
        routable: Iterable[Network] = (),
        detect: bool = True,
    ) -> None:
        self.netns = netns or NetnsIndex()
        self.configured = tuple(host_local)
        # Parsed without numba: the agent's footprint (flowtrail/ipv4text.py).
        self.routable = AddressRanges(list(routable), compiled=False) if routable else None
        self.detect = detect
        self._always = AddressRanges([], compiled=False)  # loopback and link-local only
        self.stats = {"scope_host_addresses": 0, "scope_facts_unreadable": 0}
        self._facts: dict[int, tuple[float, frozenset[Network]]] = {}
        self._ranges: tuple[frozenset[Network], AddressRanges] | None = None
        self._lock = threading.Lock()
        self._refreshing: set[int] = set()

    def _namespace(self, ino: int, pid_hint: int) -> frozenset[Network]:
        """A namespace's host-local prefixes. Read at once on first sight (so none of its rows
        goes unmarked); after RULES_TTL_S read again in the background, the last answer
        standing meanwhile: reading runs processes, which must not hold up the rows."""
        with self._lock:
            cached = self._facts.get(ino)
            stale = cached is not None and time.monotonic() - cached[0] >= RULES_TTL_S
            if stale and ino not in self._refreshing:
                self._refreshing.add(ino)
                threading.Thread(
                    target=self._refresh, args=(ino, pid_hint), name="scope-facts", daemon=True
                ).start()
        if cached is not None:
            return cached[1]
        found = self._read(ino, pid_hint)
        with self._lock:
            self._facts[ino] = (time.monotonic(), found)
        return found

    def _refresh(self, ino: int, pid_hint: int) -> None:
        found = self._read(ino, pid_hint)
        with self._lock:
            self._facts[ino] = (time.monotonic(), found)
            self._refreshing.discard(ino)

    def _read(self, ino: int, pid_hint: int) -> frozenset[Network]:
        path = self.netns.path(ino, pid_hint)
        if path is None:
            return frozenset()
        addrs = _run(["ip", "-j", "addr", "show"], path)
        routes = [
            _run(["ip", "-j", f"-{v}", "route", "show", "table", "main"], path) for v in (4, 6)
        ]
        rules = _run(["nft", "list", "ruleset"], path)
        if addrs is None or None in routes:
            with self._lock:
                self.stats["scope_facts_unreadable"] += 1
            return frozenset()
        parsed = [
            {**r, "family": v}
            for v, text in zip((4, 6), routes, strict=True)
            for r in json.loads(text or "[]")
        ]
        own = ino == self.netns.own
        return frozenset(
            host_local_prefixes(json.loads(addrs or "[]"), parsed, rules or "", own=own)
        )

    def _current(self, namespaces: Iterable[tuple[int, int]]) -> AddressRanges:
        old = time.monotonic() - 60.0  # namespaces come and go with containers
        with self._lock:
            for ino in [k for k, (at, _) in self._facts.items() if at < old]:
                del self._facts[ino]
        nets: set[Network] = set(self.configured)
        if self.detect:
            nets |= self._namespace(self.netns.own, 0)
            for ino, pid in namespaces:
                nets |= self._namespace(ino, pid)
        key = frozenset(nets)
        if self._ranges is None or self._ranges[0] != key:
            self._ranges = (key, AddressRanges(sorted(key, key=str), compiled=False))
        return self._ranges[1]

    def mark(self, raw: pa.Table, remote: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
        """(local_scope, remote_scope) per row of capture's `raw` rows: `host` or null.

        `remote`: each row's remote address after destination NAT, as exported."""
        n = raw.num_rows
        if n == 0:
            return pa.nulls(0, pa.string()), pa.nulls(0, pa.string())
        ino = raw.column("netns_ino").fill_null(0)
        pid = raw.column("pid").fill_null(0)
        seen = []  # (namespace, a pid in it) per distinct namespace: a handful per batch
        for value in pc.unique(ino).to_pylist():
            at = pc.index(ino, value).as_py()
            seen.append((int(value), int(pid[at].as_py())))
        ranges = self._current(seen)
        out = []
        for values in (raw.column("local_ip"), remote):
            host = ranges.allowed(values)
            if self.routable is not None and host.any():
                # --routable wins, except for loopback and link-local (host-local everywhere)
                host &= ~self.routable.allowed(values) | self._always.allowed(values)
            self.stats["scope_host_addresses"] += int(np.count_nonzero(host))
            out.append(pc.if_else(pa.array(host), HOST, pa.scalar(None, pa.string())))
        return out[0], out[1]
