"""The promise: a non-null remote_workload is right — over random, hostile timelines.

Each example builds addresses that change hands (sometimes at the very same instant), hosts
whose clocks are off by up to max_skew, connections at any moment of an owner's tenure
(right up to the handover), the server's own row of a connection present or lost, rows and
events arriving late and out of order. Then it replays and checks every attribution against
the truth at the connection's true start, and that a connection seen from both ends is named.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from flowtrail.engine.attributor import Settings
from flowtrail.engine.replay import replay

S = 1_000_000_000
MS = 1_000_000


def timeline(seed: int, max_skew_ms: int, peer_share: float, event_delay_s: int):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    n_ips = int(rng.integers(1, 5))
    workloads = [f"w{i}" for i in range(int(rng.integers(2, 5)))]
    max_skew = max_skew_ms * MS
    client_ip, client_skew = "10.9.0.1", int(rng.integers(-max_skew, max_skew + 1))
    rows: list[dict[str, object]] = []
    truth: list[tuple[str, str, int, int]] = []
    events: list[dict[str, object]] = []
    port = 20000
    for i in range(n_ips):
        ip = f"10.0.0.{i + 1}"
        t = int(rng.integers(0, 5 * S))
        for _ in range(int(rng.integers(1, 6))):
            owner = workloads[int(rng.integers(len(workloads)))]
            length = int(rng.integers(S // 2, 20 * S))
            a, b = t, t + length
            truth.append((ip, owner, a, b))
            skew = int(rng.integers(-max_skew, max_skew + 1))
            for action, when in (("assign", a), ("unassign", b)):
                delay = int(rng.integers(0, event_delay_s * S + 1))
                events.append({"ip": ip, "workload": owner, "action": action, "time_ns": when,
                               "received_ns": when + delay})  # fmt: skip
            # Connections into this tenure, anywhere in it, including its very edges.
            n_conn = int(rng.integers(1, 25))
            starts = rng.integers(a, b, n_conn)
            starts[: min(2, n_conn)] = [a, b - 1][: min(2, n_conn)]
            for true_start in starts.tolist():
                dur = int(min(rng.integers(MS, 3 * S), b - true_start))
                port += 1
                late = int(rng.integers(0, 300 * S)) if rng.random() < 0.2 else 0
                rows.append(dict(
                    local_ip=client_ip, local_port=port, remote_ip=ip, remote_port=80,
                    direction="outbound", start_ns=true_start + client_skew,
                    end_ns=true_start + dur + client_skew, local_workload="client",
                    received_ns=true_start + dur + int(rng.integers(S, 70 * S)) + late,
                    true_start=true_start, true_owner=owner,
                ))  # fmt: skip
                if rng.random() < peer_share:
                    rows.append(dict(
                        local_ip=ip, local_port=80, remote_ip=client_ip, remote_port=port,
                        direction="inbound", start_ns=true_start + skew,
                        end_ns=true_start + dur + skew, local_workload=owner,
                        received_ns=true_start + dur + int(rng.integers(S, 70 * S)) + late,
                        true_start=true_start, true_owner="client",
                    ))  # fmt: skip
            t = b + int(rng.choice([0, 0, int(rng.integers(1, 2 * S))]))
    truth.append((client_ip, "client", 0, 10**15))
    n = len(rows)
    flows = pa.table({
        "flow_id": [f"f{i}" for i in range(n)], "exporter": ["h"] * n,
        **{k: [r[k] for r in rows] for k in (
            "local_ip", "remote_ip", "direction", "start_ns", "end_ns", "local_workload",
            "received_ns")},
        "local_port": pa.array([r["local_port"] for r in rows], pa.int32()),
        "remote_port": pa.array([r["remote_port"] for r in rows], pa.int32()),
        "state": ["closed"] * n, "bytes_sent": [0] * n, "bytes_received": [0] * n,
    })  # fmt: skip
    expect = [(r["true_start"], r["true_owner"]) for r in rows]
    return flows, pa.Table.from_pylist(events), truth, expect


def owner_at(truth: list[tuple[str, str, int, int]], ip: str, t: int) -> str | None:
    for tip, owner, a, b in truth:
        if tip == ip and a <= t < b:
            return owner
    return None


@given(
    seed=st.integers(0, 2**32 - 1),
    max_skew_ms=st.sampled_from([0, 20, 100]),
    peer_share=st.sampled_from([0.0, 0.5, 1.0]),
    use_events=st.booleans(),
    # Short retentions make the engine forget ranges and events while rows (up to 370 s
    # late) and events (up to 120 s late) still arrive: forgetting must not mislead.
    retention_s=st.sampled_from([3600, 60, 15]),
)
@settings(max_examples=60, deadline=None)
def test_heartbeat_method_never_misattributes(
    seed: int, max_skew_ms: int, peer_share: float, use_events: bool, retention_s: int
) -> None:
    lag_s = 120
    flows, events, truth, _ = timeline(seed, max_skew_ms, peer_share, event_delay_s=lag_s)
    result = replay(
        flows, events if use_events else None,
        settings=Settings(
            max_skew_ns=max_skew_ms * MS, event_lag_ns=lag_s * S, retention_ns=retention_s * S
        ),
    ).table  # fmt: skip
    # Rows by flow_id, not by position: the judgement must not lean on the replay's order.
    by_id = dict(
        zip(
            result.column("flow_id").to_pylist(),
            result.column("remote_workload").to_pylist(),
            strict=True,
        )
    )
    ids = flows.column("flow_id").to_pylist()
    assert len(by_id) == result.num_rows == flows.num_rows
    got = [by_id[i] for i in ids]
    ips = flows.column("remote_ip").to_pylist()
    _, _, _, expect = timeline(seed, max_skew_ms, peer_share, event_delay_s=lag_s)
    for i, (true_start, generated_owner) in enumerate(expect):
        # Judged at the connection's true start (the rows carry the skewed one).
        owner = owner_at(truth, ips[i], true_start)
        assert owner == generated_owner  # the generator's own consistency
        if got[i] is not None:
            assert got[i] == owner, (ids[i], ips[i], true_start, got[i], owner)
    # Coverage too (an all-null answer is never wrong): a connection whose both ends were
    # captured names both ends, whatever the skew, lateness or forgetting.
    paired = peer_rows(flows)
    unnamed = [ids[i] for i in paired if got[i] is None]
    assert not unnamed, f"{len(unnamed)} of {len(paired)} rows with both ends seen left unnamed"
    if peer_share == 1.0:
        assert len(paired) == flows.num_rows  # every row has its peer: all must be named


def peer_rows(flows: pa.Table) -> list[int]:
    """Positions of rows whose connection's other end is a row too (the generator appends a
    server's row right after its client's)."""
    direction = flows.column("direction").to_pylist()
    local_port = flows.column("local_port").to_pylist()
    remote_port = flows.column("remote_port").to_pylist()
    out: list[int] = []
    for i in range(flows.num_rows - 1):
        pair = (direction[i], direction[i + 1]) == ("outbound", "inbound")
        if pair and remote_port[i + 1] == local_port[i]:
            out += [i, i + 1]
    return out
