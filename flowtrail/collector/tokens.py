"""Who may send: a tokens file maps each secret bearer token to one exporter name.

File format, one exporter per line (blank lines and `#` comments ignored):

    <exporter> <token> [kinds]

`kinds` is a comma list of what the token may send: `flows` (the default) and/or `events`
(the control plane's feed). Tokens are compared through their SHA-256 digest, so a lookup's
timing says nothing useful about a real token's text.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from flowtrail.errors import InputError

KINDS = ("flows", "events")
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class Identity:
    exporter: str
    kinds: frozenset[str]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Tokens:
    """token → Identity; `lookup` returns None for anything unknown (the caller answers 401)."""

    def __init__(self, entries: dict[str, Identity]) -> None:
        self._by_digest = {_digest(t): ident for t, ident in entries.items()}

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, token: str | None) -> Identity | None:
        if not token:
            return None
        return self._by_digest.get(_digest(token))

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
            if len(parts) not in (2, 3):
                raise InputError(f"{where}: expected '<exporter> <token> [kinds]'")
            exporter, token = parts[0], parts[1]
            kinds = frozenset(parts[2].split(",")) if len(parts) == 3 else frozenset({"flows"})
            unknown = kinds - set(KINDS)
            if unknown:
                raise InputError(f"{where}: unknown kind(s) {sorted(unknown)}; use {KINDS}")
            if len(token) < MIN_TOKEN_LENGTH:
                raise InputError(f"{where}: token shorter than {MIN_TOKEN_LENGTH} characters")
            if token in entries:
                raise InputError(f"{where}: token repeated (each exporter needs its own)")
            if exporter in names:
                raise InputError(f"{where}: exporter {exporter!r} listed twice")
            entries[token] = Identity(exporter, kinds)
            names.add(exporter)
        if not entries:
            raise InputError(f"--tokens {p}: no tokens in the file")
        return Tokens(entries)
