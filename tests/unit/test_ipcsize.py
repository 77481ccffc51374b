"""inflated_bytes: what an Arrow IPC stream declares it becomes once read, from its metadata.

The oracle: the same table written with and without buffer compression declares the same
size (an uncompressed stream's buffers are exactly their declared lengths), and that size
covers the buffers pyarrow actually allocates when reading.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from flowtrail.collector.ipcsize import inflated_bytes


def ipc(table: pa.Table, compression: str | None = None, chunk: int | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table, max_chunksize=chunk)
    return bytes(sink.getvalue().to_pybytes())


def read_buffer_bytes(body: bytes) -> int:
    """Distinct buffers of the table read (chunks share their dictionary)."""
    table = pa.ipc.open_stream(body).read_all()
    seen: set[tuple[int, int]] = set()
    for column in table.columns:
        for chunk in column.chunks:
            arrays = [chunk] + ([chunk.dictionary] if pa.types.is_dictionary(chunk.type) else [])
            seen.update((b.address, b.size) for a in arrays for b in a.buffers() if b is not None)
    return sum(size for _, size in seen)


rng = np.random.default_rng(0)
TABLES = {
    "numbers": pa.table({"a": rng.integers(0, 1000, 50_000), "b": rng.random(50_000)}),
    "strings with nulls": pa.table(
        {"s": pa.array([None if i % 7 == 0 else "x" * (i % 50) for i in range(20_000)])}
    ),
    "dictionary": pa.table(
        {"d": pa.array([f"name-{i % 30}" for i in range(20_000)]).dictionary_encode()}
    ),
    "lists": pa.table({"l": pa.array([list(range(i % 9)) for i in range(10_000)])}),
    "empty": pa.table({"a": pa.array([], pa.int64())}),
}


@pytest.mark.parametrize("name", sorted(TABLES))
@pytest.mark.parametrize("compression", ["zstd", "lz4"])
@pytest.mark.parametrize("chunk", [None, 3_000])
def test_compressed_declares_what_uncompressed_is(
    name: str, compression: str, chunk: int | None
) -> None:
    table = TABLES[name]
    plain = ipc(table, None, chunk)
    packed = ipc(table, compression, chunk)
    assert inflated_bytes(packed) == inflated_bytes(plain)
    assert inflated_bytes(plain) <= len(plain)
    assert inflated_bytes(packed) >= read_buffer_bytes(packed) - 64 * (table.num_columns + 1)


def test_a_bomb_declares_its_real_size_from_a_small_body() -> None:
    bomb = ipc(pa.table({"z": np.zeros(25_000_000, np.int64)}), "zstd")
    assert len(bomb) < 100_000
    assert inflated_bytes(bomb) >= 200_000_000


@pytest.mark.parametrize(
    "body", [b"not arrow at all", ipc(TABLES["numbers"], "zstd")[:-40], b"\xff\xff\xff\xff\x10"]
)
def test_what_cannot_be_walked_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError, match="not an Arrow IPC stream"):
        inflated_bytes(body)
