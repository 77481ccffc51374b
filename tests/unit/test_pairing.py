"""The pairing rule's one-to-one part: rows of one 4-tuple pair in time order, at most once each.

(Real connections, lost SYNs and reused 4-tuples: tests/kernel/test_connection_pairing.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from flowtrail.pairing import pair_in_order

S = 1_000_000_000


def columns(rows: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(4-tuple number, pair time) rows as the two arrays pair_in_order takes."""
    return (
        np.array([g for g, _ in rows], np.int64).reshape(-1),
        np.array([t for _, t in rows], np.int64).reshape(-1),
    )


def pairs(a: list[tuple[int, int]], b: list[tuple[int, int]], tol: int = S) -> set[tuple[int, int]]:
    ia, ib = pair_in_order(*columns(a), *columns(b), tol)
    return set(zip(ia.tolist(), ib.tolist(), strict=True))


def test_a_reused_four_tuple_pairs_each_connection_once_in_order() -> None:
    # five connections 10 ms apart on one 4-tuple, both ends 50 µs apart, given shuffled
    a = [(7, k * 10_000_000) for k in (3, 0, 4, 1, 2)]
    b = [(7, k * 10_000_000 + 50_000) for k in (2, 4, 0, 3, 1)]
    got = pairs(a, b)
    assert len(got) == 5
    assert all(a[i][1] // 10_000_000 == b[j][1] // 10_000_000 for i, j in got)


def test_a_row_whose_other_end_is_missing_stays_alone() -> None:
    a = [(1, 0), (1, 5 * S), (1, 10 * S)]
    b = [(1, 5 * S + 1), (1, 10 * S + 1)]
    assert pairs(a, b) == {(1, 0), (2, 1)}


def test_other_four_tuples_and_rows_beyond_the_tolerance_never_pair() -> None:
    assert pairs([(1, 0), (2, 0)], [(3, 0), (2, 2 * S)]) == set()
    assert pairs([(2, 0)], [(2, S)]) == {(0, 0)}  # the tolerance is inclusive


def test_negative_tolerance_is_refused() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        pair_in_order(*(np.zeros(1, np.int64),) * 4, -1)
