"""HTTPS in front of the collector: POST /v1/flows, /v1/events and /v1/dns_answers, GET
/metrics and /healthz.

stdlib only (http.server + ssl): the body is one Arrow IPC stream, so HTTP needs no framing
of its own. Connections are admitted, timed and closed by `flowtrail.httpguard` (TLS in each
connection's own thread, header and body deadlines, per-peer and total connection limits, a
lingering close), so a slow or hostile client cannot hold others out.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from flowtrail.collector.service import Answer, Collector
from flowtrail.httpguard import ConnectionLimits, GuardedHandler, GuardedServer

PATHS = {"/v1/flows": "flows", "/v1/events": "events", "/v1/dns_answers": "dns_answers"}
BATCH_HEADER = "X-Flowtrail-Batch"
MAX_BATCH_ID = 200


def tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


class _Handler(GuardedHandler):
    server: CollectorHTTPServer
    server_version = "flowtrail-collector"

    def log_message(self, format: str, *args: Any) -> None:
        return None  # every outcome is counted in /metrics; no per-request log lines

    def _send(self, answer: Answer, content_type: str = "application/json") -> None:
        payload = answer.json()
        self.send_response(answer.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        if answer.retry_after_s is not None:
            self.send_header("Retry-After", str(max(1, round(answer.retry_after_s + 0.5))))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def _refuse(self, answer: Answer, length: int | None) -> None:
        """Answer without taking the body; it is read and dropped first (bounded), since
        closing with it unread would reset the connection before the sender reads why."""
        if length is None:
            self.close_connection = True
        else:
            self.read_and_drop(length, self.server.discard_limit)
        self._send(answer)

    def _may_read(self) -> bool:
        """GETs off loopback need a read token when the server was given `readers`."""
        readers = self.server.readers
        if readers is None or readers(self.client_address[0], self.headers.get("Authorization")):
            return True
        self.close_connection = True
        self._send(Answer(401, {"error": "a read token is needed from another host"}))
        return False

    def do_GET(self) -> None:
        c = self.server.collector
        if not self._may_read():
            return
        if self.path == "/metrics":
            text = c.metrics.text()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
        elif self.path == "/healthz":
            self._send(c.health())
        else:
            self._send(Answer(404, {"error": f"no such path {self.path!r}"}))

    def do_POST(self) -> None:
        c = self.server.collector
        length_text = self.headers.get("Content-Length")
        length = int(length_text) if length_text is not None and length_text.isdigit() else None
        kind = PATHS.get(self.path)
        if kind is None:
            self._refuse(c.refuse_unread("bad_path", 404, f"no such path {self.path!r}"), length)
            return
        if length is None:
            self._refuse(
                c.refuse_unread("no_length", 411, "a Content-Length header is required"), None
            )
            return
        token = _bearer(self.headers.get("Authorization"))
        who = c.authenticate(kind, token)
        if isinstance(who, Answer):  # refused before the body is looked at
            self._refuse(who, length)
            return
        limit = self.server.max_body_bytes
        if length > limit:
            message = f"body of {length} bytes exceeds the limit of {limit}; send smaller batches"
            self._refuse(c.refuse_unread("body_too_large", 413, message), length)
            return
        batch_id = self.headers.get(BATCH_HEADER)
        if batch_id is not None and (len(batch_id) > MAX_BATCH_ID or not batch_id.isprintable()):
            message = f"{BATCH_HEADER}: too long or odd"
            self._refuse(c.refuse_unread("bad_batch_id", 400, message), length)
            return
        self.reading_body(length)
        body = self.rfile.read(length)
        self.done_reading()
        if len(body) != length:
            self.close_connection = True
            return  # the client went away mid-body: nothing was accepted
        try:
            answer = c.ingest(kind, token, body, batch_id, max_inflated=limit)
        except Exception as exc:  # a defect: say so, count it, keep serving others
            c.metrics.refused.labels("internal_error").inc()
            answer = Answer(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})
        self._send(answer)


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


class CollectorHTTPServer(GuardedServer):
    def __init__(
        self,
        address: tuple[str, int],
        collector: Collector,
        *,
        tls: ssl.SSLContext | None,
        max_body_bytes: int = 256 << 20,
        limits: ConnectionLimits | None = None,
        readers: Callable[[str, str | None], bool] | None = None,
    ) -> None:
        """`readers(peer address, Authorization header)`: may this GET be answered? None:
        every GET is (a collector on loopback)."""
        self.collector = collector
        self.readers = readers
        self.max_body_bytes = max_body_bytes
        self.discard_limit = min(4 * max_body_bytes, 1 << 30)
        refused = collector.metrics.refused

        super().__init__(
            address, _Handler, tls=tls, limits=limits, refused=lambda r: refused.labels(r).inc()
        )
