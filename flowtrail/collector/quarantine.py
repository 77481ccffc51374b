"""Refused batches kept for inspection: the body as received plus a JSON note saying why.

Bounded by bytes: the oldest entries go first, and every one removed is counted.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


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

    def keep(self, body: bytes, note: dict[str, Any]) -> str | None:
        """Store one refused batch; returns its name, or None if it could not be written."""
        with self._lock:
            self._seq += 1
            name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}"
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

    def _enforce_bound(self) -> None:
        bodies = sorted(self.directory.glob("*.arrows"))
        sizes = {}
        for p in bodies:
            try:
                sizes[p] = p.stat().st_size
            except FileNotFoundError:
                continue
        total = sum(sizes.values())
        for p, size in sizes.items():  # oldest first (names sort by time)
            if total <= self.max_bytes:
                break
            p.unlink(missing_ok=True)
            p.with_suffix(".json").unlink(missing_ok=True)
            total -= size
            self.evicted += 1
