"""An agent trusts the server's own CA by its fingerprint, without a CA file to copy.

Once per exporter (at its first connection), `pinned_context` opens one TLS connection that
verifies nothing, takes the chain the server presents, and keeps the certificate whose
SHA-256 (of its DER encoding) is the pinned fingerprint. Nothing is sent on that connection.
From then on every connection verifies the server normally against that one CA. The host
name is not checked against the certificate: this CA is the server's own and signs nothing
but its certificates, so a chain to it is the server, whatever name or address reached it
(a NAT, a name not in the certificate).
"""

from __future__ import annotations

import _ssl  # the Certificate type of the unverified chain (public from Python 3.13)
import hashlib
import socket
import ssl
from typing import Any

from flowtrail.errors import ExportError


def _chain_der(sock: ssl.SSLSocket) -> list[bytes]:
    chain: Any = getattr(sock, "get_unverified_chain", None)
    if chain is None:  # Python < 3.13: the same method on the underlying object
        chain = sock._sslobj.get_unverified_chain  # type: ignore[attr-defined]
    return [c.public_bytes(_ssl.ENCODING_DER) for c in chain() or []]


def fetch_pinned_ca(host: str, port: int, fingerprint: str, timeout_s: float = 10.0) -> bytes:
    """The DER of the CA certificate with `fingerprint` (sha256:<hex>) in the server's chain;
    ExportError when the server is unreachable or presents no such certificate."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    want = fingerprint.removeprefix("sha256:")
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            probe.wrap_socket(raw, server_hostname=host) as tls,
        ):
            chain = _chain_der(tls)
    except OSError as exc:
        raise ExportError(f"collector {host}:{port}: cannot fetch its certificates: {exc}") from exc
    for der in chain:
        if hashlib.sha256(der).hexdigest() == want:
            return der
    raise ExportError(
        f"collector {host}:{port}: no certificate with fingerprint {fingerprint} in the chain it "
        f"presents ({len(chain)} certificates): a different server, or a wrong fingerprint"
    )


def pinned_context(ca_der: bytes) -> ssl.SSLContext:
    """Verify the server against this one CA (host name not checked: see the module)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca_der)
    return ctx
