"""Who may read from another host: a token of kind `read` in the tokens file.

The query API, the console and the collector's /metrics and /healthz answer a request from
another host only with such a token, as `Authorization: Bearer <token>` (scripts,
Prometheus) or HTTP Basic with the token as the password (a browser asks for it; any user
name). A request from this machine's loopback needs none, as before.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress

from flowtrail.collector.tokens import Tokens

READ = "read"
CHALLENGE = 'Basic realm="flowtrail", charset="UTF-8"'


def credential(header: str | None) -> str | None:
    """The token in an Authorization header (Bearer, or Basic's password), else None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer":
        return value or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


def peer_is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class ReadAccess:
    """`allows(header)`: does this Authorization header carry a read token? The tokens are
    the collector's (a `TokenFile` reloads, so revoking a reader applies at once)."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens

    def allows(self, header: str | None) -> bool:
        ident = self.tokens.lookup(credential(header))
        return ident is not None and READ in ident.kinds

    def admits(self, peer: str, header: str | None) -> bool:
        """A request from `peer` with this Authorization header: loopback, or a read token."""
        return peer_is_loopback(peer) or self.allows(header)
