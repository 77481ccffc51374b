"""Kernel monotonic time (bpf_ktime_get_ns) to ns since the Unix epoch, converted in one place.

The offset between CLOCK_REALTIME and CLOCK_MONOTONIC is measured once, at capture start: many
reads of REALTIME each bracketed by two MONOTONIC reads; the tightest bracket wins and the
realtime read is paired with its midpoint, so the error is at most half that bracket (well under a
microsecond here). Measuring once keeps every flow of one capture on one consistent timeline;
`remeasure()` lets a long-running agent follow a stepped wall clock between batches if it wants.
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt

_SAMPLES = 64


def measure_offset(samples: int = _SAMPLES) -> tuple[int, int]:
    """(realtime - monotonic in ns, uncertainty in ns) from the tightest of `samples` brackets."""
    best_offset, best_width = 0, -1
    for _ in range(samples):
        m0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        r = time.clock_gettime_ns(time.CLOCK_REALTIME)
        m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        width = m1 - m0
        if best_width < 0 or width < best_width:
            best_width = width
            best_offset = r - (m0 + width // 2)
    return best_offset, (best_width + 1) // 2


class MonotonicClock:
    """Converts CLOCK_MONOTONIC ns (as the BPF program records them) to epoch ns."""

    def __init__(self) -> None:
        self.offset_ns, self.uncertainty_ns = measure_offset()

    def remeasure(self) -> None:
        self.offset_ns, self.uncertainty_ns = measure_offset()

    def to_epoch(self, mono_ns: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """Vectorised: monotonic ns array to epoch ns (int64)."""
        return mono_ns.astype(np.int64) + np.int64(self.offset_ns)

    def now_epoch_ns(self) -> int:
        """Epoch ns on the same timeline as to_epoch (monotonic now plus the offset)."""
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC) + self.offset_ns
