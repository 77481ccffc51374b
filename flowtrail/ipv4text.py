"""Canonical IPv4 text → 32-bit values, straight from an Arrow string array's buffers.

Addresses are parsed several times per row on a collector's hot path (validation, region
routing, the engine's keys). Arrow's own kernels need four passes and a temporary list
array per parse (split, flatten, cast, reshape) and a hash pass to find distinct values
first; this is one compiled pass over the bytes. Only canonical dotted quads are accepted
(no leading zeros, each octet 0..255, exactly what the contract's validation accepts);
anything else (IPv6, or text to be refused) is left to the callers' general paths.

`parse_ipv4(values, compiled=False)` runs the same state machine from numpy alone, over all
rows at once one character position at a time: about twice the time per row, but it does not
load numba and LLVM (some 75 MB resident), which the agent, running on every host at a modest
row rate, has no use for.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

U32 = npt.NDArray[np.uint32]
B = npt.NDArray[np.bool_]
_DOT, _ZERO, _NINE = 46, 48, 57
_WIDEST = 15  # 255.255.255.255


def _parse(offsets, data, value, ok):  # type: ignore[no-untyped-def]
    for i in range(len(value)):
        start, stop = offsets[i], offsets[i + 1]
        acc = np.uint32(0)
        octet = 0
        digits = 0
        dots = 0
        good = 7 <= stop - start <= 15
        pos = start
        while good and pos < stop:
            c = data[pos]
            if c == 46:  # '.'
                if digits == 0 or dots == 3:
                    good = False
                else:
                    acc = (acc << np.uint32(8)) | np.uint32(octet)
                    octet, digits, dots = 0, 0, dots + 1
            elif 48 <= c <= 57:
                if digits == 1 and octet == 0:  # a leading zero
                    good = False
                else:
                    octet = octet * 10 + (c - 48)
                    digits += 1
                    good = octet <= 255
            else:
                good = False
            pos += 1
        good = good and dots == 3 and digits > 0
        ok[i] = good
        value[i] = (acc << np.uint32(8)) | np.uint32(octet) if good else np.uint32(0)


@functools.cache
def _compiled_parse() -> Callable[..., Any]:
    from flowtrail.jit import compiled  # numba: loaded by the first compiled parse only

    return compiled(_parse)  # type: ignore[no-any-return]


def _parse_numpy(offsets: npt.NDArray[Any], data: npt.NDArray[np.uint8], value: U32, ok: B) -> None:
    """`_parse`'s state machine run on every row at once, one character position at a time
    (15 steps over whole columns): the same answer, from numpy alone."""
    start = offsets[:-1].astype(np.int64)
    length = offsets[1:].astype(np.int64) - start
    rows = np.flatnonzero((length >= 7) & (length <= _WIDEST))
    if len(rows) == 0:
        return
    length = length[rows]
    padded = np.concatenate([data, np.zeros(_WIDEST, np.uint8)])
    chars = padded[start[rows] + np.arange(_WIDEST)[:, None]]  # a row per character position
    n = len(rows)
    acc = np.zeros(n, np.uint32)
    octet = np.zeros(n, np.int32)
    digits = np.zeros(n, np.int8)
    dots = np.zeros(n, np.int8)
    good = np.ones(n, np.bool_)
    for pos in range(_WIDEST):
        c = chars[pos]
        active = pos < length
        digit = c - np.uint8(_ZERO)  # wraps below '0'
        is_digit = active & (digit <= _NINE - _ZERO)
        is_dot = active & (c == _DOT)
        good &= ~active | is_digit | is_dot
        good &= ~(is_dot & ((digits == 0) | (dots == 3)))
        good &= ~(is_digit & (digits == 1) & (octet == 0))  # a leading zero
        acc = np.where(is_dot, acc << np.uint32(8) | octet.astype(np.uint32), acc)
        octet = np.where(is_dot, 0, np.where(is_digit, octet * 10 + digit, octet))
        digits = np.where(is_dot, 0, digits + is_digit).astype(np.int8)
        dots += is_dot
        good &= octet <= 255
    good &= (dots == 3) & (digits > 0)
    ok[rows] = good
    value[rows[good]] = (acc << np.uint32(8) | octet.astype(np.uint32))[good]


def parse_ipv4(values: pa.Array, *, compiled: bool = True) -> tuple[U32, B]:
    """(value, ok) per row: ok where the row is canonical IPv4 text (False for nulls).

    compiled=False: numpy only (see the module docstring), same answer."""
    n = len(values)
    value = np.zeros(n, np.uint32)
    ok = np.zeros(n, np.bool_)
    if n == 0:
        return value, ok
    if pa.types.is_large_string(values.type):
        offset_type: type[np.signedinteger] = np.int64  # type: ignore[type-arg]
    elif pa.types.is_string(values.type):
        offset_type = np.int32
    else:
        raise TypeError(f"expected IP text, got {values.type}")
    validity, offsets_buf, data_buf = values.buffers()
    offsets = np.frombuffer(offsets_buf, offset_type, n + 1, values.offset * offset_type().itemsize)
    data = (
        np.frombuffer(data_buf, np.uint8) if data_buf is not None and data_buf.size else
        np.zeros(1, np.uint8)
    )  # fmt: skip
    (_compiled_parse() if compiled else _parse_numpy)(offsets, data, value, ok)
    if validity is not None and values.null_count:
        ok &= np.asarray(values.is_valid().to_numpy(zero_copy_only=False), bool)
    return value, ok
