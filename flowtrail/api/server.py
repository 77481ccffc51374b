"""The HTTP server: GET /api/<query>?params → JSON (default) or CSV; /healthz; the web console
at / (flowtrail/web: static files shipped in the package, which ask /api/* and /healthz like
any other client); nothing else.

Read-only by construction: the handler has no write path. It binds a loopback address,
unless it is given TLS and `readers` (`flowtrail up --listen`): then a request from another
host needs a read token (flowtrail/fleet/access.py), checked before anything else, so no path
answers without one (`routes()` lists them for the test that checks it). A request without
a read token whose Host header names anything but this machine's loopback (or a name given
in `allowed_hosts`) is refused with 403, so a web page whose own name was re-pointed at
127.0.0.1 (DNS rebinding) cannot read the answers.
Connections are admitted and timed by `flowtrail.httpguard`. Each request runs on its own
thread with its own DuckDB cursor from `connect()` (DuckDB allows one writer process; in
`flowtrail up` the collector's Store is that writer and hands out cursors on its connection,
so readers see every committed write without opening the file a second time).
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol
from urllib.parse import urlsplit

import duckdb
import pyarrow as pa

from flowtrail.api.params import ENDPOINTS, ApiRequest, ParamError, parse_request
from flowtrail.errors import InputError
from flowtrail.httpguard import (
    ConnectionLimits,
    GuardedHandler,
    GuardedServer,
    host_name,
    local_host_allowed,
)
from flowtrail.opshttp import is_loopback
from flowtrail.query.api import run_query, window_of
from flowtrail.query.lake import with_current_columns
from flowtrail.query.output import render
from flowtrail.query.queries import Window
from flowtrail.store.duck import FLOWS_TABLE
from flowtrail.web import CONSOLE_HEADERS, console_file, console_paths

Connect = Callable[[], duckdb.DuckDBPyConnection]
Health = Callable[[], tuple[bool, dict[str, Any]]]
Readers = Callable[[str | None], bool]  # Authorization header → a read token?
CHALLENGE = 'Basic realm="flowtrail", charset="UTF-8"'


class WindowedSource(Protocol):
    """A source that makes each request's relation for its window on the request's cursor,
    so the query reads only what can hold the window's rows: a lake's partitions
    (flowtrail/query/lake.py), a segment store's segments (Store.relation)."""

    def relation(self, con: duckdb.DuckDBPyConnection, window: Window) -> str: ...


def routes() -> list[str]:
    """Every path this server answers (GET/HEAD), from the tables the handler routes by."""
    return ["/healthz", "/api", *(f"/api/{e}" for e in ENDPOINTS), *console_paths()]


CONTENT_TYPES = {"json": "application/json", "csv": "text/csv; charset=utf-8"}


class _Handler(GuardedHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None  # `flowtrail up` prints its own status; counters are on the server

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: object) -> None:
        self._send(status, (json.dumps(obj) + "\n").encode(), CONTENT_TYPES["json"])

    def _error(self, status: int, message: str, parameter: str | None = None) -> None:
        self.server.count(f"error_{status}")
        body: dict[str, Any] = {"error": message}
        if parameter is not None:
            body["parameter"] = parameter
        self._json(status, body)

    def _admitted(self) -> bool:
        """A read token admits any request; without one, a request from another host is
        answered 401 (a browser then asks for the token), and one from this machine must
        name it in its Host header (403 otherwise)."""
        readers = self.server.readers
        if readers is not None:
            if readers(self.headers.get("Authorization")):
                return True
            if not is_loopback(self.client_address[0].removeprefix("::ffff:")):
                self.close_connection = True
                self.server.count("error_401")
                body = json.dumps({"error": "a read token is needed from another host"}) + "\n"
                self._send(401, body.encode(), CONTENT_TYPES["json"],
                           {"WWW-Authenticate": CHALLENGE})  # fmt: skip
                return False
        if not local_host_allowed(self.headers.get("Host"), self.server.allowed_hosts):
            self.close_connection = True
            self._error(
                403,
                f"Host {self.headers.get('Host')!r} is not a name this API is served under "
                "(a loopback address, localhost, or one given with allowed_hosts)",
            )
            return False
        return True

    def do_GET(self) -> None:
        try:
            if self._admitted():
                self._get()
        except Exception as exc:  # a defect, yet the client still gets an answer, not a reset
            self._error(500, f"internal error: {type(exc).__name__}")

    def _get(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        if path == "/healthz":
            ok, body = self.server.health()
            self._json(200 if ok else 503, {"ok": ok, **body})
            return
        console = console_file(path)
        if console is not None:
            self.server.count("console")
            content, content_type = console
            self._send(200, content, content_type, CONSOLE_HEADERS)
            return
        if path == "/api":
            self._json(200, {"endpoints": {f"/api/{e}": list(p) for e, p in ENDPOINTS.items()}})
            return
        endpoint = path.removeprefix("/api/") if path.startswith("/api/") else None
        if endpoint not in ENDPOINTS:
            self._error(404, f"no such endpoint {parts.path!r}; try /api for the list")
            return
        try:
            req = parse_request(endpoint, parts.query, time.time_ns())
        except ParamError as exc:
            self._error(400, str(exc), exc.parameter)
            return
        except InputError as exc:  # a check inside the query layer
            self._error(400, str(exc))
            return
        self.server.count(f"query_{endpoint}")
        try:
            table = self.server.query(req)
        except InputError as exc:
            self._error(400, str(exc))
            return
        except duckdb.ConnectionException as exc:  # the store closed (shutting down)
            self._error(503, f"store unavailable: {exc}")
            return
        except duckdb.Error as exc:
            self._error(500, f"query failed: {exc}")
            return
        self._send(200, render(table, req.fmt).encode(), CONTENT_TYPES[req.fmt])

    do_HEAD = do_GET

    def _read_only(self) -> None:
        length = self.headers.get("Content-Length", "")
        self.read_and_drop(int(length) if length.isdigit() else 0, 1 << 20)
        if self._admitted():
            self._error(405, "read-only API: only GET")

    do_POST = do_PUT = do_DELETE = do_PATCH = _read_only


class _Server(GuardedServer):
    def __init__(
        self,
        address: tuple[str, int],
        connect: Connect,
        health: Health,
        source: str | WindowedSource,
        allowed_hosts: frozenset[str],
        limits: ConnectionLimits | None,
        tls: ssl.SSLContext | None = None,
        readers: Readers | None = None,
    ) -> None:
        self.connect, self._health, self.source = connect, health, source
        self.allowed_hosts = allowed_hosts
        self.readers = readers
        self.stats: dict[str, int] = {}
        self._stats_lock = threading.Lock()
        super().__init__(address, _Handler, tls=tls, limits=limits, refused=self._count_refused)

    def _count_refused(self, reason: str) -> None:
        self.count(f"refused_{reason}")

    def count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] = self.stats.get(key, 0) + 1

    def health(self) -> tuple[bool, dict[str, Any]]:
        return self._health()

    def query(self, req: ApiRequest) -> pa.Table:
        cur = self.connect()
        try:
            source = self.source
            if not isinstance(source, str):  # a view of what the window overlaps
                window = window_of(req.params.get("since"), req.params.get("until"), req.now_ns)
                source = with_current_columns(cur, source.relation(cur, window))
            # The same function `flowtrail query` runs; the parameters were checked already.
            return run_query(cur, req.endpoint, req.params, source=source, now_ns=req.now_ns)
        finally:
            cur.close()


def _always_ok() -> tuple[bool, dict[str, Any]]:
    return True, {}


class QueryAPI:
    """`QueryAPI(connect, host, port).start()` serves until `stop()`; port 0 picks a free one.

    `allowed_hosts`: names besides loopback literals and localhost that requests may carry in
    their Host header (for a name in /etc/hosts that points here, say).

    `tls` and `readers` (both or neither): serve HTTPS, and answer a request from another
    host only with a read token; only then may `host` be other than loopback."""

    def __init__(
        self,
        connect: Connect,
        host: str = "127.0.0.1",
        port: int = 4741,
        *,
        health: Health = _always_ok,
        source: str | WindowedSource = FLOWS_TABLE,
        allowed_hosts: Iterable[str] = (),
        limits: ConnectionLimits | None = None,
        tls: ssl.SSLContext | None = None,
        readers: Readers | None = None,
    ) -> None:
        if (tls is None) != (readers is None):
            raise InputError("query API: TLS and read tokens go together")
        if not is_loopback(host) and readers is None:
            raise InputError(
                f"query API: {host!r} is not a loopback address (localhost only, unless "
                "served with TLS and read tokens)"
            )
        if not 0 <= port <= 65535:
            raise InputError(f"query API port {port}: must be 0..65535")
        self.host, self.port = host, port
        self._connect, self._health, self._source = connect, health, source
        self._allowed = frozenset(host_name(h) for h in allowed_hosts)
        self._limits = limits
        self._tls, self._readers = tls, readers
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        try:
            self._server = _Server(
                (self.host, self.port),
                self._connect,
                self._health,
                self._source,
                self._allowed,
                self._limits,
                self._tls,
                self._readers,
            )
        except OSError as exc:
            raise InputError(f"query API {self.host}:{self.port}: cannot listen: {exc}") from exc
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="query-api", daemon=True
        )
        self._thread.start()
        return self.port

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'http' if self._tls is None else 'https'}://{host}:{self.port}"

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._server.stats) if self._server is not None else {}

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None
