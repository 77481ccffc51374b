"""A decided batch the sink refuses is put aside alone; a sink in trouble keeps every row.

The collector core without HTTP, with the real DuckDB store and the real write-ahead log.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from flowtrail.collector.client import ipc_bytes
from flowtrail.collector.quarantine import Quarantine
from flowtrail.collector.service import Collector, CollectorConfig
from flowtrail.collector.sink import refuses_rows
from flowtrail.collector.tokens import Tokens
from flowtrail.collector.wal import WriteAheadLog
from flowtrail.engine.attributor import Settings
from flowtrail.errors import ContractError
from flowtrail.store import Store
from tests.unit.test_collector_service import NOW, Clock, S, by_exporter, sim_flows, token


def make(tmp: Path, flows: pa.Table, clock: Clock) -> Collector:
    tokens = tmp / "tokens"
    tokens.write_text("".join(f"{e} {token(e)}\n" for e in by_exporter(flows)))
    c = Collector(
        CollectorConfig(settings=Settings(max_wait_ns=5 * S, use_events=False)),
        tokens=Tokens.load(tokens),
        wal=WriteAheadLog(tmp / "wal"),
        sink=Store(tmp / "flows.duckdb", retention_ns=None),
        quarantine=Quarantine(tmp / "q", 1 << 20),
        clock=clock,
    )
    c.start(background=False)
    return c


def test_a_batch_the_store_refuses_goes_aside_and_the_rest_is_stored(tmp_path: Path) -> None:
    clock = Clock()
    flows = sim_flows(1500)
    (e1, p1), (e2, p2), (e3, p3) = list(by_exporter(flows).items())[:3]
    c = make(tmp_path, flows, clock)
    assert c.ingest("flows", token(e1), ipc_bytes(p1), "a").status == 200
    # A batch that got past the door although the store cannot hold it (a float16 column:
    # today's door refuses it, so it is handed to the engine here as the door would have):
    # logged like an accepted batch, then decided with the others.
    poison = p2.append_column("x", pa.array(np.ones(p2.num_rows, np.float16)))
    done = c.wal.append({"kind": "flows", "exporter": e2, "recv": NOW}, ipc_bytes(poison),
                        poison.num_rows, NOW)  # fmt: skip
    c.wal.sync(done.position)
    c._note_segment(done.segment, done.first_row, NOW)
    c._submit_flows(poison, done.first_row, NOW, segment=done.segment)
    assert c.ingest("flows", token(e3), ipc_bytes(p3), "c").status == 200
    for _ in range(8):
        clock.t += S
        c.tick(clock())

    assert c.health().status == 200
    stored = c.sink.read()  # type: ignore[attr-defined]
    assert stored.num_rows == p1.num_rows + p3.num_rows
    assert set(stored.column("exporter").to_pylist()) == {e1, e3}
    text = c.metrics.text().decode()
    assert "flowtrail_collector_sink_refused_batches_total 1.0" in text
    assert f"flowtrail_collector_sink_refused_rows_total {p2.num_rows}.0" in text
    assert "flowtrail_collector_sink_backlog_rows 0.0" in text
    (note,) = [json.loads(p.read_text()) for p in c.quarantine.entries()]
    assert note["reason"] == "sink_refused" and note["exporters"] == [e2]
    assert "halffloat" in note["error"]
    kept = pa.ipc.open_stream((tmp_path / "q" / "x").with_name(
        Path(c.quarantine.entries()[0]).stem + ".arrows").read_bytes()).read_all()  # fmt: skip
    assert kept.num_rows == p2.num_rows and "remote_source" in kept.column_names
    # Every row is done with: the log keeps nothing waiting for the sink.
    assert sum(seg.outstanding for seg in c._segments.values()) == 0
    c.stop()


@pytest.mark.parametrize(
    ("error", "rows_fault"),
    [
        (ContractError("extra column"), True),
        (duckdb.NotImplementedException("Unsupported Internal Arrow Type e"), True),
        (duckdb.BinderException("Duplicate named argument"), True),
        (pa.ArrowNotImplementedError("Unhandled type for Arrow to Parquet"), True),
        (OSError(28, "No space left on device"), False),
        (duckdb.IOException("could not write"), False),
        (duckdb.OutOfMemoryException("out of memory"), False),
        (duckdb.FatalException("database has been invalidated"), False),
        (MemoryError(), False),
    ],
)
def test_which_sink_errors_are_the_rows_fault(error: Exception, rows_fault: bool) -> None:
    assert refuses_rows(error) is rows_fault
