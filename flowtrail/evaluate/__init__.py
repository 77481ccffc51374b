"""Accuracy evaluation: attributed flows judged against ground truth, per flow and per edge.

evaluate(attributed, truth) -> EvalReport      the measurement (Arrow tables in)
format_report(report) -> str                    one report as text tables
format_side_by_side({"heartbeat": r1, "event": r2}) -> str   methods compared
"""

from flowtrail.evaluate.metrics import TRUE_TIME_COLUMN, evaluate
from flowtrail.evaluate.render import format_report, format_side_by_side
from flowtrail.evaluate.report import EdgeCounts, EvalReport, FalseEdge, FlowCounts

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
