"""The write-ahead log keeps every synced record and ignores a torn tail (real files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowtrail.collector.service import _expand_runs, _runs
from flowtrail.collector.wal import WriteAheadLog


def _log(path: Path, **kw: int) -> WriteAheadLog:
    wal = WriteAheadLog(path, **kw)  # type: ignore[arg-type]
    list(wal.replay())
    return wal


def test_records_come_back_in_order_with_row_ids(tmp_path: Path) -> None:
    wal = _log(tmp_path)
    wal.open(0, next_row=100)
    a = wal.append({"kind": "flows"}, b"first", 3, 1)
    b = wal.append({"kind": "events"}, b"", 0, 2)
    c = wal.append({"kind": "flows"}, b"third" * 1000, 5, 3)
    wal.sync(c.position)
    wal.close()
    assert (a.first_row, b.first_row, c.first_row) == (100, 103, 103)
    again = WriteAheadLog(tmp_path)
    recs = list(again.replay())
    assert [r.body for r in recs] == [b"first", b"", b"third" * 1000]
    assert [r.header["row"] for r in recs] == [100, 103, 103]
    assert again.torn_records == 0


def test_a_torn_tail_is_dropped_and_new_writes_go_to_a_new_segment(tmp_path: Path) -> None:
    wal = _log(tmp_path)
    wal.open(0, 0)
    wal.append({"kind": "flows"}, b"kept", 1, 0)
    done = wal.append({"kind": "flows"}, b"torn" * 100, 1, 0)
    wal.sync(done.position)
    wal.close()
    seg = wal.path(wal.segments()[0])
    seg.write_bytes(seg.read_bytes()[:-50])  # a crash in the middle of the second write
    again = WriteAheadLog(tmp_path)
    assert [r.body for r in again.replay()] == [b"kept"]
    assert again.torn_records == 1
    again.open(0, 1)
    assert again.current_segment == 2  # never appends after a torn record


def test_a_flipped_byte_fails_the_checksum(tmp_path: Path) -> None:
    wal = _log(tmp_path)
    wal.open(0, 0)
    wal.sync(wal.append({"kind": "flows"}, b"x" * 64, 1, 0).position)
    wal.close()
    seg = wal.path(1)
    data = bytearray(seg.read_bytes())
    data[-10] ^= 0xFF
    seg.write_bytes(bytes(data))
    again = WriteAheadLog(tmp_path)
    assert list(again.replay()) == []
    assert again.torn_records == 1


def test_segments_rotate_by_size_and_age(tmp_path: Path) -> None:
    wal = _log(tmp_path, segment_bytes=1000, segment_age_ns=10)
    wal.open(0, 0)
    segs = [wal.append({"kind": "flows"}, b"y" * 600, 1, 0).segment for _ in range(3)]
    assert segs == [1, 1, 2]  # the segment that passed 1000 bytes takes no more
    later = wal.append({"kind": "flows"}, b"z", 1, 100)  # small, but the segment is old
    assert later.segment == 3
    wal.sync(later.position)
    wal.delete(1)
    assert wal.segments() == [2, 3]
    wal.close()


def test_row_id_runs_round_trip() -> None:
    rng = np.random.default_rng(5)
    ids = np.unique(rng.integers(0, 10_000, 3_000)).astype(np.int64)
    runs = _runs(ids)
    assert len(runs) < len(ids)
    assert np.array_equal(_expand_runs(runs), ids)
    assert len(_expand_runs(_runs(np.empty(0, np.int64)))) == 0
