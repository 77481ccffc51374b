"""Copies of structured (record) arrays at the speed of plain bytes.

numpy copies a structured array field by field through per-field transfer functions, even
between arrays of one dtype: selecting, concatenating or appending the engine's flow records
(83 bytes) ran 5-18 times slower than moving the same bytes. Viewed as opaque records of the
same size (one void dtype) the same operations are plain memory copies and give the same
bytes back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Rec = npt.NDArray[np.void]


def _opaque(rec: Rec) -> Rec:
    return rec.view(np.dtype((np.void, rec.dtype.itemsize)))


def take(rec: Rec, idx: npt.NDArray[np.integer] | npt.NDArray[np.bool_]) -> Rec:  # type: ignore[type-arg]
    """rec[idx] for an index or mask array."""
    return _opaque(rec)[idx].view(rec.dtype)


def concat(parts: Sequence[Rec], dtype: np.dtype) -> Rec:  # type: ignore[type-arg]
    """np.concatenate(parts) of records of `dtype`."""
    if not parts:
        return np.zeros(0, dtype)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([_opaque(p) for p in parts]).view(dtype)


def put(dst: Rec, at: int, src: Rec) -> None:
    """dst[at : at + len(src)] = src."""
    _opaque(dst)[at : at + len(src)] = _opaque(src)
