"""HTTPS in front of the collector: POST /v1/flows and /v1/events, GET /metrics and /healthz.

stdlib only (http.server + ssl): the body is one Arrow IPC stream, so HTTP needs no framing
of its own. The TLS handshake runs in each connection's thread, not in the accept loop, so a
slow or hostile client cannot stall others; connections beyond `max_connections` are closed
at once, and idle ones time out.
"""

from __future__ import annotations

import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from flowtrail.collector.service import Answer, Collector

PATHS = {"/v1/flows": "flows", "/v1/events": "events"}
BATCH_HEADER = "X-Flowtrail-Batch"
MAX_BATCH_ID = 200


def tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one TLS handshake per exporter, not per batch
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

    def _discard(self, length: int) -> None:
        """Read and drop a refused body, so the sender can read the answer; bounded.

        Closing with the body unread would reset the connection under the sender before it
        reads why. Bodies beyond `discard_limit` are not read: the connection just closes.
        """
        self.close_connection = True
        if length > self.server.discard_limit:
            return
        left = length
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                return
            left -= len(chunk)

    def do_GET(self) -> None:
        c = self.server.collector
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
        kind = PATHS.get(self.path)
        if kind is None:
            self.close_connection = True
            self._send(c.refuse_unread("bad_path", 404, f"no such path {self.path!r}"))
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.isdigit():
            self.close_connection = True
            self._send(c.refuse_unread("no_length", 411, "a Content-Length header is required"))
            return
        length = int(length_text)
        token = _bearer(self.headers.get("Authorization"))
        who = c.authenticate(kind, token)
        if isinstance(who, Answer):  # refused before the body is looked at
            self._discard(length)
            self._send(who)
            return
        limit = self.server.max_body_bytes
        if length > limit:
            self._discard(length)
            self._send(
                c.refuse_unread(
                    "body_too_large",
                    413,
                    f"body of {length} bytes exceeds the limit of {limit}; send smaller batches",
                )
            )
            return
        batch_id = self.headers.get(BATCH_HEADER)
        if batch_id is not None and (len(batch_id) > MAX_BATCH_ID or not batch_id.isprintable()):
            self.close_connection = True
            self._send(c.refuse_unread("bad_batch_id", 400, f"{BATCH_HEADER}: too long or odd"))
            return
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return  # the client went away mid-body: nothing was accepted
        try:
            answer = c.ingest(kind, token, body, batch_id)
        except Exception as exc:  # a defect: say so, count it, keep serving others
            c.metrics.refused.labels("internal_error").inc()
            answer = Answer(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})
        self._send(answer)


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


class CollectorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        collector: Collector,
        *,
        tls: ssl.SSLContext | None,
        max_body_bytes: int = 256 << 20,
        max_connections: int = 64,
        idle_timeout_s: float = 30.0,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6  # an IPv6 address such as ::1
        super().__init__(address, _Handler)
        self.collector = collector
        self.tls = tls
        self.max_body_bytes = max_body_bytes
        self.discard_limit = min(4 * max_body_bytes, 1 << 30)
        self.idle_timeout_s = idle_timeout_s
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused_connections = 0
        self.failed_handshakes = 0

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused_connections += 1
            self.collector.metrics.refused.labels("too_many_connections").inc()
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        conn: socket.socket = request
        try:
            conn.settimeout(self.idle_timeout_s)
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    self.failed_handshakes += 1
                    self.collector.metrics.refused.labels("tls_handshake").inc()
                    request.close()
                    return
            self.finish_request(conn, client_address)
        except (OSError, ssl.SSLError):
            pass  # the peer vanished or timed out: nothing was acknowledged
        finally:
            try:
                conn.close()
            finally:
                request.close()
                self._slots.release()
