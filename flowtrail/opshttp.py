"""A tiny plain-HTTP server for operations endpoints (/metrics, /healthz, /readyz).

Used by the agent (/metrics on loopback) and by cluster nodes (/metrics, /healthz, /readyz
for an orchestrator's probes). Handlers are read at request time and run in the server's
threads, so they must only read state that is safe to read from another thread. Connections
are admitted and timed by `flowtrail.httpguard` (deadlines, connection limits); a
loopback-only server answers only requests whose Host header names this machine.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Callable, Mapping

from flowtrail.errors import InputError
from flowtrail.httpguard import GuardedHandler, GuardedServer, local_host_allowed

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"

# A route answers (status, content type, body).
Route = Callable[[], tuple[int, str, bytes]]


def json_answer(status: int, body: object) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body, sort_keys=True).encode() + b"\n"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def parse_listen(text: str, flag: str) -> tuple[str, int]:
    """'HOST:PORT' (IPv6 as [::1]:PORT) -> (host, port); errors name the flag."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InputError(f"{flag} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    return host.strip("[]") or "127.0.0.1", int(port)


class OpsServer:
    """GET on a few fixed paths, in daemon threads; anything else is 404."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        flag: str = "--listen",
        loopback_only: bool = False,
    ) -> None:
        if loopback_only and not is_loopback(host):
            raise InputError(
                f"{flag} {host!r}: loopback only: this endpoint is not meant for other hosts"
            )
        self.loopback_only = loopback_only
        table = dict(routes)
        known = ", ".join(sorted(table))

        class Handler(GuardedHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if loopback_only and not local_host_allowed(self.headers.get("Host")):
                    # A loopback endpoint read under a foreign name: DNS rebinding.
                    self.send_error(403, "Host is not a name of this machine")
                    return
                route = table.get(self.path.split("?")[0])
                if route is None:
                    self.send_error(404, f"paths here: {known}")
                    return
                try:
                    status, ctype, body = route()
                except Exception as exc:  # a failing probe must answer, not hang up
                    status, ctype, body = json_answer(500, {"error": str(exc)})
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        try:
            self._server = GuardedServer((host, port), Handler)
        except OSError as exc:
            raise InputError(f"{flag} {host}:{port}: cannot listen: {exc}") from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ops-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> int:
        self._thread.start()
        return self.port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
