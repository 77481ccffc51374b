"""Canonical IPv4 text → 32-bit values, straight from an Arrow string array's buffers.

Addresses are parsed several times per row on a collector's hot path (validation, region
routing, the engine's keys). Arrow's own kernels need four passes and a temporary list
array per parse (split, flatten, cast, reshape) and a hash pass to find distinct values
first; this is one compiled pass over the bytes. Only canonical dotted quads are accepted
(no leading zeros, each octet 0..255, exactly what the contract's validation accepts);
anything else (IPv6, or text to be refused) is left to the callers' general paths.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from flowtrail.jit import compiled

U32 = npt.NDArray[np.uint32]
B = npt.NDArray[np.bool_]


@compiled
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


def parse_ipv4(values: pa.Array) -> tuple[U32, B]:
    """(value, ok) per row: ok where the row is canonical IPv4 text (False for nulls)."""
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
    _parse(offsets, data, value, ok)
    if validity is not None and values.null_count:
        ok &= np.asarray(values.is_valid().to_numpy(zero_copy_only=False), bool)
    return value, ok
