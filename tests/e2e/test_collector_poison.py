"""A batch no sink can hold must not stop storage: a real collector process over TLS.

An extra column the store cannot take (its name or its type) is refused at the door with
400 naming the column; a batch acknowledged by an older, looser door and still in the
write-ahead log is put aside on replay. Either way the other exporters' rows are stored
and /healthz stays 200.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from flowtrail.collector.client import CollectorExporter, ipc_bytes
from flowtrail.collector.server import BATCH_HEADER
from flowtrail.collector.wal import WriteAheadLog
from flowtrail.lab.wait import until
from tests.e2e.test_collector_e2e import Proc, parts, sim_flows, stored_rows, token


def post(proc: Proc, exporter: str, table: pa.Table, batch_id: str) -> tuple[int, dict[str, str]]:
    ctx = ssl.create_default_context(cafile=proc.cafile)
    conn = http.client.HTTPSConnection("127.0.0.1", proc.port, context=ctx, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {token(exporter)}", BATCH_HEADER: batch_id}
        conn.request("POST", "/v1/flows", body=ipc_bytes(table), headers=headers)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.append_column(pa.field(name, values.type), values)


def poisons(n: int) -> dict[str, tuple[str, pa.Array]]:
    """Extra columns the store or the Parquet sink cannot hold, each as (name, values)."""
    text = pa.array(["x"] * n)
    return {
        "named extra": ("extra", text),
        "named row_key": ("row_key", text),
        "no name": ("", text),
        "float16": ("x", pa.array(np.ones(n, np.float16))),
        "union": ("x", pa.UnionArray.from_sparse(pa.array([0] * n, pa.int8()), [text])),
        "output column": ("attributed_ns", pa.array([1] * n, pa.int64())),
        "another case of a column": ("Exporter", text),
        "list": ("x", pa.array([[1]] * n)),
        "dictionary of float16": (
            "x",
            pa.DictionaryArray.from_arrays(
                pa.array([0] * n, pa.int32()), pa.array(np.ones(1, np.float16))
            ),
        ),
    }


@pytest.mark.parametrize("sink", ["store", "parquet"])
def test_an_unstorable_extra_column_is_refused_and_stops_nothing(
    tmp_path: Path, procs: list[Proc], sink: str
) -> None:
    by = parts(sim_flows(3000, seed=5))
    good, bad = list(by)[:2]
    proc = Proc(tmp_path, [good, bad], "--sink", sink)
    procs.append(proc)

    sent = 0
    half = by[good].num_rows // 2
    CollectorExporter(proc.url, token(good), proc.cafile).export(by[good].slice(0, half), "g-1")
    sent += half
    for i, (what, (name, values)) in enumerate(poisons(by[bad].num_rows).items()):
        status, answer = post(proc, bad, with_column(by[bad], name, values), f"b-{i}")
        assert status == 400, (what, answer)
        assert answer["reason"] == "extra_column", (what, answer)
        assert f"column {name!r}" in answer["error"], (what, answer)
    # A plain extra column is the contract's: stored, passed through.
    status, answer = post(
        proc, bad, with_column(by[bad], "rack", pa.array(["r1"] * by[bad].num_rows)), "b-ok"
    )
    assert status == 200, answer
    sent += by[bad].num_rows
    CollectorExporter(proc.url, token(good), proc.cafile).export(by[good].slice(half), "g-2")
    sent += by[good].num_rows - half

    proc.wait_idle()
    status, body = proc.get("/healthz")
    assert status == 200, body
    text = proc.get("/metrics")[1].decode()
    assert f"flowtrail_collector_rows_stored_total {sent}.0" in text
    n = len(poisons(1))
    assert f'flowtrail_collector_refused_batches_total{{reason="extra_column"}} {n}.0' in text
    assert proc.stop() == 0
    out = stored_rows(tmp_path, sink)
    assert out.num_rows == sent
    assert len(list((tmp_path / "data" / "quarantine").glob("*.json"))) == n


def test_a_logged_batch_no_sink_can_hold_is_put_aside_on_replay(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """What an older door acknowledged is in the log: the restart must not die on it."""
    by = parts(sim_flows(2000, seed=9))
    good, bad = list(by)[:2]
    poison = with_column(by[bad], "x", pa.array(np.ones(by[bad].num_rows, np.float16)))
    # The log as an older collector left it: the poison batch acknowledged and logged (the
    # same framing as the collector's own; written here because today's door refuses it).
    wal = WriteAheadLog(tmp_path / "data" / "wal")
    now = time.time_ns()
    wal.open(now, 0)
    header = {"kind": "flows", "exporter": bad, "batch": "old-1", "recv": now, "row": 0}
    done = wal.append(header, ipc_bytes(poison), poison.num_rows, now)
    wal.sync(done.position)
    wal.close()

    proc = Proc(tmp_path, [good, bad], "--sink", "store")
    procs.append(proc)
    CollectorExporter(proc.url, token(good), proc.cafile).export(by[good], "g-1")
    proc.wait_idle()
    assert proc.get("/healthz")[0] == 200
    text = proc.get("/metrics")[1].decode()
    assert f"flowtrail_collector_rows_stored_total {by[good].num_rows}.0" in text
    reason = 'reason="extra_column"'
    assert f"flowtrail_collector_log_refused_batches_total{{{reason}}} 1.0" in text
    assert f"flowtrail_collector_log_refused_rows_total{{{reason}}} {poison.num_rows}.0" in text
    assert proc.stop() == 0

    # Again after a restart: still put aside once, never fed to the sink.
    proc2 = Proc(tmp_path, [good, bad], "--sink", "store")
    procs.append(proc2)
    until(lambda: proc2.get("/healthz")[0], lambda s: s == 200, 30, 0.2)
    assert proc2.stop() == 0
    out = stored_rows(tmp_path, "store")
    assert out.num_rows == by[good].num_rows
    notes = list((tmp_path / "data" / "quarantine").glob("*.json"))
    assert len(notes) == 1
    assert json.loads(notes[0].read_text())["reason"] == "extra_column"
