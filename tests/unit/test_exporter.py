"""Exporters, the bounded spool and retry with backoff. No privileges needed.

Destination failures are real filesystem errors (a file standing where the output directory
must be: root ignores permission bits, so chmod cannot make a directory unwritable here).
The clock driving the backoff is injected so the test does not sleep.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowtrail.agent.assemble import AGENT_SCHEMA, assemble
from flowtrail.agent.exporter import Delivery, ParquetDir, Spool, make_exporter
from flowtrail.agent.records import RAW_SCHEMA
from flowtrail.errors import InputError
from flowtrail.schema import FLOWS
from flowtrail.tables import read_table


def flows(n: int, first_sock: int = 0) -> pa.Table:
    raw = pa.Table.from_pylist(
        [
            {
                "sock_id": first_sock + i,
                "family": 4,
                "local_ip": "10.0.0.1",
                "local_port": 30000 + i,
                "remote_ip": "10.0.0.2",
                "remote_port": 443,
                "direction": "outbound",
                "outcome": "established",
                "start_ns": 1_700_000_000_000_000_000 + i,
                "end_ns": 1_700_000_000_500_000_000 + i,
                "bytes_sent": 100 * i,
                "bytes_received": 7,
                "segs_sent": 3,
                "segs_received": 3,
                "retransmits": 0,
                "srtt_us": 40,
                "cgroup_id": 5,
                "netns_ino": 1,
                "pid": 9,
                "comm": "curl",
            }
            for i in range(n)
        ],
        schema=RAW_SCHEMA,
    )
    return assemble(raw, exporter="host-a", region="r1", state="closed")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def exported_socks(directory: Path) -> list[int]:
    out: list[int] = []
    for f in sorted(directory.glob("flows-*.parquet")):
        out += [int(x.split(":")[1]) for x in pq.read_table(f).column("flow_id").to_pylist()]
    return out


def test_parquet_file_follows_the_contract(tmp_path: Path) -> None:
    d = Delivery(ParquetDir(tmp_path / "out"))
    d.submit(flows(3))
    files = list((tmp_path / "out").glob("flows-*.parquet"))
    assert len(files) == 1
    table = read_table(files[0], FLOWS)  # strict contract validation
    assert table.column("flow_id").to_pylist() == ["host-a:0", "host-a:1", "host-a:2"]
    assert table.column("outcome").to_pylist() == ["established"] * 3  # extra column kept
    assert not list((tmp_path / "out").glob(".*"))  # no temp files left behind
    assert d.stats["exported_rows"] == 3


def test_unreachable_destination_spools_then_delivers_in_order(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("a file where the directory should be")  # every write fails: ENOTDIR
    clock = Clock()
    d = Delivery(ParquetDir(out), Spool(tmp_path / "spool", 10_000_000), clock=clock)
    d.submit(flows(2, 0))
    assert d.stats["export_failures"] == 1
    assert len(d.spool.pending()) == 1  # type: ignore[union-attr]
    clock.now = 0.5  # inside the 1 s backoff: queued behind, not even tried
    d.submit(flows(2, 10))
    assert d.stats["export_failures"] == 1
    clock.now = 1.0  # due: tried, fails again, backoff doubles to 2 s
    assert d.retry() == 0
    assert d.stats["export_failures"] == 2
    clock.now = 2.9
    assert d.retry() == 0 and d.stats["export_failures"] == 2
    out.unlink()  # the destination recovers
    clock.now = 3.0
    assert d.retry() == 2
    assert exported_socks(out) == [0, 1, 10, 11]  # oldest first
    assert d.spool.pending() == []  # type: ignore[union-attr]
    m = d.metrics()
    assert m["exported_rows"] == 4 and m["spooled_rows"] == 4 and m["spool_dropped_rows"] == 0
    clock.now = 3.1  # after a success the next batch goes straight out
    d.submit(flows(1, 20))
    assert exported_socks(out)[-1] == 20 and d.metrics()["spool_pending_batches"] == 0


def test_bounded_spool_drops_oldest_and_counts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("blocked")
    one = Spool(tmp_path / "probe", 1 << 30)
    one.put(flows(50), "probe")
    size = one.bytes_used()
    clock = Clock()
    spool = Spool(tmp_path / "spool", int(size * 2.5))  # room for two batches, not three
    d = Delivery(ParquetDir(out), spool, clock=clock)
    for k in range(4):
        d.submit(flows(50, 1000 * k))
    m = d.metrics()
    assert m["spool_dropped_batches"] == 2 and m["spool_dropped_rows"] == 100
    assert m["spool_pending_batches"] == 2 and m["spool_bytes"] <= int(size * 2.5)
    out.unlink()
    clock.now = 100.0
    d.retry()
    socks = exported_socks(out)
    assert min(socks) == 2000 and len(socks) == 100  # the two newest survived
    # every row is accounted for: delivered or counted as dropped
    assert d.metrics()["exported_rows"] + m["spool_dropped_rows"] == 200


def test_spool_survives_a_restart(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("blocked")
    first = Delivery(ParquetDir(out), Spool(tmp_path / "spool", 1 << 30))
    first.submit(flows(3))
    out.unlink()
    second = Delivery(ParquetDir(out), Spool(tmp_path / "spool", 1 << 30))
    assert second.retry() == 1
    assert exported_socks(out) == [0, 1, 2]


def test_without_spool_failures_are_counted_drops(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("blocked")
    d = Delivery(ParquetDir(out))
    d.submit(flows(4))
    assert d.stats["export_dropped_rows"] == 4 and d.stats["exported_rows"] == 0
    assert d.last_error is not None and "Error" in d.last_error


def test_make_exporter_names_the_flag() -> None:
    with pytest.raises(InputError, match="--sink 'kafka'"):
        make_exporter("kafka", None)
    with pytest.raises(InputError, match="needs --out"):
        make_exporter("parquet", None)
    assert make_exporter("none", None).name == "none"


def test_empty_assembly_has_agent_schema() -> None:
    empty = assemble(RAW_SCHEMA.empty_table(), exporter="h", region=None, state="active")
    assert empty.schema == AGENT_SCHEMA and empty.num_rows == 0


def test_agent_loads_network_sinks_only_when_chosen(tmp_path: Path) -> None:
    """The agent runs on every host: nats-py (and asyncio) and numba (tens of MB resident)
    stay unloaded unless needed; the sinks are still all listed and work when chosen."""
    code = f"""
import sys
from flowtrail.agent.command import register_network_sinks
from flowtrail.agent import exporter
import flowtrail.agent.runner, flowtrail.agent.capture
register_network_sinks("us-east")
import pyarrow as pa
from flowtrail.agent.records import RAW_SCHEMA
from flowtrail.agent.scopes import ScopeMarker
rows = [dict(local_ip=ip, remote_ip="10.9.9.9", netns_ino=1) for ip in ("127.0.0.1", "10.0.0.1")]
raw = pa.Table.from_pylist(rows, schema=RAW_SCHEMA)
local, _ = ScopeMarker(detect=False).mark(raw, raw.column("remote_ip"))
assert local.to_pylist() == ["host", None]
assert exporter.make_exporter("parquet", {str(tmp_path)!r}).name == "parquet"
assert {{"parquet", "none", "collector", "nats"}} <= set(exporter.EXPORTERS)
print(sorted(m for m in ("nats", "numba", "asyncio", "llvmlite") if m in sys.modules))
sink = exporter.make_exporter("nats", "nats://127.0.0.1:1")  # connects on first export only
print(type(sink).__name__, "nats" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "NatsExporter True"]
