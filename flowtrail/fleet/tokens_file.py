"""Changing the tokens file safely: one writer at a time (a lock file), the new text checked
as the collector will read it, then put in place whole (rename), mode 0600. A running
collector reads it again at its next request (flowtrail/collector/tokens.py, TokenFile)."""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flowtrail.collector.tokens import Tokens
from flowtrail.errors import InputError

HEADER = (
    "# flowtrail: '<name> <token> [kinds] [ranges=<prefix>,...]' per line (docs/collector.md)\n"
)


def name_ok(name: str) -> str:
    if not name or name.startswith("#") or any(c.isspace() for c in name):
        raise InputError(f"{name!r}: a name needs at least one character, no spaces, no '#'")
    return name


def entries(path: Path) -> list[tuple[str, str, str]]:
    """(name, rest of the line after the token, line) for each entry, comments skipped."""
    out = []
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 2:
            out.append((parts[0], " ".join(parts[2:]), line))
    return out


@contextmanager
def editing(path: Path) -> Iterator[list[str]]:
    """The file's lines to change in place; written back (checked, whole, 0600) on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / ".tokens.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        lines = path.read_text().splitlines() if path.exists() else [HEADER.rstrip("\n")]
        yield lines
        text = "".join(f"{line}\n" for line in lines)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(tmp_fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            if any(len(line.split("#", 1)[0].split()) >= 2 for line in lines):
                Tokens.load(tmp)  # InputError naming the line: the file in place stays as is
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        os.close(fd)


def add(path: Path, name: str, kinds: str, ranges: str | None) -> str:
    """A new random token for `name`; InputError if it has one already."""
    name_ok(name)
    token = secrets.token_urlsafe(32)
    with editing(path) as lines:
        if any(n == name for n, _rest, _line in entries(path)):
            raise InputError(f"{name!r} has a token already; `flowtrail token revoke {name}` first")
        extra = f" ranges={ranges}" if ranges else ""
        lines.append(f"{name} {token} {kinds}{extra}")
    return token


def revoke(path: Path, name: str) -> None:
    with editing(path) as lines:
        keep = [line for line in lines if (line.split("#", 1)[0].split() or [""])[0] != name]
        if len(keep) == len(lines):
            raise InputError(f"{name!r}: no token of that name in {path}")
        lines[:] = keep
