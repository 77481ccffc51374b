"""Who may send: a tokens file maps each secret bearer token to one exporter name.

File format, one exporter per line (blank lines and `#` comments ignored):

    <exporter> <token> [kinds] [ranges=<prefix>,<prefix>...]

`kinds` is a comma list of what the token may send: `flows` (the default) and/or `events`
(the control plane's feed). `ranges=` lists the addresses the exporter's host may claim as a
row's `local_ip` (flowtrail/addressranges.py); without it, any address. Tokens are compared
through their SHA-256 digest, so a lookup's timing says nothing useful about a real token's
text.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from flowtrail.addressranges import AddressRanges
from flowtrail.errors import InputError

KINDS = ("flows", "events")
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
