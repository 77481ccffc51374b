"""A real nats-server cluster with JetStream on loopback, for tests and benchmarks.

Each server gets its own config file, JetStream file store and log under one directory.
Ports are taken free from the kernel (bind to 0) just before the servers start. A server can
be killed (SIGKILL, like a crash) and started again on the same ports and store, which is how
tests exercise JetStream's recovery.

Optionally the client side is secured as a production cluster's would be: TLS with a server
certificate signed by a throwaway CA (`tls=True`), client certificates required and checked
against that CA (`verify_clients=True`), and user/password authorization (`user`,
`password`; clients put them in the URL, nats://user:pass@host:port). The CA and
certificates are made with the openssl command-line tool, like flowtrail.collector.devcert.
Or, instead of user/password, decentralized JWT authorization (`operator=make_operator_auth()`):
the servers trust an operator whose accounts they know from JWTs preloaded into a MEMORY
resolver, and clients log in with a credentials file (a user JWT signed by an account, and
the user's nkey seed; `OperatorAuth.user_creds`). The keys are made with the nkeys package
and the JWTs (NATS JWT v2) are built here, so no nsc is needed.
By default there is none of it: plain, open loopback servers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import pyarrow as pa

from flowtrail.cluster.bus import MSG_ID, SECOND, Bus, BusConfig, decode
from flowtrail.cluster.node import ClusterNode, NodeConfig, Sink
from flowtrail.errors import CapabilityError
from flowtrail.lab.wait import stop_all
from flowtrail.schema import FLOWS

NATS_SERVER = os.environ.get("FLOWTRAIL_NATS_SERVER", "/usr/sbin/nats-server")


def nats_server_binary() -> str | None:
    """The nats-server executable, or None when this machine has none."""
    if Path(NATS_SERVER).is_file():
        return NATS_SERVER
    return shutil.which("nats-server")


_taken: set[int] = set()


def _free_port() -> int:
    """A free port below the kernel's ephemeral range (32768 up by default).

    A port the kernel picked with bind(0) comes from the ephemeral range, where any outgoing
    connection on the machine may take it before nats-server binds it ("address already in
    use", seen in CI). Below that range only explicit picks like this one compete.
    """
    for _ in range(1000):
        port = random.randint(20_000, 32_000)
        if port in _taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken.add(port)
        return port
    raise RuntimeError("no free port found in 20000-32000")


@dataclass(frozen=True)
class LabPki:
    """A throwaway CA and the certificates it signed (PEM files), valid for two days."""

    ca_file: Path
    server_cert: Path  # SAN: IP 127.0.0.1 and DNS localhost; serverAuth
    server_key: Path
    client_cert: Path  # CN flowtrail-lab-client; clientAuth
    client_key: Path


def make_pki(directory: Path, days: int = 2) -> LabPki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all EC
    P-256, made with the openssl command (no Python crypto dependency)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise CapabilityError("the openssl command is needed to make the lab's certificates")
    directory.mkdir(parents=True, exist_ok=True)
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        done = subprocess.run([openssl, *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")

    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    run(
        "req", "-x509", *newkey, "-keyout", str(ca_key), "-out", str(ca), "-days", str(days),
        "-subj", "/CN=flowtrail lab CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip

    def leaf(name: str, subject: str, extensions: str) -> tuple[Path, Path]:
        cert, key, csr = (directory / f"{name}{ext}" for ext in (".pem", ".key", ".csr"))
        ext_file = directory / f"{name}.ext"
        ext_file.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" + extensions
        )
        run("req", "-new", *newkey, "-keyout", str(key), "-out", str(csr), "-subj", subject)
        run(
            "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", str(days),
            "-extfile", str(ext_file), "-out", str(cert),
        )  # fmt: skip
        key.chmod(0o600)
        return cert, key

    server = leaf(
        "server",
        "/CN=127.0.0.1",
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    client = leaf("client", "/CN=flowtrail-lab-client", "extendedKeyUsage=clientAuth\n")
    ca_key.chmod(0o600)
    return LabPki(ca, *server, *client)


# -- operator mode (NATS JWT v2) ---------------------------------------------------------------

NkeyKind = Literal["operator", "account", "user"]


def new_seed(kind: NkeyKind) -> str:
    """A new random nkey seed (SO..., SA..., SU...) of that kind."""
    import nkeys  # type: ignore[import-untyped]

    prefix = {
        "operator": nkeys.PREFIX_BYTE_OPERATOR,
        "account": nkeys.PREFIX_BYTE_ACCOUNT,
        "user": nkeys.PREFIX_BYTE_USER,
    }[kind]
    return bytes(nkeys.encode_seed(os.urandom(32), prefix)).decode()


def public_key(seed: str) -> str:
    """The public key (O..., A..., U...) of an nkey seed."""
    import nkeys

    return bytes(nkeys.from_seed(seed.encode()).public_key).decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_jwt(signer_seed: str, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A NATS JWT (v2): `nats` claims (with their "type" and "version": 2) about `subject`,
    issued and signed (ed25519) by the key of `signer_seed`."""
    import nkeys

    signer = nkeys.from_seed(signer_seed.encode())
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": bytes(signer.public_key).decode(),
        "name": name,
        "sub": subject,
    }
    # The ID is a hash of the standard claims (the servers do not check it, nsc makes it so).
    digest = hashlib.new("sha512_256", json.dumps(claims, separators=(",", ":")).encode())
    claims["jti"] = base64.b32encode(digest.digest()).rstrip(b"=").decode()
    claims["nats"] = nats
    header = _b64(b'{"typ":"JWT","alg":"ed25519-nkey"}')
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = bytes(signer.sign(f"{header}.{payload}".encode()))
    return f"{header}.{payload}.{_b64(signature)}"


_UNLIMITED = {"subs": -1, "data": -1, "payload": -1}
_ACCOUNT_UNLIMITED = {
    **_UNLIMITED, "imports": -1, "exports": -1, "wildcards": True, "conn": -1, "leaf": -1
}  # fmt: skip
# An account has JetStream only when its JWT grants storage.
_JETSTREAM_UNLIMITED = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


def account_jwt(operator_seed: str, account_seed: str, name: str, jetstream: bool) -> str:
    limits = {**_ACCOUNT_UNLIMITED, **(_JETSTREAM_UNLIMITED if jetstream else {})}
    nats = {"limits": limits, "default_permissions": {"pub": {}, "sub": {}}}
    nats |= {"type": "account", "version": 2}
    return encode_jwt(operator_seed, public_key(account_seed), name, nats)


def write_user_creds(path: Path, account_seed: str, name: str = "flowtrail") -> Path:
    """A credentials file for a new user of the account of `account_seed` (allowed to
    publish and subscribe to anything): the user JWT that account signed and the user's
    seed, in the format nsc writes. Mode 0600."""
    user_seed = new_seed("user")
    nats = {"pub": {}, "sub": {}, **_UNLIMITED, "type": "user", "version": 2}
    jwt = encode_jwt(account_seed, public_key(user_seed), name, nats)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(0o600)
    path.write_text(
        f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed}\n------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )
    return path


@dataclass(frozen=True)
class OperatorAuth:
    """An operator, its system account and one application account with JetStream, whose
    users log in with credentials files (`user_creds`)."""

    operator_seed: str
    operator_jwt: str
    system_account: str  # public key
    account_seed: str  # the application account's: it signs the users
    accounts: dict[str, str]  # public key -> JWT of both accounts, for resolver_preload

    @property
    def account(self) -> str:
        return public_key(self.account_seed)

    def user_creds(self, path: Path, name: str = "flowtrail") -> Path:
        return write_user_creds(path, self.account_seed, name)


def make_operator_auth(name: str = "flowtrail-lab", *, jetstream: bool = True) -> OperatorAuth:
    operator_seed, system_seed, account_seed = (
        new_seed("operator"), new_seed("account"), new_seed("account")
    )  # fmt: skip
    system = public_key(system_seed)
    operator_nats = {"system_account": system, "type": "operator", "version": 2}
    operator_jwt = encode_jwt(operator_seed, public_key(operator_seed), name, operator_nats)
    accounts = {
        system: account_jwt(operator_seed, system_seed, "SYS", jetstream=False),
        public_key(account_seed): account_jwt(operator_seed, account_seed, name, jetstream),
    }
    return OperatorAuth(operator_seed, operator_jwt, system, account_seed, accounts)


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
    """`size` servers forming one cluster; start() waits until every server is healthy.

    `tls`: clients must use TLS (certificates in `pki`, made under root/pki);
    `verify_clients`: and present a certificate signed by the lab's CA (implies tls);
    `user`/`password`: clients must authenticate (`urls` carry them);
    `operator`: or operator mode, clients log in with `operator.user_creds(...)` files.
    """

    root: Path
    size: int = 3
    cluster_name: str = "flowtrail-test"
    tls: bool = False
    verify_clients: bool = False
    user: str | None = None
    password: str | None = None
    operator: OperatorAuth | None = None
    servers: list[NatsServer] = field(default_factory=list)
    pki: LabPki | None = None

    def __post_init__(self) -> None:
        binary = nats_server_binary()
        if binary is None:
            raise FileNotFoundError("nats-server not found (set FLOWTRAIL_NATS_SERVER)")
        if (self.user is None) != (self.password is None):
            raise ValueError("NatsLab: user and password go together")
        if self.user is not None and self.operator is not None:
            raise ValueError("NatsLab: user/password or operator mode, not both")
        self.binary = binary
        if self.verify_clients:
            self.tls = True
        if self.tls and self.pki is None:
            self.pki = make_pki(self.root / "pki")
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
        """Client URLs, with the lab's user and password in them when it has some."""
        return self.client_urls(self.user, self.password)

    def client_urls(self, user: str | None = None, password: str | None = None) -> list[str]:
        """nats://[user:password@]127.0.0.1:port of every server (TLS is negotiated after
        the server's INFO, so the scheme stays nats:// with TLS too)."""
        auth = ""
        if user is not None:
            auth = (
                quote(user, safe="")
                + (f":{quote(password, safe='')}" if password is not None else "")
                + "@"
            )
        return [f"nats://{auth}127.0.0.1:{s.client_port}" for s in self.servers]

    def _config_text(self, server: NatsServer) -> str:
        # The routes between the lab's servers stay plain and open: they are on loopback
        # and only the client side is under test. (A production cluster would secure them
        # too, with the cluster block's own tls and authorization.)
        routes = ", ".join(
            f"nats-route://127.0.0.1:{s.route_port}" for s in self.servers if s is not server
        )
        text = (
            f'server_name: "{server.name}"\n'
            f"listen: 127.0.0.1:{server.client_port}\n"
            f"http: 127.0.0.1:{server.monitor_port}\n"
            "max_payload: 8MB\n"
            f'jetstream {{\n  store_dir: "{server.directory / "js"}"\n'
            "  max_memory_store: 64MB\n  max_file_store: 1GB\n}\n"
        )
        if self.size > 1:  # a lone server with a cluster block but no routes: JetStream refuses
            text += (
                f'cluster {{\n  name: "{self.cluster_name}"\n'
                f"  listen: 127.0.0.1:{server.route_port}\n  routes: [{routes}]\n}}\n"
            )
        if self.pki is not None and self.tls:
            text += (
                f"tls {{\n  cert_file: {_quoted(self.pki.server_cert)}\n"
                f"  key_file: {_quoted(self.pki.server_key)}\n"
                f"  ca_file: {_quoted(self.pki.ca_file)}\n"
                f"  verify: {'true' if self.verify_clients else 'false'}\n  timeout: 2\n}}\n"
            )
        if self.user is not None and self.password is not None:
            text += (
                f"authorization {{\n  user: {_quoted(self.user)}\n"
                f"  password: {_quoted(self.password)}\n}}\n"
            )
        if self.operator is not None:
            preload = "".join(f"  {key}: {jwt}\n" for key, jwt in self.operator.accounts.items())
            text += (
                f"operator: {self.operator.operator_jwt}\n"
                f"system_account: {self.operator.system_account}\n"
                f"resolver: MEMORY\nresolver_preload: {{\n{preload}}}\n"
            )
        return text

    def start(self, timeout: float = 60.0) -> None:
        # Healthy means JetStream's streams are current too; after a restart of every server
        # on a loaded 2-core machine that took longer than 20 s once (CI).
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

    def restart(self, index: int, timeout: float = 60.0) -> None:
        """Kill one server if running and start it again on the same ports and store."""
        self.kill(index)
        server = self.servers[index]
        self._spawn(server)
        self._wait_ready(server, timeout)

    def stop(self) -> None:
        stop_all([s.process for s in self.servers if s.process is not None], grace_s=10)
        for server in self.servers:
            server.process = None

    def __enter__(self) -> NatsLab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _quoted(value: object) -> str:
    """A nats-server config string (JSON's quoting is a subset the config parser reads)."""
    return json.dumps(str(value))


async def read_work(
    bus: Bus, region: str, idle_s: float = 1.0, within_s: float = 60.0
) -> list[tuple[str, pa.Table]]:
    """Every batch waiting in a region's work stream, as (batch id, table), taken and acked
    through the nodes' shared consumer, up to the stream's newest message when called.

    Done is judged by sequence: the stream's last one (its leader's answer) reached by what
    came here or was acked before. Not by the consumer's own `num_pending`: that is its
    replica's view, which after a restart of the servers may not hold the newest messages
    yet, and a fetch that times out on a loaded machine does not mean nothing is left.
    TimeoutError when that sequence is not reached within `within_s`.
    """
    stream = bus.work_stream(region)
    info = await bus._retry(lambda: bus.js.stream_info(stream), 50, f"info of {stream}")
    last = int(info.state.last_seq)
    sub = await bus.work_consumer(region)
    got: list[tuple[str, pa.Table]] = []
    reached = 0
    deadline = time.monotonic() + within_s
    while True:
        try:
            msgs = await sub.fetch(16, timeout=idle_s)
        except TimeoutError:
            acked = (await sub.consumer_info()).ack_floor
            reached = max(reached, int(acked.stream_seq) if acked else 0)
            if reached >= last:
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{stream}: read up to sequence {reached} of {last} in {within_s:g} s"
                ) from None
            continue
        for m in msgs:
            got.append(((m.headers or {}).get(MSG_ID, ""), decode(m.data)))
            await m.ack()
            reached = max(reached, m.metadata.sequence.stream)


T = TypeVar("T")


def with_bus(config: BusConfig, work: Callable[[Bus], Awaitable[T]]) -> T:
    """`work` on a Bus with a connection of its own, for synchronous callers."""

    async def run() -> T:
        bus = Bus(config)
        await bus.connect()
        try:
            return await work(bus)
        finally:
            await bus.close()

    return asyncio.run(run())


def read_work_with(config: BusConfig, region: str) -> list[tuple[str, pa.Table]]:
    """read_work on a connection of its own (for synchronous callers)."""
    return with_bus(config, lambda bus: read_work(bus, region))


def create_streams_with(config: BusConfig, regions: list[str]) -> None:
    """The regions' streams, as a node would create them, on a connection of its own."""
    with_bus(config, lambda bus: bus.ensure_streams(regions))


class NodeGroup:
    """Nodes run as tasks of this process, each on its own connection (tests and benches).

    `async with NodeGroup(config) as group:` ... `await group.start(node_config, sink)`;
    leaving the block stops every node and closes every connection.
    """

    def __init__(self, config: BusConfig) -> None:
        self.config = config
        self.buses: list[Bus] = []
        self.nodes: list[ClusterNode] = []
        self.stops: list[asyncio.Event] = []
        self.runs: list[asyncio.Task[None]] = []

    async def start(
        self, node_config: NodeConfig, sink: Sink, regions: pa.Table | None = None
    ) -> ClusterNode:
        """A node on a new connection, once it is ready (its consumers attached)."""
        bus = Bus(self.config)
        await bus.connect()
        self.buses.append(bus)
        node = ClusterNode(bus, node_config, regions, sink)
        self.nodes.append(node)
        self.stops.append(asyncio.Event())
        run = asyncio.create_task(node.run(self.stops[-1]))
        self.runs.append(run)
        ready = asyncio.create_task(node.ready.wait())
        await asyncio.wait([ready, run], timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if run.done():
            ready.cancel()
            run.result()  # a node that failed to start: its own error
            raise RuntimeError(f"{node_config.name} stopped before it was ready")
        if not ready.done():
            ready.cancel()
            raise TimeoutError(f"{node_config.name} not ready within 20 s")
        return node

    async def stop(self, i: int, *, close: bool = False) -> None:
        """Stop node i cleanly; `close` also closes its connection, as a process exit would."""
        self.stops[i].set()
        await self.runs[i]
        if close:
            await self.buses[i].close()

    async def __aenter__(self) -> NodeGroup:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for stop in self.stops:
            stop.set()
        ended = await asyncio.gather(*self.runs, return_exceptions=True)
        for bus in self.buses:
            await bus.close()
        failed = [e for e in ended if isinstance(e, Exception)]
        if failed and exc[0] is None:
            raise failed[0]  # a node that crashed during a block that otherwise passed


def recent_flow(
    region: str, remote_ip: str, now_ns: int, *, number: int = 1, local_ip: str = "10.1.0.7"
) -> pa.Table:
    """One closed client connection (exporter h1, flow h1:<number>) that ended 29 s ago."""
    row = {
        "flow_id": f"h1:{number}",
        "exporter": "h1",
        "region": region,
        "local_ip": local_ip,
        "local_port": 40000 + number,
        "remote_ip": remote_ip,
        "remote_port": 443,
        "direction": "outbound",
        "start_ns": now_ns - 30 * SECOND,
        "end_ns": now_ns - 29 * SECOND,
        "state": "closed",
        "bytes_sent": 100,
        "bytes_received": 200,
        "local_workload": "client",
    }
    return pa.Table.from_pylist([row], schema=FLOWS.schema)
