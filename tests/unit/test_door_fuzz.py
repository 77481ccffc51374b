"""Fuzz the collector's door: random hostile batches between good exporters' batches.

Whatever the door answers a hostile batch, the good exporters' rows are all stored, every
batch it acknowledged is stored too (none is refused by the sink: the door let through only
what the sink can hold), and the collector stays healthy. The collector core runs without
HTTP, on the real write-ahead log and the real sinks (DuckDB store, Parquet files).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowtrail.collector.client import ipc_bytes
from flowtrail.collector.quarantine import Quarantine
from flowtrail.collector.service import Collector, CollectorConfig
from flowtrail.collector.sink import ParquetSink
from flowtrail.collector.tokens import Tokens
from flowtrail.collector.wal import WriteAheadLog
from flowtrail.engine.attributor import Settings
from flowtrail.store import Store
from tests.unit.batch_strategies import contract_only, hostile
from tests.unit.test_collector_service import Clock, S, by_exporter, sim_flows, token

KEYS = ["exporter", "flow_id", "state", "end_ns"]


@pytest.mark.parametrize("sink", ["store", "parquet"])
def test_good_rows_are_stored_whatever_comes_between_them(tmp_path: Path, sink: str) -> None:
    flows = contract_only(sim_flows(2000, seed=11))
    parts = by_exporter(flows)
    names = list(parts)
    good, bad = names[:-1], names[-1]
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{e} {token(e)}\n" for e in names))
    clock = Clock()
    c = Collector(
        CollectorConfig(settings=Settings(max_wait_ns=5 * S, use_events=False), fsync=False),
        tokens=Tokens.load(tokens),
        wal=WriteAheadLog(tmp_path / "wal", fsync=False),
        sink=Store(tmp_path / "flows.duckdb", retention_ns=None)
        if sink == "store"
        else ParquetSink(tmp_path / "out"),
        quarantine=Quarantine(tmp_path / "q", 64 << 20),
        clock=clock,
    )
    c.start(background=False)
    sent: list[pa.Table] = []  # every batch acknowledged
    seq = iter(range(10**9))
    base = parts[bad].slice(0, 5)

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=hostile(base), which=st.sampled_from(good), at=st.integers(0, 1000))
    def one(batch: pa.Table | bytes, which: str, at: int) -> None:
        i = next(seq)
        rows = parts[which]
        good_rows = rows.slice(at % rows.num_rows, 7)
        assert c.ingest("flows", token(which), ipc_bytes(good_rows), f"g{i}").status == 200
        sent.append(good_rows)
        body = batch if isinstance(batch, bytes) else ipc_bytes(batch)
        answer = c.ingest("flows", token(bad), body, f"b{i}")
        assert answer.status in (200, 400, 403), answer
        if answer.status == 200:
            assert isinstance(batch, pa.Table)
            sent.append(batch)
        clock.t += S // 2
        c.tick(clock())

    one()
    for _ in range(10):
        clock.t += S
        c.tick(clock())
    assert c.health().status == 200, c.health().body
    text = c.metrics.text().decode()
    assert "flowtrail_collector_sink_refused_batches_total 0.0" in text
    assert "flowtrail_collector_sink_backlog_rows 0.0" in text
    c.stop()
    if sink == "store":
        with Store(tmp_path / "flows.duckdb", retention_ns=None) as s:
            out = s.read()
    else:
        # File by file, key columns only: the extra columns of two files may clash in type.
        files = [p for p in (tmp_path / "out").rglob("*.parquet") if not p.name.startswith(".")]
        out = pa.concat_tables([pq.read_table(f, columns=KEYS) for f in files])
    keys = KEYS
    want = {tuple(r.values()) for t in sent for r in t.select(keys).to_pylist()}
    got = {tuple(r.values()) for r in out.select(keys).to_pylist()}
    assert want <= got  # every acknowledged row is stored (repeats of a flow once)
    assert len(sent) > 60  # the good batches, and the hostile ones the door let in
    assert "extra_column" in text and "contract" in text  # and some it refused
