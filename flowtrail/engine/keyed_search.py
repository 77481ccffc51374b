"""Vectorised binary search over arrays sorted by (key, time).

numpy's searchsorted works on one sorted array; the engine's tables are sorted by an address
key and then by a time. These helpers find, for many (key, time) queries at once, positions
inside each key's block (the binary search inside a block is a compiled kernel).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from flowtrail.engine import kernels

I64 = npt.NDArray[np.int64]


def key_blocks(
    sorted_keys: npt.NDArray[np.uint64], query_keys: npt.NDArray[np.uint64]
) -> tuple[I64, I64]:
    """[lo, hi) of each query key's block in `sorted_keys` (empty where absent)."""
    lo = np.searchsorted(sorted_keys, query_keys, side="left").astype(np.int64)
    hi = np.searchsorted(sorted_keys, query_keys, side="right").astype(np.int64)
    return lo, hi


def find_unique(
    sorted_keys: npt.NDArray[np.uint64], query_keys: npt.NDArray[np.uint64]
) -> tuple[I64, npt.NDArray[np.bool_]]:
    """For keys held at most once in `sorted_keys`: each query key's position and whether
    it is there (where it is not, the position is a valid index, not a match)."""
    if len(sorted_keys) == 0:
        return np.zeros(len(query_keys), np.int64), np.zeros(len(query_keys), bool)
    pos = np.minimum(np.searchsorted(sorted_keys, query_keys), len(sorted_keys) - 1)
    return pos.astype(np.int64), sorted_keys[pos] == query_keys


def search_in_blocks(values: I64, lo: I64, hi: I64, targets: I64, *, side: str) -> I64:
    """Like searchsorted(values[lo:hi], target, side) + lo, for every query at once.

    `values` must be ascending inside every [lo, hi) block.
    """
    if len(targets) == 0:
        return np.empty(0, np.int64)
    return kernels.search_in_blocks(  # type: ignore[no-any-return]
        values, lo.astype(np.int64), hi.astype(np.int64), targets.astype(np.int64),
        side == "right",
    )  # fmt: skip


def expand_ranges(starts: I64, stops: I64) -> tuple[I64, I64]:
    """All (query, position) pairs for positions in [starts[q], stops[q]); vectorised."""
    counts = np.maximum(stops - starts, 0)
    total = int(counts.sum())
    query = np.repeat(np.arange(len(starts), dtype=np.int64), counts)
    if total == 0:
        return query, np.empty(0, dtype=np.int64)
    offsets = np.cumsum(counts) - counts
    within = np.arange(total, dtype=np.int64) - np.repeat(offsets, counts)
    return query, np.repeat(starts, counts) + within
