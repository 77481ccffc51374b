"""How many bytes an Arrow IPC stream becomes once read, found without reading it.

With buffer compression (LZ4 or ZSTD) a small body can declare gigabytes: each compressed
buffer starts with its uncompressed length, and the reader allocates that much before it
looks further. This walks the stream's messages (pyarrow's MessageReader does not
decompress), reads each record or dictionary batch's buffer list from its flatbuffer
metadata, and sums the declared sizes, so the collector can refuse the batch before
anything is materialised.

The flatbuffer layout read here is Arrow's Message.fbs / Schema.fbs (format version 5):
Message{version, header_type, header, bodyLength, custom_metadata};
RecordBatch{length, nodes, buffers: [Buffer{offset, length}], compression, ...};
DictionaryBatch{id, data: RecordBatch, isDelta}.
"""

from __future__ import annotations

import struct

import pyarrow as pa

_DICTIONARY_BATCH, _RECORD_BATCH = 2, 3
_NOT_COMPRESSED = -1  # a buffer the writer left uncompressed (it would not have shrunk)


class _Table:
    """One flatbuffer table: fields by index, bounds-checked by struct (raises struct.error)."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vsize = struct.unpack_from("<H", buf, self.vtable)[0]

    def _field(self, index: int) -> int | None:
        slot = 4 + 2 * index
        if slot + 2 > self.vsize:
            return None
        off = struct.unpack_from("<H", self.buf, self.vtable + slot)[0]
        return self.pos + off if off else None

    def scalar(self, index: int, fmt: str, default: int = 0) -> int:
        at = self._field(index)
        return default if at is None else int(struct.unpack_from(fmt, self.buf, at)[0])

    def _target(self, index: int) -> int | None:
        at = self._field(index)
        return None if at is None else at + struct.unpack_from("<I", self.buf, at)[0]

    def table(self, index: int) -> _Table | None:
        at = self._target(index)
        return None if at is None else _Table(self.buf, at)

    def structs(self, index: int, size: int) -> list[int]:
        """Positions of the elements of a vector of fixed-size structs."""
        at = self._target(index)
        if at is None:
            return []
        n = struct.unpack_from("<I", self.buf, at)[0]
        if at + 4 + n * size > len(self.buf):
            raise struct.error("vector runs past the metadata")
        return [at + 4 + i * size for i in range(n)]


def _batch_bytes(batch: _Table, body: memoryview) -> int:
    compressed = batch.table(3) is not None
    total = 0
    for at in batch.structs(2, 16):
        offset, length = struct.unpack_from("<qq", batch.buf, at)
        if offset < 0 or length < 0 or offset + length > len(body):
            raise ValueError(f"a buffer at {offset}+{length} lies outside the message body")
        if not compressed or length == 0:
            total += length
            continue
        declared = struct.unpack_from("<q", body, offset)[0]
        total += length - 8 if declared == _NOT_COMPRESSED else declared
    return total


def inflated_bytes(body: bytes) -> int:
    """Bytes of buffers the stream's batches declare once decompressed; ValueError when the
    stream cannot be walked (the reader would refuse it too)."""
    total = 0
    try:
        reader = pa.ipc.MessageReader.open_stream(pa.py_buffer(body))
        while True:
            try:
                msg = reader.read_next_message()
            except StopIteration:
                return total
            meta = msg.metadata.to_pybytes()
            root = _Table(meta, struct.unpack_from("<I", meta, 0)[0])
            kind = root.scalar(1, "<B")
            header = root.table(2)
            if header is None or kind not in (_DICTIONARY_BATCH, _RECORD_BATCH):
                continue  # schema (bounded by the body) or a kind the reader will refuse
            batch = header.table(1) if kind == _DICTIONARY_BATCH else header
            if batch is None:
                raise ValueError("a dictionary batch without data")
            data = msg.body
            total += _batch_bytes(batch, memoryview(data) if data is not None else memoryview(b""))
            if total < 0:
                raise ValueError("negative buffer sizes")
    except (pa.ArrowInvalid, OSError, struct.error, IndexError) as exc:
        raise ValueError(f"not an Arrow IPC stream: {exc}") from exc
