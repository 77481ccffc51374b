"""The batch schedule (`flowtrail attribute`) decides exactly as the streaming engine does.

Both schedules replay the same rows; the batch one (engine/batch.py, engine/sweep.py) must
give the same table, row for row and column for column (remote_workload, remote_source,
attributed_ns, unattributed_reason and every input column), and the same summary. Checked on
every simulator scenario and on seeded random inputs built to collide: few addresses and
ports (4-tuples and addresses reused), clock skew, late batches, events delayed past the
watermark, the other end's rows (some from a second exporter), failed attempts, NAT
gateways' translating rows, host-scoped addresses and address scopes (host marks, declared
networks), and short retentions that evict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowtrail.engine import replay as replay_mod
from flowtrail.engine.attributor import Settings
from flowtrail.engine.replay import ReplayResult, replay
from flowtrail.schema import FLOWS_REPEATING_TEXT
from flowtrail.sim.scenarios import SCENARIOS
from flowtrail.sim.simulation import simulate
from flowtrail.tables import write_table

S = 1_000_000_000
T0 = 1_700_000_000 * S


def both(
    flows: pa.Table, events: pa.Table | None, settings: Settings, tick_ns: int = S
) -> tuple[Any, Any, bool]:
    """(streaming result, batch result, whether the batch schedule decided it itself)."""
    stream = replay(flows, events, settings=settings, tick_ns=tick_ns, schedule="stream")
    handed: list[bool] = []
    real = replay_mod._stream

    def spy(*args: Any, **kwargs: Any) -> Any:
        handed.append(True)
        return real(*args, **kwargs)

    replay_mod._stream = spy  # type: ignore[assignment]
    try:
        batch = replay(flows, events, settings=settings, tick_ns=tick_ns, schedule="batch")
    finally:
        replay_mod._stream = real  # type: ignore[assignment]
    return stream, batch, not handed


def assert_same(stream: Any, batch: Any) -> None:
    a, b = stream.table, batch.table
    assert a.schema == b.schema
    for name in a.column_names:
        x, y = a.column(name).to_pylist(), b.column(name).to_pylist()
        diff = [i for i in range(len(x)) if x[i] != y[i]]
        assert not diff, f"{name}: rows {diff[:5]} differ: {x[diff[0]]!r} vs {y[diff[0]]!r}"
    skip = {"seconds", "cpu_seconds"}
    assert {k: v for k, v in stream.summary.items() if k not in skip} == {
        k: v for k, v in batch.summary.items() if k not in skip
    }


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_scenario_decides_identically(scenario: str) -> None:
    sim = simulate(scenario, 3, flows=5_000)
    stream, batch, own = both(sim.flows, sim.events, Settings())
    assert own
    assert_same(stream, batch)


def test_plain_heartbeat_and_no_events_decide_identically() -> None:
    sim = simulate("hostile", 4, flows=4_000)
    plain = Settings(use_peers=False, max_skew_ns=0, event_lag_ns=0)
    for settings, events in ((plain, sim.events), (Settings(), None)):
        stream, batch, own = both(sim.flows, events, settings)
        assert own
        assert_same(stream, batch)


ADDRESSES = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "127.0.0.1", "fd00::1"]
WORKLOADS = ["api", "db", "cache"]
EXPORTERS = ["h1", "h2", "h3"]
PORTS = [80, 443, 5000, 5001]


def random_input(seed: int) -> tuple[pa.Table, pa.Table, Settings, int]:
    """Flows, events, settings and tick of one random case (small universe: many clashes)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    span = int(rng.integers(60, 3000)) * S
    start = T0 + rng.integers(0, span, n)
    long = rng.random(n) < 0.1
    dur = np.where(long, rng.integers(0, 3 * span, n), rng.integers(0, 20 * S, n))
    dur[rng.random(n) < 0.1] = 0
    end = start + dur
    late = rng.random(n) < 0.15
    received = end + rng.integers(0, 90 * S, n) + np.where(late, rng.integers(0, 1500 * S, n), 0)
    local_ip = rng.choice(ADDRESSES, n)
    remote_ip = rng.choice(ADDRESSES, n)
    local_port = rng.choice(PORTS, n).astype(np.int32)
    remote_port = rng.choice(PORTS, n).astype(np.int32)
    exporter = rng.choice(EXPORTERS, n)
    workload = rng.choice([*WORKLOADS, None], n, p=[0.3, 0.3, 0.25, 0.15])
    failed = rng.random(n) < 0.1
    established = start + rng.integers(0, 3 * S, n)
    rows: dict[str, list[Any]] = {
        "flow_id": [f"f{seed}-{i}" for i in range(n)],
        "exporter": list(exporter),
        "local_ip": list(local_ip),
        "local_port": list(local_port),
        "remote_ip": list(remote_ip),
        "remote_port": list(remote_port),
        "start_ns": list(start),
        "end_ns": list(end),
        "received_ns": [None if rng.random() < 0.1 else int(r) for r in received],
        "local_workload": list(workload),
        "established_ns": [
            None if failed[i] or rng.random() < 0.2 else int(established[i]) for i in range(n)
        ],
        "outcome": [rng.choice(["refused", "timeout"]) if failed[i] else None for i in range(n)],
        "nat_remote_ip": [rng.choice(ADDRESSES) if rng.random() < 0.1 else None for _ in range(n)],
        "nat_remote_port": [
            int(rng.choice(PORTS)) if rng.random() < 0.5 else None for _ in range(n)
        ],
        "local_translating": [bool(rng.random() < 0.05) for _ in range(n)],
    }
    # The other end's rows: the 4-tuple reversed, pair times within (or just past) tolerance.
    for i in rng.choice(n, n // 2, replace=False):
        if failed[i]:
            continue
        rows["flow_id"].append(f"p{seed}-{i}")
        other = [e for e in EXPORTERS if e != exporter[i]]
        rows["exporter"].append(exporter[i] if rng.random() < 0.1 else str(rng.choice(other)))
        rows["local_ip"].append(remote_ip[i])
        rows["local_port"].append(remote_port[i])
        rows["remote_ip"].append(local_ip[i])
        rows["remote_port"].append(local_port[i])
        shift = int(rng.integers(-1500, 1500)) * 1_000_000
        rows["start_ns"].append(int(established[i]) + shift)
        rows["end_ns"].append(int(end[i]) + abs(shift))
        rows["received_ns"].append(int(received[i] + rng.integers(-30 * S, 400 * S)))
        rows["local_workload"].append(rng.choice([*WORKLOADS, None]))
        rows["established_ns"].append(None)
        rows["outcome"].append(None)
        rows["nat_remote_ip"].append(None)
        rows["nat_remote_port"].append(None)
        rows["local_translating"].append(False)
    for k in ("received_ns",):
        rows[k] = [None if v is None else max(int(v), T0) for v in rows[k]]
    m_rows = len(rows["flow_id"])
    rows["network"] = [str(rng.choice(["", "n1"])) if rng.random() < 0.2 else None
                       for _ in range(m_rows)]  # fmt: skip
    rows["local_scope"] = ["host" if rng.random() < 0.05 else None for _ in range(m_rows)]
    rows["remote_scope"] = ["host" if rng.random() < 0.05 else None for _ in range(m_rows)]
    flows = pa.table(
        {
            "network": pa.array(rows["network"], pa.string()),
            "local_scope": pa.array(rows["local_scope"], pa.string()),
            "remote_scope": pa.array(rows["remote_scope"], pa.string()),
            "flow_id": pa.array(rows["flow_id"], pa.string()),
            "exporter": pa.array(rows["exporter"], pa.string()),
            "local_ip": pa.array(rows["local_ip"], pa.string()),
            "local_port": pa.array(rows["local_port"], pa.int32()),
            "remote_ip": pa.array(rows["remote_ip"], pa.string()),
            "remote_port": pa.array(rows["remote_port"], pa.int32()),
            "nat_remote_ip": pa.array(rows["nat_remote_ip"], pa.string()),
            "nat_remote_port": pa.array(rows["nat_remote_port"], pa.int32()),
            "local_translating": pa.array(rows["local_translating"], pa.bool_()),
            "start_ns": pa.array(rows["start_ns"], pa.int64()),
            "end_ns": pa.array(rows["end_ns"], pa.int64()),
            "received_ns": pa.array(rows["received_ns"], pa.int64()),
            "local_workload": pa.array(rows["local_workload"], pa.string()),
            "established_ns": pa.array(rows["established_ns"], pa.int64()),
            "outcome": pa.array(rows["outcome"], pa.string()),
        }
    )
    m = int(rng.integers(0, 60))
    ev_time = T0 + rng.integers(-600 * S, span, m)
    ev_late = rng.random(m) < 0.2
    events = pa.table(
        {
            "ip": pa.array(list(rng.choice(ADDRESSES[:4], m)), pa.string()),
            "workload": pa.array(list(rng.choice(WORKLOADS, m)), pa.string()),
            "action": pa.array(list(rng.choice(["assign", "assign", "unassign"], m)), pa.string()),
            "time_ns": pa.array(ev_time, pa.int64()),
            "received_ns": pa.array(
                ev_time
                + rng.integers(0, 5 * S, m)
                + np.where(ev_late, rng.integers(0, 1800 * S, m), 0),
                pa.int64(),
            ),
        }
    )
    max_wait = int(rng.choice([0, 5, 60, 180])) * S
    settings = Settings(
        max_wait_ns=max_wait,
        max_skew_ns=int(rng.choice([0, 20, 100, 500])) * 1_000_000,
        event_lag_ns=int(rng.choice([0, 30, 300, 1200])) * S,
        retention_ns=max_wait + int(rng.choice([300, 1800, 3600, 7200])) * S,
        peer_slack_ns=int(rng.choice([0, 60, 600])) * S,
        use_peers=bool(rng.random() < 0.9),
    )
    tick = int(rng.choice([1, 1, 7, 30])) * S
    return flows, events, settings, tick


def test_random_inputs_decide_identically() -> None:
    own = 0
    cases = 60
    for seed in range(cases):
        flows, events, settings, tick = random_input(seed)
        stream, batch, by_batch = both(flows, events, settings, tick)
        own += by_batch
        try:
            assert_same(stream, batch)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}: {exc}") from None
    # Only fallbacks onto events the feed may have forgotten go to the streaming engine;
    # these cases are built to forget (short retentions, events minutes late).
    assert own >= cases // 4


def test_dictionary_encoded_input_decides_and_writes_identically(tmp_path: Path) -> None:
    """`flowtrail attribute` reads names, addresses and enums as the dictionaries Parquet
    stores them in, and writes them back as text: the file it writes holds what the
    streaming engine decides on the same rows read as plain text."""
    for seed in range(25):
        flows, events, settings, tick = random_input(seed)
        path = tmp_path / "flows.parquet"
        pq.write_table(flows, path)
        plain = pq.read_table(path)  # as read_table gives them, unvalidated (random rows)
        encoded = pq.read_table(path, read_dictionary=FLOWS_REPEATING_TEXT).unify_dictionaries()
        assert pa.types.is_dictionary(encoded.schema.field("local_ip").type)
        stream = replay(plain, events, settings=settings, tick_ns=tick, schedule="stream")
        batch = replay(encoded, events, settings=settings, tick_ns=tick, schedule="batch")
        write_table(batch.table, tmp_path / "out.parquet")
        written = ReplayResult(pq.read_table(tmp_path / "out.parquet"), batch.summary)
        try:
            assert_same(stream, written)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}: {exc}") from None
