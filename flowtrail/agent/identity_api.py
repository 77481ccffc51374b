"""A local API for explicit registrations: what an IP manager or orchestrator on this host
tells the agent at run time (the IPMan analogue), beside the identity file.

A Unix stream socket (mode 0600: root only), one JSON object per line each way:

    {"op": "register", "workload": "payments", "ip": "10.1.2.3", "port": 8443}
    {"op": "register", "workload": "billing", "cgroup": "/system.slice/billing.service"}
    {"op": "unregister", "workload": "payments"}
    {"op": "list"}

Replies are {"ok": true, ...} or {"ok": false, "error": "<what was wrong>"}; a bad request
never affects other requests or the agent.
"""

from __future__ import annotations

import contextlib
import json
import os
import socketserver
import threading
from dataclasses import asdict
from typing import Any

from flowtrail.agent.identity import Registry
from flowtrail.errors import InputError

MAX_LINE = 64 * 1024


def handle(registry: Registry, line: bytes) -> dict[str, Any]:
    """One request → one reply; every problem becomes an error reply."""
    try:
        req = json.loads(line)
    except ValueError as exc:
        return {"ok": False, "error": f"not JSON: {exc}"}
    if not isinstance(req, dict):
        return {"ok": False, "error": "expected a JSON object"}
    op = req.pop("op", None)
    try:
        if op == "register":
            extra = set(req) - {"workload", "ip", "port", "cgroup", "netns"}
            if extra:
                return {"ok": False, "error": f"unknown field(s) {sorted(extra)}"}
            reg = registry.register(
                req.get("workload"),  # type: ignore[arg-type]
                ip=req.get("ip"),
                port=req.get("port"),
                cgroup=req.get("cgroup"),
                netns=req.get("netns"),
            )
            return {"ok": True, "registered": asdict(reg)}
        if op == "unregister":
            workload = req.get("workload")
            if not isinstance(workload, str):
                return {"ok": False, "error": "'workload' must be a string"}
            return {"ok": True, "removed": registry.unregister(workload)}
        if op == "list":
            return {"ok": True, "registrations": [asdict(r) for r in registry.entries()]}
    except InputError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": False, "error": f"unknown op {op!r}: use register, unregister or list"}


class _Handler(socketserver.StreamRequestHandler):
    server: RegistrationServer

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(MAX_LINE + 1)
            if not line:
                return
            if len(line) > MAX_LINE:
                reply: dict[str, Any] = {"ok": False, "error": f"request over {MAX_LINE} bytes"}
                self.wfile.write(json.dumps(reply).encode() + b"\n")
                return
            if line.strip():
                reply = handle(self.server.registry, line)
                self.wfile.write(json.dumps(reply).encode() + b"\n")


class RegistrationServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, registry: Registry) -> None:
        self.registry = registry
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale socket from a previous run
        old = os.umask(0o177)
        try:
            super().__init__(path, _Handler)
        except OSError as exc:
            raise InputError(f"--api {path}: cannot listen: {exc.strerror or exc}") from exc
        finally:
            os.umask(old)
        self.path = path
        self._thread = threading.Thread(target=self.serve_forever, name="flowtrail-api")
        self._thread.daemon = True

    def start(self) -> RegistrationServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
