"""`flowtrail up`: the whole system on this machine in one process, data under one directory.

What runs (on loopback; with `--listen ADDR` elsewhere, it serves a fleet: docs/fleet.md):

    agent (eBPF capture of this host) --HTTPS + token--> collector (WAL, attribution, store)
                                                         query API (read-only HTTP) --> store

DIR holds everything: tls/ (a fresh self-signed certificate each start), tokens.txt (this
host's exporter and a random token, made once, mode 0600), wal/, quarantine/, spool/ (the
agent's undelivered batches), flows.duckdb (the store) and up.json (where everything listens,
written once ready). Stop with Ctrl-C or SIGTERM: the agent exports its last batch, the
collector decides what it can and stores it (the rest stays in its write-ahead log for the
next start), then the API stops.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from flowtrail.errors import CapabilityError, FlowtrailError, InputError
from flowtrail.fleet.serving import is_fleet, listen_address
from flowtrail.standalone import run_standalone
from flowtrail.stop_signals import stop_on_signals
from flowtrail.units import DURATION

if TYPE_CHECKING:  # the query API (DuckDB, Arrow) loads when `up` runs, not for `--help`
    from flowtrail.api.server import QueryAPI
    from flowtrail.fleet.serving import Fleet

SECOND = 1_000_000_000
TOKENS_FILE = "tokens.txt"
STATE_FILE = "up.json"


@dataclass
class Layout:
    """Where each part keeps its files under the one data directory."""

    root: Path

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def tokens(self) -> Path:
        return self.root / TOKENS_FILE

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def db(self) -> Path:
        return self.root / "flows.duckdb"

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE


def ensure_token(path: Path, exporter: str) -> str:
    """This exporter's token from the tokens file, adding a random one (file mode 0600)."""
    from flowtrail.fleet import tokens_file

    if any(c.isspace() for c in exporter) or not exporter or exporter.startswith("#"):
        raise InputError(f"--exporter {exporter!r}: needs a name without spaces or '#'")
    for name, _rest, line in tokens_file.entries(path):
        if name == exporter:
            return line.split("#", 1)[0].split()[1]
    return tokens_file.add(path, exporter, "flows", None)


def lock_data_dir(layout: Layout) -> int:
    """One `up` per data directory: a second would remake the certificate under the first."""
    fd = os.open(layout.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise InputError(
            f"--data {layout.root}: in use by another flowtrail up (pid {holder})"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def agent_problem() -> str | None:
    """Why the agent cannot run here (checked before anything starts), or None."""
    if os.geteuid() != 0:
        return "not root: the agent needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"
    return None


def check_ports(host: str, ports: dict[str, int]) -> None:
    """Each nonzero port free on `host` (InputError naming its flag), checked before anything
    is made; the servers bind them again moments later (a race lost then is still refused
    cleanly, only after the data directory exists)."""
    given = [(flag, port) for flag, port in ports.items() if port]
    if len({port for _flag, port in given}) < len(given):
        raise InputError(f"{' and '.join(f for f, _p in given)}: give two different ports")
    for flag, port in given:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            try:
                probe.bind((host, port))
            except OSError as exc:
                why = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
                raise InputError(f"{flag} {port}: cannot listen on {host}:{port}: {why}") from None


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it runs
    return True


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """DATA/up.json while the `up` that wrote it runs; None when there is none or it is stale
    (its pid no longer runs: the `up` was killed before it could remove the file)."""
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    pid = state.get("pid") if isinstance(state, dict) else None
    return state if isinstance(pid, int) and pid > 0 and _pid_runs(pid) else None


def clear_stale_state(layout: Layout) -> int | None:
    """With the lock held no other `up` runs here, so an up.json left behind is stale: remove
    it (a script waiting for up.json must not read the dead one's ports); returns its pid."""
    try:
        old = json.loads(layout.state.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        old = {}
    layout.state.unlink(missing_ok=True)
    pid = old.get("pid") if isinstance(old, dict) else None
    return pid if isinstance(pid, int) else -1


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    os.replace(tmp, path)


class AgentPart:
    """The agent of `flowtrail agent`, exporting to the local collector, in a thread."""

    def __init__(
        self,
        *,
        exporter: str,
        url: str,
        token: str,
        cafile: Path | None,
        spool: Path,
        interval_s: float,
        identity_file: str | None,
        host_workload: str | None,
        own: dict[str, tuple[str, int]] | None = None,
        keep_own_traffic: bool = False,
        capture_dns: bool = True,
    ) -> None:
        """`own`: flowtrail's servers by name ("collector", "api") → (ip, port). Connections
        to them are left out, or with `keep_own_traffic` kept and named flowtrail:<name>."""
        from flowtrail.agent.capture import Capture
        from flowtrail.agent.conntrack import NatResolver
        from flowtrail.agent.exporter import Delivery, Spool
        from flowtrail.agent.identity import (
            DEFAULT_RESOLVERS,
            IdentityChain,
            Registry,
            default_host_workload,
        )
        from flowtrail.agent.listeners import ListenerWatch
        from flowtrail.agent.netlink import NetnsIndex
        from flowtrail.agent.runner import Agent, AgentConfig
        from flowtrail.agent.snapshots import Snapshotter
        from flowtrail.collector.client import CollectorExporter

        registry = Registry(identity_file)
        self.identity = IdentityChain.build(
            registry.resolvers or DEFAULT_RESOLVERS,
            registry=registry,
            host_workload=host_workload or registry.host or default_host_workload(),
        )
        own = own or {}
        if keep_own_traffic:
            for name, (ip, port) in own.items():  # the server ends; their clients by heartbeat
                registry.register(f"flowtrail:{name}", ip=ip, port=port)
        netns = NetnsIndex()
        self.capture = Capture()
        self.capture.start()  # CapabilityError names what is missing
        self.exporter = CollectorExporter(url, token, str(cafile) if cafile else None)
        # The agent retries a collector that is briefly away every few seconds, not minutes.
        self.delivery = Delivery(self.exporter, Spool(spool, 256 << 20), backoff_max_s=10.0)
        self.dns_capture, dns = None, None
        if capture_dns:
            self.dns_capture, dns = self._dns(exporter, url, token, cafile, spool)
        self.runner = Agent(
            self.capture,
            AgentConfig(
                exporter=exporter,
                interval_s=interval_s,
                own_endpoints=frozenset(own.values()),
                keep_own_traffic=keep_own_traffic,
            ),
            self.identity,
            self.delivery,
            nat=NatResolver(netns),
            snapshotter=Snapshotter(netns),
            listeners=ListenerWatch(netns, clock_ns=self.capture.clock.now_epoch_ns)
            if self.capture.clock is not None
            else None,
            dns=dns,
        )
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="up-agent", daemon=True)

    def _dns(
        self, exporter: str, url: str, token: str, cafile: Path | None, spool: Path
    ) -> tuple[Any, Any]:
        """DNS capture answered into the collector's /v1/dns_answers, with a spool of its own;
        (None, None) where this host cannot capture DNS (said on stderr: flows go on)."""
        from flowtrail.agent.dns_answers import DnsAnswers
        from flowtrail.agent.dns_capture import started_or_off
        from flowtrail.agent.exporter import Delivery, Spool, TableExporter
        from flowtrail.collector.client import CollectorExporter

        capture = started_or_off(lambda m: click.echo(f"flowtrail up: {m}", err=True))
        if capture is None:
            return None, None
        self.dns_exporter = TableExporter(
            CollectorExporter(url, token, str(cafile) if cafile else None), "dns_answers"
        )
        delivery = Delivery(
            self.dns_exporter, Spool(spool / "dns_answers", 64 << 20), backoff_max_s=10.0
        )
        return capture, DnsAnswers(capture, delivery, self.identity, exporter=exporter)

    def _run(self) -> None:
        try:
            self.runner.run(self.stop_event)
        except BaseException as exc:  # reported by `up`, which then stops everything
            self.error = exc

    def start(self) -> None:
        self.identity.refresh()
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Drain capture, export the last batch (retrying the spool once), close capture."""
        self.stop_event.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self.exporter.close()
        self.capture.close()
        if self.dns_capture is not None:
            self.dns_exporter.close()
            self.dns_capture.close()

    def metrics(self) -> dict[str, int]:
        return self.runner.metrics()


def status_line(agent: AgentPart | None, collector: Any) -> str:
    """Flows captured / sent / stored and the attributed share, for the terminal."""
    parts = []
    if agent is not None:
        m = agent.metrics()
        parts.append(f"captured {m.get('captured_rows', 0)}")
        parts.append(f"sent {m.get('exported_rows', 0)}")
        if m.get("spool_pending_batches"):
            parts.append(f"spooled batches {m['spool_pending_batches']}")
    counters = collector.engine.engine.counters
    decided = dict(counters.decided)
    unattributed = sum(dict(counters.unattributed).values())
    total = sum(decided.values()) + unattributed
    stored = collector.sink.stats.get("rows_stored", 0) if hasattr(collector.sink, "stats") else 0
    parts.append(f"stored {stored}")
    parts.append(f"waiting {collector.engine.waiting}")
    share = f"{100.0 * (total - unattributed) / total:.1f}%" if total else "-"
    parts.append(f"attributed {share}")
    return "flowtrail up: " + ", ".join(parts)


@click.command("up")
@click.option(
    "--data",
    "data_dir",
    default="./flowtrail-data",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Everything lives here: certificate, tokens, write-ahead log, quarantine, store.",
)
@click.option(
    "--listen",
    "--host",
    "host",
    metavar="ADDR",
    default="127.0.0.1",
    show_default=True,
    help="IPv4 address both servers bind. Loopback: this host only. Any other (0.0.0.0: "
    "every address) serves a fleet: TLS from the server's own CA (or --tls-cert), agents "
    "with their own tokens (`flowtrail token add`), read tokens for other hosts' queries.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With --listen: your PEM certificate (chain) instead of one from the server's CA.",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With --tls-cert: its private key.",
)
@click.option(
    "--tls-name",
    "tls_names",
    metavar="NAME",
    multiple=True,
    help="With --listen: a DNS name or address agents use to reach this server, put in its "
    "certificate; the first is the one `flowtrail token add` prints. Repeatable.",
)
@click.option(
    "--port-collector",
    type=click.IntRange(0, 65535),
    default=4740,
    show_default=True,
    help="Collector's HTTPS port (0: any free port; see DATA/up.json).",
)
@click.option(
    "--port-api",
    type=click.IntRange(0, 65535),
    default=4741,
    show_default=True,
    help="Query API's HTTP port (0: any free port; see DATA/up.json).",
)
@click.option(
    "--api-allow-host",
    "api_allow_hosts",
    metavar="NAME",
    multiple=True,
    help="A name (besides localhost and loopback addresses) the query API answers under, "
    "checked against each request's Host header; repeatable.",
)
@click.option(
    "--interval",
    type=DURATION,
    default="10s",
    show_default=True,
    help="How often the agent exports a batch.",
)
@click.option("--no-agent", is_flag=True, help="Run without the agent (no root needed).")
@click.option(
    "--no-dns",
    is_flag=True,
    help="The agent captures no DNS answers, so flows to addresses nobody owns get no "
    "remote_dns name (docs/dns.md).",
)
@click.option(
    "--identity",
    "identity_file",
    metavar="FILE",
    default=None,
    help="The agent's TOML identity file (docs/agent.md).",
)
@click.option(
    "--host-workload",
    metavar="NAME",
    default=None,
    help="This host's own identity, for sockets in the host network namespace.",
)
@click.option(
    "--exporter",
    "exporter_name",
    metavar="NAME",
    default=None,
    help="This agent's exporter name [default: the host name].",
)
@click.option(
    "--max-wait",
    type=DURATION,
    default="60s",
    show_default=True,
    help="How long a flow waits for a heartbeat naming its remote side.",
)
@click.option(
    "--keep-own-traffic",
    is_flag=True,
    help="Keep flowtrail's own connections (agent to collector, queries to the API), named "
    "flowtrail:collector / flowtrail:api; by default they are left out (and counted).",
)
@click.option(
    "--status-every",
    type=DURATION,
    default="10s",
    show_default=True,
    help="How often a status line is printed (0: never).",
)
def up(
    data_dir: Path,
    host: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_names: tuple[str, ...],
    port_collector: int,
    port_api: int,
    api_allow_hosts: tuple[str, ...],
    interval: int,
    no_agent: bool,
    no_dns: bool,
    identity_file: str | None,
    host_workload: str | None,
    exporter_name: str | None,
    max_wait: int,
    keep_own_traffic: bool,
    status_every: int,
) -> None:
    """Run agent + collector + store + query API on this machine, until Ctrl-C.

    \b
    Everything listens on loopback and keeps its data under --data; with
    --listen ADDR it serves agents of other hosts too (docs/fleet.md).
    Query with curl http://127.0.0.1:4741/api/dependencies (or top-talkers, flows,
    health), or `flowtrail query dependencies --db DATA/flows.duckdb` once stopped.
    The agent needs root; --no-agent runs the rest without it.

    \b
      sudo flowtrail up --data /var/lib/flowtrail --interval 5s
      flowtrail up --no-agent --listen 0.0.0.0 --data /var/lib/flowtrail
    """
    host = listen_address(host)
    fleet = is_fleet(host)
    if not fleet and (tls_cert or tls_key or tls_names):
        raise InputError("--tls-cert, --tls-key, --tls-name: only with --listen ADDR, not loopback")
    if interval <= 0:
        raise InputError("--interval: must be more than zero")
    if not no_agent:
        problem = agent_problem()
        if problem:
            raise CapabilityError(f"the agent cannot run: {problem}; run as root or add --no-agent")
    layout = Layout(data_dir.resolve())
    exporter = exporter_name or socket.gethostname()
    # Everything that can be checked is checked before anything is made: a start that fails
    # leaves no data directory, store or certificate behind.
    if identity_file is not None and not no_agent:
        from flowtrail.agent.identity import load_identity_file

        load_identity_file(identity_file)  # InputError naming the file and the entry
    if fleet and (tls_cert is not None or tls_key is not None):
        from flowtrail.fleet.serving import check_given_cert

        check_given_cert(tls_cert, tls_key)  # a bad pair is refused before anything is made
    check_ports(host, {"--port-collector": port_collector, "--port-api": port_api})
    created = not layout.root.exists()
    try:
        layout.root.mkdir(parents=True, exist_ok=True)
        lock = lock_data_dir(layout)
    except OSError as exc:
        raise InputError(f"--data {layout.root}: cannot use: {exc.strerror or exc}") from exc
    runner: _Up | None = None
    try:
        try:
            token = ensure_token(layout.tokens, exporter)
        except OSError as exc:
            raise InputError(f"--data {layout.root}: cannot use: {exc.strerror or exc}") from exc
        stale = clear_stale_state(layout)
        if stale is not None:
            who = f"pid {stale}, which no longer runs" if stale > 0 else "an earlier run"
            click.echo(
                f"flowtrail up: {layout.state} was left by {who} (killed?); "
                "replaced once this start is ready"
            )
        runner = _Up(layout, host, exporter, token)
        if fleet:
            from flowtrail.fleet.serving import prepare

            runner.fleet = prepare(layout.tls, host, tls_names, tls_cert, tls_key)
        runner.run(
            port_collector=port_collector,
            port_api=port_api,
            api_allow_hosts=api_allow_hosts,
            interval_s=interval / SECOND,
            no_agent=no_agent,
            capture_dns=not no_dns,
            identity_file=identity_file,
            host_workload=host_workload,
            max_wait_ns=max_wait,
            status_every_s=status_every / SECOND,
            keep_own_traffic=keep_own_traffic,
        )
    except BaseException:
        if created and (runner is None or not runner.announced):
            shutil.rmtree(layout.root, ignore_errors=True)  # made by this start, holds nothing
        raise
    finally:
        os.close(lock)


class _Up:
    def __init__(self, layout: Layout, host: str, exporter: str, token: str) -> None:
        self.layout, self.host, self.exporter, self.token = layout, host, exporter, token
        self.fleet: Fleet | None = None  # --listen off loopback
        self.stopping = threading.Event()
        self.announced = False  # everything listened and up.json was written

    @staticmethod
    def _on_repeat(count: int) -> None:
        click.echo("flowtrail up: second signal, exiting without a clean stop", err=True)
        os._exit(1)

    def run(
        self,
        *,
        port_collector: int,
        port_api: int,
        api_allow_hosts: tuple[str, ...],
        interval_s: float,
        no_agent: bool,
        identity_file: str | None,
        host_workload: str | None,
        max_wait_ns: int,
        status_every_s: float,
        keep_own_traffic: bool = False,
        capture_dns: bool = True,
    ) -> None:
        from flowtrail.agent.prometheus import AgentCounters
        from flowtrail.api.server import QueryAPI
        from flowtrail.collector.app import CollectorApp, CollectorOptions
        from flowtrail.collector.devcert import self_signed
        from flowtrail.collector.service import CollectorConfig
        from flowtrail.engine.attributor import Settings
        from flowtrail.store import Store

        stop_on_signals(self.stopping, on_repeat=self._on_repeat)
        lay = self.layout
        fleet = self.fleet
        tls = fleet.tls.context() if fleet is not None else None
        if fleet is None:
            # A fresh certificate every start: short-lived, and only this process trusts it.
            cert, key = self_signed(lay.tls, self.host)
            cafile: Path | None = cert
        else:  # the fleet's CA signed a new one (or the user gave theirs)
            cert, key, cafile = fleet.tls.chain, fleet.tls.key, fleet.tls.cafile
        options = CollectorOptions(
            data_dir=lay.root,
            tokens_file=lay.tokens,
            host=self.host,
            port=port_collector,
            cert=cert,
            key=key,
            tls_context=tls,
            sink="store",
            db=lay.db,
            config=CollectorConfig(
                # No control-plane feed on one machine: nothing waits for events.
                settings=Settings(max_wait_ns=max_wait_ns, use_events=False),
            ),
            data_flag="--data",
        )
        app = CollectorApp(options)
        access = None
        if fleet is not None:
            from flowtrail.fleet.access import ReadAccess

            access = ReadAccess(app.tokens)  # the collector's tokens: revocations apply at once
            options.readers = access.admits
        try:
            collector_port = app.start()
        except InputError as exc:  # its message names `flowtrail collector`'s --listen
            raise InputError(f"--port-collector {port_collector}: {exc}") from exc
        store = app.collector.sink
        assert isinstance(store, Store)
        api: QueryAPI | None = None
        agent: AgentPart | None = None
        failure: BaseException | None = None
        try:
            api = QueryAPI(
                store.cursor,
                self.host,
                port_api,
                source=store,
                health=lambda: _health(app),
                allowed_hosts=api_allow_hosts,
                tls=tls,
                readers=access.allows if access is not None else None,
            )
            try:
                api.start()
            except InputError as exc:
                raise InputError(f"--port-api {port_api}: {exc}") from exc
            if not no_agent:
                # Its own collector on loopback when listening everywhere; with a certificate
                # of the user's, under the name it was made for.
                near = "127.0.0.1" if self.host == "0.0.0.0" else self.host
                if fleet is not None and fleet.tls.cafile is None:
                    near = fleet.host
                try:
                    agent = AgentPart(
                        exporter=self.exporter,
                        url=f"https://{near}:{collector_port}",
                        token=self.token,
                        cafile=cafile,
                        spool=lay.spool,
                        interval_s=interval_s,
                        identity_file=identity_file,
                        host_workload=host_workload,
                        own={
                            "collector": (near, collector_port),
                            "api": (near, api.port),
                        },
                        keep_own_traffic=keep_own_traffic,
                        capture_dns=capture_dns,
                    )
                except CapabilityError as exc:
                    raise CapabilityError(f"{exc}; or run with --no-agent") from exc
                agent.start()
                # The agent's counters join the collector's /metrics: one scrape for both.
                app.collector.metrics.registry.register(AgentCounters(agent.metrics))
            self._announce(app.url(), api.url(), agent, collector_port, api.port)
            self._wait(agent, app, status_every_s)
            if agent is not None and agent.error is not None:
                failure = agent.error
        finally:
            click.echo("flowtrail up: stopping")
            self._stop(agent, app, api)
        if failure is not None:
            raise FlowtrailError(f"the agent stopped: {type(failure).__name__}: {failure}")
        click.echo("flowtrail up: stopped")

    def _announce(
        self,
        collector_url: str,
        api_url: str,
        agent: AgentPart | None,
        collector_port: int,
        api_port: int,
    ) -> None:
        lay = self.layout
        with_agent = agent is not None
        fleet = self.fleet
        cafile = lay.tls / "cert.pem"
        if fleet is not None:
            cafile = fleet.tls.cafile or fleet.tls.chain
            collector_url, api_url = fleet.url(collector_port), fleet.url(api_port)
        state: dict[str, Any] = {
            "pid": os.getpid(),
            "data": str(lay.root),
            "collector": collector_url,
            "api": api_url,
            "cafile": str(cafile),
            "tokens": str(lay.tokens),
            "db": str(lay.db),
            "exporter": self.exporter,
            "agent": with_agent,
        }
        if fleet is not None:
            state["listen"] = self.host
            state["fleet"] = fleet.state(collector_port, api_port)
        _write_state(lay.state, state)
        self.announced = True
        lines = [
            f"flowtrail up: data in {lay.root}",
            f"  collector  {collector_url}  (TLS, cert {cafile}, tokens {lay.tokens})",
            f"  console    {api_url}/  (service map, flows, attribution health)",
            f"  query API  {api_url}/api  (dependencies, top-talkers, flows, health; "
            "?since=15m&format=csv)",
            f"  agent      {'exporter ' + self.exporter if with_agent else 'off (--no-agent)'}",
        ]
        if fleet is not None:
            where = "every address" if self.host == "0.0.0.0" else self.host
            trust = (
                f"CA fingerprint {fleet.tls.fingerprint}"
                if fleet.tls.fingerprint
                else "your certificate"
            )
            lines += [
                f"  fleet      listening on {where}; {trust}",
                f"  enrol      flowtrail token add <agent> --data {lay.root}   (prints the "
                "agent's command)",
                f"  readers    flowtrail token add <name> --read --data {lay.root}   (the API "
                "and console from other hosts)",
            ]
        if agent is not None:
            lines.append(f"  identity   {agent.identity.describe()}")
            lines += [f"  warning    {w}" for w in agent.identity.missing_targets()]
        curl = f"--cacert {cafile} -u reader:<read token> " if fleet else ""
        lines += [
            f"  metrics    {collector_url}/metrics  (collector and agent, Prometheus)",
            f"  try        curl -s {curl}'{api_url}/api/dependencies?since=15m'",
            f"  after stop flowtrail query dependencies --db {lay.db}",
            "  stop       Ctrl-C",
        ]
        click.echo("\n".join(lines))

    def _wait(self, agent: AgentPart | None, app: Any, every_s: float) -> None:
        next_status = time.monotonic() + every_s
        while not self.stopping.wait(0.25):
            if agent is not None and not agent.alive():
                return  # its error is reported after the clean stop
            if every_s > 0 and time.monotonic() >= next_status:
                click.echo(status_line(agent, app.collector))
                next_status = time.monotonic() + every_s

    def _await_tick(self, app: Any, after_ns: int, limit_s: float = 15.0) -> None:
        """Until the collector has ticked past `after_ns` (it decides only up to its last tick,
        which lags the clock by up to a pending-pool bucket), so the agent's last batch is
        stored now rather than replayed from the write-ahead log at the next start. Flows
        still waiting for a heartbeat stay in the log either way."""
        deadline = time.monotonic() + limit_s
        shown = False
        while app.collector.last_tick_ns < after_ns and time.monotonic() < deadline:
            if not shown:
                click.echo("flowtrail up: letting the collector decide the last batch")
                shown = True
            time.sleep(0.1)

    def _stop(self, agent: AgentPart | None, app: Any, api: QueryAPI | None) -> None:
        if agent is not None:
            agent.stop()
            if agent.metrics().get("exported_rows", 0):
                self._await_tick(app, time.time_ns())
        self.layout.state.unlink(missing_ok=True)  # nothing listens any more
        app.stop()
        if api is not None:
            api.stop()
        sys.stdout.flush()


def _health(app: Any) -> tuple[bool, dict[str, Any]]:
    answer = app.collector.health()
    body = dict(answer.body)
    body["collector"] = app.url()
    # The losses /metrics counts (collector and, once registered, agent), for the console.
    from flowtrail.api.drops import drops_from_registry

    body["drops"] = drops_from_registry(app.collector.metrics.registry)
    return bool(answer.status == 200), body


def run() -> None:
    """`python -m flowtrail.up ARGS` = `flowtrail up ARGS`, with the CLI's one-line errors."""
    run_standalone(up, "flowtrail up")


if __name__ == "__main__":
    run()
