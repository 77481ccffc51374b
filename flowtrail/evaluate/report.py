"""The evaluation report: plain counts, with percentages derived from them, JSON-ready."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def pct(part: int, whole: int) -> float | None:
    """part as a percentage of whole; None when whole is 0 (no meaningful rate)."""
    return None if whole == 0 else 100.0 * part / whole


@dataclass(frozen=True)
class FlowCounts:
    """Rows split four ways: correct + misattributed + unattributed + unattributed_unowned."""

    rows: int = 0
    owned: int = 0  # rows whose remote address had a true owner at the judged time
    attributed: int = 0  # remote_workload not null
    correct: int = 0  # remote_workload equals the true owner
    misattributed: int = 0  # remote_workload not null and not the true owner (or no owner)
    unattributed: int = 0  # remote_workload null although the address had an owner
    unattributed_unowned: int = 0  # remote_workload null and nobody owned it: null was right

    @property
    def attributed_pct(self) -> float | None:
        return pct(self.attributed, self.rows)

    @property
    def misattributed_pct(self) -> float | None:
        """Share of all rows (not of attributed rows), so methods compare on one denominator."""
        return pct(self.misattributed, self.rows)

    @property
    def unattributed_pct(self) -> float | None:
        """Share of the rows that could have been attributed (their address had an owner)."""
        return pct(self.unattributed, self.owned)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "owned": self.owned,
            "attributed": self.attributed,
            "correct": self.correct,
            "misattributed": self.misattributed,
            "unattributed": self.unattributed,
            "unattributed_unowned": self.unattributed_unowned,
            "attributed_pct": self.attributed_pct,
            "misattributed_pct": self.misattributed_pct,
            "unattributed_pct": self.unattributed_pct,
        }


@dataclass(frozen=True)
class EdgeCounts:
    """Distinct caller→callee workload edges, predicted (from remote_workload) vs true."""

    predicted: int = 0
    true: int = 0
    false: int = 0  # predicted, not true
    missing: int = 0  # true, never predicted (by any row of any source)

    @property
    def false_pct(self) -> float | None:
        return pct(self.false, self.predicted)

    @property
    def missing_pct(self) -> float | None:
        return pct(self.missing, self.true)

    def to_dict(self) -> dict[str, Any]:
        return {
            "predicted": self.predicted,
            "true": self.true,
            "false": self.false,
            "missing": self.missing,
            "false_pct": self.false_pct,
            "missing_pct": self.missing_pct,
        }


@dataclass(frozen=True)
class FalseEdge:
    """One predicted edge that never happened, with the rows that claimed it."""

    caller: str
    callee: str
    rows: int
    sources: tuple[str, ...]
    truly_remote: str | None  # the most common true owner of those rows' remote address
    truly_remote_rows: int  # how many of the rows had that true owner

    def to_dict(self) -> dict[str, Any]:
        return {
            "caller": self.caller,
            "callee": self.callee,
            "rows": self.rows,
            "sources": list(self.sources),
            "truly_remote": self.truly_remote,
            "truly_remote_rows": self.truly_remote_rows,
        }


@dataclass(frozen=True)
class EvalReport:
    """Everything `flowtrail eval` measures about one attributed-flows table."""

    time_column: str  # "start_ns" or "sim_true_start_ns": the time each row was judged at
    time_fallback_rows: int  # rows with a null sim_true_start_ns, judged at start_ns instead
    truth_rows: int
    truth_addresses: int
    truth_empty_ignored: int
    flows: FlowCounts
    flows_by_source: dict[str, FlowCounts]
    edges: EdgeCounts
    edges_by_source: dict[str, EdgeCounts]
    rows_without_local_workload: int  # give no edge, predicted or true
    source_mismatch_rows: int  # remote_source disagrees with remote_workload's nullness
    worst_false_edges: tuple[FalseEdge, ...] = ()
    regions: dict[str, FlowCounts] | None = None  # None when the table has no region column
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "time_column": self.time_column,
            "time_fallback_rows": self.time_fallback_rows,
            "truth": {
                "rows": self.truth_rows,
                "addresses": self.truth_addresses,
                "empty_intervals_ignored": self.truth_empty_ignored,
            },
            "flows": self.flows.to_dict(),
            "flows_by_source": {k: v.to_dict() for k, v in self.flows_by_source.items()},
            "edges": self.edges.to_dict(),
            "edges_by_source": {k: v.to_dict() for k, v in self.edges_by_source.items()},
            "rows_without_local_workload": self.rows_without_local_workload,
            "source_mismatch_rows": self.source_mismatch_rows,
            "worst_false_edges": [e.to_dict() for e in self.worst_false_edges],
            "regions": (
                None if self.regions is None else {k: v.to_dict() for k, v in self.regions.items()}
            ),
            "notes": list(self.notes),
        }
