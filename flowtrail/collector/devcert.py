"""A throwaway self-signed certificate for loopback use (tests, benchmarks, `flowtrail up`).

Made with the openssl command-line tool, which Debian ships; no Python crypto dependency.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from flowtrail.errors import CapabilityError


def self_signed(directory: Path, host: str = "127.0.0.1", days: int = 2) -> tuple[Path, Path]:
    """Write cert.pem and key.pem (EC P-256, SAN = host) into `directory`; returns both."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise CapabilityError("the openssl command is needed to make a certificate")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    san = f"IP:{host}" if host[0].isdigit() or ":" in host else f"DNS:{host}"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", str(days),
            "-subj", f"/CN={host}", "-addext", f"subjectAltName={san}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key
