"""The quarantine's byte bound holds for everything it keeps: bodies and their JSON notes."""

from __future__ import annotations

from pathlib import Path

from flowtrail.collector.quarantine import Quarantine


def on_disk(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir())


def test_notes_count_towards_the_bound(tmp_path: Path) -> None:
    # Empty bodies (a refusal before any byte was kept) still leave a note each: without
    # counting notes the directory would grow without end.
    q = Quarantine(tmp_path / "q", max_bytes=4000)
    note = {"reason": "unreadable", "error": "x" * 200}
    for _ in range(100):
        assert q.keep(b"", note) is not None
    assert on_disk(tmp_path / "q") <= 4000
    assert q.bytes_used() == on_disk(tmp_path / "q")
    assert q.evicted > 0 and len(q.entries()) == 100 - q.evicted
    # The newest entries are the ones kept, whole (body and note together).
    bodies = sorted(p.stem for p in (tmp_path / "q").glob("*.arrows"))
    assert bodies == [p.stem for p in q.entries()]


def test_bodies_and_notes_together_stay_within_the_bound(tmp_path: Path) -> None:
    q = Quarantine(tmp_path / "q", max_bytes=10_000)
    for i in range(50):
        q.keep(b"b" * (100 * i % 900), {"reason": "contract", "i": i})
        assert on_disk(tmp_path / "q") <= 10_000


def test_a_named_entry_is_kept_once(tmp_path: Path) -> None:
    q = Quarantine(tmp_path / "q", max_bytes=10_000)
    name = "00000000000000000001-log-3-100"
    assert q.keep(b"body", {"reason": "extra_column"}, name=name) == name
    assert q.keep(b"body", {"reason": "extra_column"}, name=name) == name
    assert len(q.entries()) == 1 and q.kept == 1
