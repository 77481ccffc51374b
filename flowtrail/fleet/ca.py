"""The server's own certificate authority, made once under DATA/tls/, and the server
certificate it signs at every start.

Agents do not need the CA file: they are given its SHA-256 fingerprint and pin it
(flowtrail/fleet/pin.py). The CA key stays on the server (mode 0600). Made with the openssl
command-line tool, which Debian ships; no Python crypto dependency.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flowtrail.errors import CapabilityError, InputError

CA_DAYS = 3650
SERVER_DAYS = 30  # made again at every start
CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]


@dataclass(frozen=True)
class ServerTLS:
    """What the servers load (`chain` holds the server certificate and the CA, so agents can
    find the CA they pin in the handshake) and what clients are told to trust."""

    chain: Path
    key: Path
    cafile: Path | None  # None: a certificate the user gave (its CA is theirs)
    fingerprint: str | None  # sha256:<hex> of the CA certificate (DER); None as above

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.chain), str(self.key))
        return ctx


def _openssl() -> str:
    tool = shutil.which("openssl")
    if tool is None:
        raise CapabilityError("the openssl command is needed to make certificates")
    return tool


def _run(*argv: str) -> None:
    r = subprocess.run([_openssl(), *argv], capture_output=True, text=True)
    if r.returncode != 0:
        raise CapabilityError(f"openssl {argv[0]}: {r.stderr.strip()[-300:]}")


def fingerprint_of(pem_file: Path) -> str:
    """sha256:<hex> of the first certificate in a PEM file (its DER encoding)."""
    der = ssl.PEM_cert_to_DER_cert(pem_file.read_text())
    return "sha256:" + hashlib.sha256(der).hexdigest()


def parse_fingerprint(text: str, flag: str = "--ca-fingerprint") -> str:
    """`sha256:<hex>` in any letter case, with or without colons (openssl prints
    `AB:CD:...`); InputError naming the flag otherwise."""
    body = text.strip().lower().removeprefix("sha256:").removeprefix("sha256=")
    hexdigits = body.replace(":", "")
    if len(hexdigits) != 64 or any(c not in "0123456789abcdef" for c in hexdigits):
        raise InputError(f"{flag} {text!r}: expected sha256:<64 hex digits>")
    return "sha256:" + hexdigits


def ensure_ca(tls_dir: Path) -> Path:
    """DATA/tls/ca.pem (and ca-key.pem, 0600), made the first time; returns the CA file.
    Made in a temporary directory and renamed into place, so two processes making it at
    once both end up with the one that landed first."""
    ca = tls_dir / "ca.pem"
    if ca.exists():
        return ca
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = Path(tempfile.mkdtemp(prefix=".ca-", dir=tls_dir))
    try:
        _run(
            "req", "-x509", *CURVE, "-nodes", "-keyout", str(work / "ca-key.pem"),
            "-out", str(work / "ca.pem"), "-days", str(CA_DAYS),
            "-subj", f"/CN=flowtrail fleet CA {os.urandom(4).hex()}",
            "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        (work / "ca-key.pem").chmod(0o600)
        try:  # the key first: a ca.pem in place always has its key beside it
            os.link(work / "ca-key.pem", tls_dir / "ca-key.pem")
        except FileExistsError:
            return ca  # another process is making it: its ca.pem follows its key
        os.replace(work / "ca.pem", ca)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ca


def _san(names: list[str]) -> str:
    out = []
    for name in dict.fromkeys(names):
        try:
            out.append(f"IP:{ipaddress.ip_address(name)}")
        except ValueError:
            out.append(f"DNS:{name}")
    return ",".join(out)


def issue_server_cert(tls_dir: Path, names: list[str]) -> ServerTLS:
    """A server certificate for `names` (addresses and DNS names) signed by the CA, written
    with the CA after it into DATA/tls/server-chain.pem; made fresh at each start."""
    if not names:
        raise InputError("the server certificate needs at least one name or address")
    ca = ensure_ca(tls_dir)
    key, csr, cert = tls_dir / "server-key.pem", tls_dir / "server.csr", tls_dir / "server.pem"
    ext = tls_dir / "server.ext"
    ext.write_text(
        f"subjectAltName={_san(names)}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    _run("req", "-new", *CURVE, "-nodes", "-keyout", str(key), "-out", str(csr),
         "-subj", "/CN=flowtrail server")  # fmt: skip
    key.chmod(0o600)
    _run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(tls_dir / "ca-key.pem"),
         "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-out", str(cert),
         "-days", str(SERVER_DAYS), "-extfile", str(ext))  # fmt: skip
    chain = tls_dir / "server-chain.pem"
    tmp = tls_dir / ".server-chain.pem.tmp"
    tmp.write_text(cert.read_text() + ca.read_text())
    os.replace(tmp, chain)
    for leftover in (csr, ext):
        leftover.unlink(missing_ok=True)
    return ServerTLS(chain, key, ca, fingerprint_of(ca))


def given_cert(cert: Path, key: Path) -> ServerTLS:
    """A certificate (chain) and key the user gave: loaded once here so a mistake is an
    error naming the flags before anything starts."""
    tls = ServerTLS(cert, key, None, None)
    try:
        tls.context()
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"--tls-cert {cert} / --tls-key {key}: cannot load: {exc}") from exc
    return tls
