"""Refused batches kept for inspection: the body as received plus a JSON note saying why.

Bounded by bytes, bodies and notes alike: the oldest entries go first, and every one
removed is counted.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

SUFFIXES = (".arrows", ".json")


class Quarantine:
    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._seq = 0
        self.kept = 0
        self.evicted = 0
        self.failed = 0

    def keep(self, body: bytes, note: dict[str, Any], name: str | None = None) -> str | None:
        """Store one refused batch; returns its name, or None if it could not be written.

        `name` (it must sort by time, like the generated ones): an entry kept under that
        name before is not written again (a batch met again on every replay of the log).
        """
        with self._lock:
            self._seq += 1
            if name is None:
                name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}"
            elif (self.directory / f"{name}.json").exists():
                return name
        try:
            (self.directory / f"{name}.arrows").write_bytes(body)
            (self.directory / f"{name}.json").write_text(json.dumps(note, indent=1) + "\n")
        except OSError:
            with self._lock:
                self.failed += 1
            return None
        with self._lock:
            self.kept += 1
            self._enforce_bound()
        return name

    def entries(self) -> list[Path]:
        return sorted(self.directory.glob("*.json"))

    def bytes_used(self) -> int:
        return sum(sum(files.values()) for files in self._sizes().values())

    def _sizes(self) -> dict[str, dict[Path, int]]:
        """Entry name -> its files and their sizes (a body, a note, or both)."""
        entries: dict[str, dict[Path, int]] = {}
        for p in self.directory.iterdir():
            if p.suffix not in SUFFIXES:
                continue
            try:
                entries.setdefault(p.stem, {})[p] = p.stat().st_size
            except FileNotFoundError:
                continue
        return entries

    def _enforce_bound(self) -> None:
        entries = self._sizes()
        total = sum(sum(files.values()) for files in entries.values())  # notes count too
        for stem in sorted(entries):  # oldest first (names sort by time)
            if total <= self.max_bytes:
                break
            for p, size in entries[stem].items():
                p.unlink(missing_ok=True)
                total -= size
            self.evicted += 1
