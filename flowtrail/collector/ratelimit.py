"""Per-exporter rate limit on rows: a token bucket refilled at `rate` rows/s up to `burst`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RowRateLimit:
    """`take(exporter, rows)` → 0.0 when allowed, else seconds until it would be."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # exporter → (level, at)
        self._lock = threading.Lock()

    def take(self, exporter: str, rows: int) -> float:
        with self._lock:
            now = self.clock()
            level, at = self._buckets.get(exporter, (self.burst, now))
            level = min(self.burst, level + (now - at) * self.rate)
            if rows <= level:
                self._buckets[exporter] = (level - rows, now)
                return 0.0
            self._buckets[exporter] = (level, now)
            # A batch bigger than the burst can never pass: the caller reports that apart.
            return (min(rows, self.burst) - level) / self.rate
