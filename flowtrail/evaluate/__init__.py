"""Accuracy evaluation: attributed flows judged against ground truth, per flow and per edge.

evaluate(attributed, truth) -> EvalReport      the measurement (Arrow tables in)
format_report(report) -> str                    one report as text tables
format_side_by_side({"heartbeat": r1, "event": r2}) -> str   methods compared
"""

from typing import TYPE_CHECKING

from flowtrail.lazy import lazy_names

if TYPE_CHECKING:
    from flowtrail.evaluate.metrics import TRUE_TIME_COLUMN, evaluate
    from flowtrail.evaluate.render import format_report, format_side_by_side
    from flowtrail.evaluate.report import EdgeCounts, EvalReport, FalseEdge, FlowCounts

# Loaded on first use (polars, Arrow): `flowtrail eval --help` needs none of it.
_LAZY = {
    "TRUE_TIME_COLUMN": "flowtrail.evaluate.metrics",
    "evaluate": "flowtrail.evaluate.metrics",
    "format_report": "flowtrail.evaluate.render",
    "format_side_by_side": "flowtrail.evaluate.render",
    "EdgeCounts": "flowtrail.evaluate.report",
    "EvalReport": "flowtrail.evaluate.report",
    "FalseEdge": "flowtrail.evaluate.report",
    "FlowCounts": "flowtrail.evaluate.report",
}

__getattr__ = lazy_names(__name__, _LAZY)


__all__ = [
    "TRUE_TIME_COLUMN",
    "EdgeCounts",
    "EvalReport",
    "FalseEdge",
    "FlowCounts",
    "evaluate",
    "format_report",
    "format_side_by_side",
]
