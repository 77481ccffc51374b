"""Where a command writes: the place is made (or refused) before the work, and a failed
write becomes a one-line InputError naming the flag and path, never a traceback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flowtrail.errors import InputError


def problem(exc: OSError) -> str:
    """An OSError as a person reads it: the reason, and the path when it is not the flag's."""
    if isinstance(exc, FileExistsError):  # mkdir met a file where a directory belongs
        return f"not a directory ({exc.filename})"
    reason = exc.strerror or str(exc)
    return f"{reason} ({exc.filename})" if exc.filename else reason


@contextmanager
def writing(flag: str, path: str | os.PathLike[str]) -> Iterator[None]:
    """OSError inside becomes InputError("--out PATH: cannot write: reason")."""
    try:
        yield
    except OSError as exc:
        raise InputError(f"{flag} {path}: cannot write: {problem(exc)}") from exc


def make_dir(flag: str, path: str | os.PathLike[str]) -> Path:
    """The directory `path` (made with its parents), or InputError naming `flag`."""
    p = Path(path)
    with writing(flag, p):
        if p.exists() and not p.is_dir():
            raise InputError(f"{flag} {p}: exists and is not a directory")
        p.mkdir(parents=True, exist_ok=True)
    return p


def make_parent(flag: str, path: str | os.PathLike[str]) -> Path:
    """Make the directory `path` goes into and try a file there, so that a bad --out fails
    before the work rather than after it."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{flag} {p}: is a directory, expected a file name")
    with writing(flag, p):
        p.parent.mkdir(parents=True, exist_ok=True)
        probe = p.with_name(f".{p.name}.{os.getpid()}.probe")
        probe.touch()
        probe.unlink()
    return p


def write_port_file(path: str | os.PathLike[str], port: int) -> None:
    """`port` and a newline into `path`, atomically: a script waiting for the file never reads
    half of it."""
    final = Path(path)
    tmp = final.with_name(f".{final.name}.tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, final)
