"""Properties of evaluate() on random fleets, checked against a brute-force Python oracle.

The oracle walks rows and intervals one by one (slow and obvious); evaluate() must agree with
it exactly on every flow and edge count. No fakes: real tables, the real evaluate().
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowtrail.evaluate import EvalReport, evaluate
from flowtrail.schema import ATTRIBUTED, SOURCES

IPS = ["10.0.0.1", "10.0.0.2", "2001:db8::1", "2001:db8::a:2", "192.168.7.9"]
UNOWNED_IP = "10.250.0.1"  # never in truth
WORKLOADS = ["a", "b", "c", "d"]
HORIZON = 1_000


@dataclass(frozen=True)
class Interval:
    ip: str
    workload: str
    start: int
    end: int | None  # None: still owned


@dataclass(frozen=True)
class Row:
    remote_ip: str
    nat_remote_ip: str | None
    direction: str
    start: int
    local: str | None


@st.composite
def intervals(draw: st.DrawFn) -> list[Interval]:
    """Per address, a run of non-overlapping, non-empty intervals with gaps; maybe an open end."""
    out = []
    for ip in IPS:
        cursor = draw(st.integers(0, 100))
        for i in range(draw(st.integers(0, 4))):
            start = cursor + draw(st.integers(0, 50))
            last = i == 3
            if last and draw(st.booleans()):
                out.append(Interval(ip, draw(st.sampled_from(WORKLOADS)), start, None))
                break
            end = start + draw(st.integers(1, 300))
            out.append(Interval(ip, draw(st.sampled_from(WORKLOADS)), start, end))
            cursor = end
    return out


rows_strategy = st.lists(
    st.builds(
        Row,
        remote_ip=st.sampled_from([*IPS, UNOWNED_IP]),
        nat_remote_ip=st.one_of(st.none(), st.sampled_from([*IPS, UNOWNED_IP])),
        direction=st.sampled_from(["outbound", "inbound"]),
        start=st.integers(0, HORIZON),
        local=st.one_of(st.none(), st.sampled_from(WORKLOADS)),
    ),
    min_size=0,
    max_size=40,
)
guess = st.one_of(st.none(), st.sampled_from(WORKLOADS))


def owner(truth: list[Interval], ip: str, t: int) -> str | None:
    hits = [
        i.workload for i in truth if i.ip == ip and i.start <= t and (i.end is None or t < i.end)
    ]
    assert len(hits) <= 1, "the strategy must not draw overlapping intervals"
    return hits[0] if hits else None


def true_owner(truth: list[Interval], row: Row) -> str | None:
    return owner(truth, row.nat_remote_ip or row.remote_ip, row.start)


def source_of(workload: str | None, pick: int) -> str:
    return "unattributed" if workload is None else ("heartbeat", "event")[pick % 2]


def tables(
    truth: list[Interval], rows: list[Row], predicted: list[str | None]
) -> tuple[pa.Table, pa.Table]:
    n = len(rows)
    data: dict[str, list[Any]] = {
        "flow_id": [f"f{i}" for i in range(n)],
        "exporter": ["h"] * n,
        "local_ip": ["10.1.0.1"] * n,
        "local_port": [40000] * n,
        "remote_ip": [r.remote_ip for r in rows],
        "remote_port": [80] * n,
        "nat_remote_ip": [r.nat_remote_ip for r in rows],
        "direction": [r.direction for r in rows],
        "start_ns": [r.start for r in rows],
        "end_ns": [r.start + 1 for r in rows],
        "state": ["closed"] * n,
        "bytes_sent": [0] * n,
        "bytes_received": [0] * n,
        "local_workload": [r.local for r in rows],
        "remote_workload": predicted,
        "remote_source": [source_of(p, i) for i, p in enumerate(predicted)],
        "attributed_ns": [r.start + 2 for r in rows],
    }
    flows = pa.table({k: pa.array(v, ATTRIBUTED.column(k).type) for k, v in data.items()})
    truth_table = pa.table(
        {
            "ip": pa.array([i.ip for i in truth], pa.string()),
            "workload": pa.array([i.workload for i in truth], pa.string()),
            "from_ns": pa.array([i.start for i in truth], pa.int64()),
            "to_ns": pa.array([i.end for i in truth], pa.int64()),
        }
    )
    return flows, truth_table


def edge(row: Row, remote: str | None) -> tuple[str, str] | None:
    if row.local is None or remote is None:
        return None
    return (row.local, remote) if row.direction == "outbound" else (remote, row.local)


def oracle(truth: list[Interval], rows: list[Row], predicted: list[str | None]) -> dict[str, Any]:
    """Every count evaluate() reports, the slow and obvious way."""
    counts = dict.fromkeys(("correct", "misattributed", "unattributed", "unowned"), 0)
    pred_edges: dict[str, set[tuple[str, str]]] = {s: set() for s in SOURCES}
    true_edges: dict[str, set[tuple[str, str]]] = {s: set() for s in SOURCES}
    for i, (row, guessed) in enumerate(zip(rows, predicted, strict=True)):
        real = true_owner(truth, row)
        if guessed is None:
            counts["unattributed" if real is not None else "unowned"] += 1
        else:
            counts["correct" if guessed == real else "misattributed"] += 1
        source = source_of(guessed, i)
        if (p := edge(row, guessed)) is not None:
            pred_edges[source].add(p)
        if (t := edge(row, real)) is not None:
            true_edges[source].add(t)
    all_pred = set().union(*pred_edges.values())
    all_true = set().union(*true_edges.values())
    return {
        **counts,
        "edges": (len(all_pred), len(all_true), len(all_pred - all_true), len(all_true - all_pred)),
        "by_source": {
            s: (
                len(pred_edges[s]),
                len(true_edges[s]),
                len(pred_edges[s] - all_true),
                len(true_edges[s] - all_pred),
            )
            for s in SOURCES
        },
        "false_edges": all_pred - all_true,
    }


def measured(report: EvalReport) -> dict[str, Any]:
    f, e = report.flows, report.edges
    return {
        "correct": f.correct,
        "misattributed": f.misattributed,
        "unattributed": f.unattributed,
        "unowned": f.unattributed_unowned,
        "edges": (e.predicted, e.true, e.false, e.missing),
        "by_source": {
            s: (c.predicted, c.true, c.false, c.missing) for s, c in report.edges_by_source.items()
        },
    }


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(truth=intervals(), rows=rows_strategy, data=st.data())
def test_counts_match_a_brute_force_oracle(
    truth: list[Interval], rows: list[Row], data: st.DataObject
) -> None:
    predicted = data.draw(st.lists(guess, min_size=len(rows), max_size=len(rows)))
    report = evaluate(*tables(truth, rows, predicted), worst=100)
    expected = oracle(truth, rows, predicted)
    assert measured(report) == {k: v for k, v in expected.items() if k != "false_edges"}
    listed = {(w.caller, w.callee) for w in report.worst_false_edges}
    assert listed == expected["false_edges"]


@SETTINGS
@given(truth=intervals(), rows=rows_strategy)
def test_attributing_every_row_with_its_true_owner_is_perfect(
    truth: list[Interval], rows: list[Row]
) -> None:
    perfect = [true_owner(truth, r) for r in rows]
    report = evaluate(*tables(truth, rows, perfect))
    assert report.flows.misattributed == 0
    assert report.flows.unattributed == 0
    assert report.flows.correct == sum(p is not None for p in perfect)
    assert (report.edges.false, report.edges.missing) == (0, 0)
    assert report.edges.predicted == report.edges.true


@SETTINGS
@given(truth=intervals(), rows=rows_strategy, data=st.data())
def test_nulling_rows_never_creates_misattribution_or_false_edges(
    truth: list[Interval], rows: list[Row], data: st.DataObject
) -> None:
    predicted = data.draw(st.lists(guess, min_size=len(rows), max_size=len(rows)))
    drop = data.draw(st.lists(st.booleans(), min_size=len(rows), max_size=len(rows)))
    nulled = [None if d else p for p, d in zip(predicted, drop, strict=True)]
    before = evaluate(*tables(truth, rows, predicted), worst=100)
    after = evaluate(*tables(truth, rows, nulled), worst=100)
    assert after.flows.misattributed <= before.flows.misattributed
    assert after.edges.false <= before.edges.false
    false_before = {(w.caller, w.callee) for w in before.worst_false_edges}
    false_after = {(w.caller, w.callee) for w in after.worst_false_edges}
    assert false_after <= false_before
    assert after.flows.rows == before.flows.rows
