"""What `flowtrail up --listen ADDR` adds for a fleet: the address checked, the names its
certificate carries, the URL agents are told, and the read check for other hosts."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowtrail.errors import InputError
from flowtrail.fleet.ca import ServerTLS, given_cert, issue_server_cert

WILDCARD = "0.0.0.0"


def listen_address(text: str) -> str:
    """The IPv4 address to bind: `localhost` is 127.0.0.1, 0.0.0.0 every address of this
    host; names and IPv6 are refused (the collector listens on IPv4 only)."""
    if text == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        raise InputError(
            f"--listen {text!r}: give an IPv4 address of this host, or 0.0.0.0"
        ) from None
    if ip.version != 4:
        raise InputError(f"--listen {text!r}: the collector listens on IPv4 only")
    return str(ip)


def is_fleet(listen: str) -> bool:
    """Anything but loopback serves other hosts: TLS with the fleet's CA, read tokens."""
    return not ipaddress.ip_address(listen).is_loopback


def host_addresses() -> list[str]:
    """This host's IPv4 addresses, loopback last (for a certificate valid at 0.0.0.0)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET)]
    ips = [str(a) for a in found if a]
    return sorted(ips, key=lambda a: ipaddress.ip_address(a).is_loopback)


def certificate_names(listen: str, tls_names: tuple[str, ...]) -> list[str]:
    names = [*tls_names]
    names += host_addresses() if listen == WILDCARD else [listen]
    names += [socket.gethostname(), "localhost", "127.0.0.1"]
    return list(dict.fromkeys(n for n in names if n))


def advertised_host(listen: str, tls_names: tuple[str, ...]) -> str:
    """The host agents are told to send to: the first --tls-name, else the address listened
    on, else this host's first address that is not loopback."""
    if tls_names:
        return tls_names[0]
    if listen != WILDCARD:
        return listen
    outside = [a for a in host_addresses() if not ipaddress.ip_address(a).is_loopback]
    return outside[0] if outside else socket.gethostname()


@dataclass(frozen=True)
class Fleet:
    """The fleet side of one `up` run."""

    tls: ServerTLS
    host: str  # advertised

    def url(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{port}"

    def state(self, collector_port: int, api_port: int) -> dict[str, Any]:
        """The `fleet` entry of up.json, which `flowtrail token add` prints for agents."""
        return {
            "url": self.url(collector_port),
            "api": self.url(api_port),
            "ca_fingerprint": self.tls.fingerprint,
            "cafile": str(self.tls.cafile) if self.tls.cafile else None,
        }


def check_given_cert(cert: Path | None, key: Path | None) -> ServerTLS:
    if cert is None or key is None:
        raise InputError("--tls-cert and --tls-key go together")
    return given_cert(cert, key)


def prepare(
    tls_dir: Path,
    listen: str,
    tls_names: tuple[str, ...],
    cert: Path | None,
    key: Path | None,
) -> Fleet:
    """The server's TLS: the user's certificate, or one the fleet's own CA signs now."""
    if cert is not None or key is not None:
        tls = check_given_cert(cert, key)
    else:
        tls = issue_server_cert(tls_dir, certificate_names(listen, tls_names))
    return Fleet(tls, advertised_host(listen, tls_names))
