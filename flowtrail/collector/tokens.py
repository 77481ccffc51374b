"""Who may send: a tokens file maps each secret bearer token to one exporter name.

File format, one exporter per line (blank lines and `#` comments ignored):

    <exporter> <token> [kinds] [ranges=<prefix>,<prefix>...]

`kinds` is a comma list of what the token may do: send `flows` (the default) and/or `events`
(the control plane's feed), or `read` the query API and the collector's /metrics and /healthz
from another host (`flowtrail up --listen`). `ranges=` lists the addresses the exporter's
host may claim as a row's `local_ip` (flowtrail/addressranges.py); without it, any address.
Tokens are compared through their SHA-256 digest, so a lookup's timing says nothing useful
about a real token's text.

`TokenFile` reads the file again whenever it changes, so a token added or revoked takes
effect at the next request, without a restart.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from flowtrail.addressranges import AddressRanges
from flowtrail.errors import InputError

KINDS = ("flows", "events", "read")
log = logging.getLogger(__name__)
MIN_TOKEN_LENGTH = 16
RANGES = "ranges="


@dataclass(frozen=True)
class Identity:
    exporter: str
    kinds: frozenset[str]
    ranges: AddressRanges | None = None  # the local_ip values it may claim; None: any


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Tokens:
    """token → Identity; `lookup` returns None for anything unknown (the caller answers 401)."""

    def __init__(self, entries: dict[str, Identity]) -> None:
        self._by_digest = {_digest(t): ident for t, ident in entries.items()}
        self._ranges = {i.exporter: i.ranges for i in entries.values() if i.ranges is not None}

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, token: str | None) -> Identity | None:
        if not token:
            return None
        return self._by_digest.get(_digest(token))

    def ranges_of(self, exporter: str) -> AddressRanges | None:
        """The addresses `exporter` may claim as local_ip; None: any."""
        return self._ranges.get(exporter)

    @staticmethod
    def load(path: str | os.PathLike[str]) -> Tokens:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise InputError(f"--tokens {p}: cannot read: {exc.strerror or exc}") from exc
        entries: dict[str, Identity] = {}
        names: set[str] = set()
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            where = f"--tokens {p} line {lineno}"
            ranges_text = [p for p in parts[2:] if p.startswith(RANGES)]
            rest = [p for p in parts[2:] if not p.startswith(RANGES)]
            if len(parts) < 2 or len(rest) > 1 or len(ranges_text) > 1:
                raise InputError(f"{where}: expected '<exporter> <token> [kinds] [{RANGES}...]'")
            exporter, token = parts[0], parts[1]
            kinds = frozenset(rest[0].split(",")) if rest else frozenset({"flows"})
            ranges = (
                AddressRanges.parse(ranges_text[0][len(RANGES) :], where) if ranges_text else None
            )
            unknown = kinds - set(KINDS)
            if unknown:
                raise InputError(f"{where}: unknown kind(s) {sorted(unknown)}; use {KINDS}")
            if len(token) < MIN_TOKEN_LENGTH:
                raise InputError(f"{where}: token shorter than {MIN_TOKEN_LENGTH} characters")
            if token in entries:
                raise InputError(f"{where}: token repeated (each exporter needs its own)")
            if exporter in names:
                raise InputError(f"{where}: exporter {exporter!r} listed twice")
            entries[token] = Identity(exporter, kinds, ranges)
            names.add(exporter)
        if not entries:
            raise InputError(f"--tokens {p}: no tokens in the file")
        return Tokens(entries)


class TokenFile(Tokens):
    """The tokens file, read again when its inode, size or modification time changes: a
    token removed from it is refused from the next request on. A new version that does not
    parse leaves the last good one in force (`error` says why); `flowtrail token` writes the
    file whole and atomically, so only a hand edit can get there."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._tokens = Tokens.load(self.path)
        self.error: str | None = None

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def current(self) -> Tokens:
        stamp = self._stat()
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    try:
                        self._tokens = Tokens.load(self.path)
                        self.error = None
                    except InputError as exc:
                        self.error = str(exc)
                        log.warning("tokens file not reloaded, the last good one stays: %s", exc)
                    self._stamp = stamp
        return self._tokens

    def __len__(self) -> int:
        return len(self.current())

    def lookup(self, token: str | None) -> Identity | None:
        return self.current().lookup(token)

    def ranges_of(self, exporter: str) -> AddressRanges | None:
        return self._tokens.ranges_of(exporter)  # right after `lookup`, which reloaded
