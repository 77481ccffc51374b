"""The agent's side: `CollectorExporter` sends each batch to a collector over HTTPS.

It implements the agent's exporter interface (flowtrail.agent.exporter.Exporter: a `name`
and `export(table, batch_id)` that delivers or raises), so the agent's Delivery spools and
retries it like any other destination. Answers map to actions:

    200           delivered (a re-sent batch id is acknowledged once, not stored twice)
    413           too big: split in halves and send each (batch ids get a suffix)
    400           refused for good (the collector quarantined it): counted here, not retried,
                  so one bad batch cannot block the spool behind it
    401, 403      bad credentials, rows of another exporter name than the token's, or a
                  local_ip outside the token's ranges: a configuration problem, so
                  ExportError (the spool keeps the rows until fixed)
    409, 429, 5xx ExportError: the spool retries with backoff
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import threading
from urllib.parse import urlsplit

import pyarrow as pa

from flowtrail.errors import ExportError, InputError

TOKEN_ENV = "FLOWTRAIL_COLLECTOR_TOKEN"
TOKEN_FILE_ENV = "FLOWTRAIL_COLLECTOR_TOKEN_FILE"
CAFILE_ENV = "FLOWTRAIL_COLLECTOR_CAFILE"
FINGERPRINT_ENV = "FLOWTRAIL_COLLECTOR_CA_FINGERPRINT"


def ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


KIND_PATHS = {"flows": "/v1/flows", "events": "/v1/events", "dns_answers": "/v1/dns_answers"}


class CollectorExporter:
    name = "collector"

    def __init__(
        self,
        url: str,
        token: str,
        cafile: str | None = None,
        *,
        timeout_s: float = 30.0,
        ca_fingerprint: str | None = None,
    ) -> None:
        """`ca_fingerprint` (sha256:<hex>): trust only the CA with this fingerprint in the
        chain the server presents (flowtrail/fleet/pin.py), instead of `cafile`."""
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise InputError(f"collector url {url!r}: expected https://HOST:PORT")
        if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "::1", "localhost"):
            raise InputError(f"collector url {url!r}: plain http only to this host (loopback)")
        if not token:
            raise InputError("collector token is empty")
        self.url = url
        self.host, self.port = (
            parts.hostname,
            parts.port or (443 if parts.scheme == "https" else 80),
        )
        self.base = parts.path.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._tls: ssl.SSLContext | None = None
        self.ca_fingerprint = ca_fingerprint
        if ca_fingerprint is not None and parts.scheme != "https":
            raise InputError(f"collector url {url!r}: a CA fingerprint needs https://")
        if parts.scheme == "https" and ca_fingerprint is None:
            self._tls = ssl.create_default_context(cafile=cafile)
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self.stats = {
            "sent_batches": 0,
            "sent_rows": 0,
            "duplicate_batches": 0,
            "split_batches": 0,
            "refused_batches": 0,
            "refused_rows": 0,
        }
        self.last_refusal: str | None = None

    @staticmethod
    def from_environment(url: str | None, ca_fingerprint: str | None = None) -> CollectorExporter:
        """Factory for the agent's exporter registry: url from --out, secrets from env, the
        CA fingerprint from --ca-fingerprint or the environment."""
        if not url:
            raise InputError("--sink collector needs --out https://HOST:PORT")
        token = os.environ.get(TOKEN_ENV, "")
        token_file = os.environ.get(TOKEN_FILE_ENV)
        if token_file:
            try:
                token = open(token_file).read().strip()  # noqa: SIM115
            except OSError as exc:
                raise InputError(f"{TOKEN_FILE_ENV}={token_file}: cannot read: {exc}") from exc
        if not token:
            raise InputError(f"--sink collector: set {TOKEN_ENV} or {TOKEN_FILE_ENV}")
        pin = ca_fingerprint or os.environ.get(FINGERPRINT_ENV) or None
        if pin is not None:
            from flowtrail.fleet.ca import parse_fingerprint

            pin = parse_fingerprint(pin)
        return CollectorExporter(url, token, os.environ.get(CAFILE_ENV), ca_fingerprint=pin)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._tls is None and self.ca_fingerprint is not None:
                from flowtrail.fleet.pin import fetch_pinned_ca, pinned_context

                ca = fetch_pinned_ca(self.host, self.port, self.ca_fingerprint, self.timeout_s)
                self._tls = pinned_context(ca)
            if self._tls is not None:
                self._conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout_s, context=self._tls
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.timeout_s
                )
        return self._conn

    def _post(self, path: str, body: bytes, batch_id: str) -> tuple[int, dict[str, object]]:
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/vnd.apache.arrow.stream",
            "X-Flowtrail-Batch": batch_id,
        }
        with self._lock:
            for attempt in (0, 1):  # a kept-alive connection the server closed: one reconnect
                conn = self._connection()
                try:
                    conn.request("POST", self.base + path, body=body, headers=headers)
                    resp = conn.getresponse()
                    raw = resp.read()
                    if resp.getheader("Connection", "").lower() == "close":
                        self.close()
                    break
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    self.close()
                    if attempt:
                        raise
                except (OSError, http.client.HTTPException):
                    self.close()
                    raise
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {"error": raw[:200].decode(errors="replace")}
        return resp.status, answer if isinstance(answer, dict) else {"answer": answer}

    def export(self, table: pa.Table, batch_id: str, kind: str = "flows") -> None:
        """POST one batch of a table (`flows`, `events` or `dns_answers`) to its path. A
        collector without that path answers 404: an ExportError, so the agent spools it."""
        path = KIND_PATHS[kind]
        try:
            status, answer = self._post(path, ipc_bytes(table), batch_id)
        except http.client.HTTPException as exc:
            raise ExportError(f"collector {self.url}: {exc}") from exc
        if status == 200:
            self.stats["sent_batches"] += 1
            self.stats["sent_rows"] += table.num_rows
            self.stats["duplicate_batches"] += int(bool(answer.get("duplicate")))
            return
        if status == 413 and table.num_rows > 1:
            self.stats["split_batches"] += 1
            half = table.num_rows // 2
            self.export(table.slice(0, half), f"{batch_id}.a", kind)
            self.export(table.slice(half), f"{batch_id}.b", kind)
            return
        error = answer.get("error", "")
        if status in (400, 413):
            self.stats["refused_batches"] += 1
            self.stats["refused_rows"] += table.num_rows
            self.last_refusal = f"{status}: {error}"
            return
        raise ExportError(f"collector {self.url} answered {status}: {error}")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def register(ca_fingerprint: str | None = None) -> None:
    """Make `flowtrail agent --sink collector --out https://HOST:PORT` available."""
    from flowtrail.agent.exporter import register_exporter

    register_exporter(
        "collector", lambda url: CollectorExporter.from_environment(url, ca_fingerprint)
    )
