"""Reports as aligned text tables: one method in full, or several methods side by side."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from flowtrail.evaluate.report import EdgeCounts, EvalReport, FlowCounts
from flowtrail.schema import SOURCES


def fmt_count(n: int) -> str:
    return f"{n:,}"


def fmt_pct(p: float | None) -> str:
    """Three significant digits, never rounding a non-zero rate to 0% or a partial one to 100%."""
    if p is None:
        return "-"
    if p == 0:
        return "0%"
    text = f"{p:.3g}"
    if float(text) >= 100 and p < 100:
        return ">99.9%"
    return f"{text}%"


def fmt_count_pct(n: int, p: float | None) -> str:
    return f"{fmt_count(n)} ({fmt_pct(p)})"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """First column left-aligned, the rest right-aligned, two spaces apart."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        parts += [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


_FLOW_ROWS: list[tuple[str, Callable[[FlowCounts], str]]] = [
    ("rows", lambda f: fmt_count(f.rows)),
    ("true owner known", lambda f: fmt_count(f.owned)),
    ("attributed", lambda f: fmt_count_pct(f.attributed, f.attributed_pct)),
    ("correct", lambda f: fmt_count(f.correct)),
    ("misattributed (% of rows)", lambda f: fmt_count_pct(f.misattributed, f.misattributed_pct)),
    ("unattributed (% of known)", lambda f: fmt_count_pct(f.unattributed, f.unattributed_pct)),
    ("null, nobody owned it", lambda f: fmt_count(f.unattributed_unowned)),
]

_EDGE_ROWS: list[tuple[str, Callable[[EdgeCounts], str]]] = [
    ("predicted", lambda e: fmt_count(e.predicted)),
    ("true", lambda e: fmt_count(e.true)),
    ("false (% of predicted)", lambda e: fmt_count_pct(e.false, e.false_pct)),
    ("missing (% of true)", lambda e: fmt_count_pct(e.missing, e.missing_pct)),
]


def format_report(report: EvalReport) -> str:
    """One report in full: flows and edges per remote_source, worst false edges, regions."""
    out = [*(f"note: {n}" for n in report.notes)]
    out.append(
        f"truth: {fmt_count(report.truth_rows)} interval(s) over "
        f"{fmt_count(report.truth_addresses)} address(es)"
    )
    out.append("")

    head = ["flows", "all", *SOURCES]
    flows = [report.flows, *(report.flows_by_source[s] for s in SOURCES)]
    out.append(table(head, [[label, *(f(x) for x in flows)] for label, f in _FLOW_ROWS]))
    out.append("")

    head = ["edges (caller -> callee)", "all", *SOURCES]
    edges = [report.edges, *(report.edges_by_source[s] for s in SOURCES)]
    out.append(table(head, [[label, *(f(x) for x in edges)] for label, f in _EDGE_ROWS]))
    out.append(
        f"rows without local_workload (no edge): {fmt_count(report.rows_without_local_workload)}"
    )

    if report.worst_false_edges:
        out.append("")
        rows = [
            [
                f"{e.caller} -> {e.callee}",
                fmt_count(e.rows),
                ",".join(e.sources),
                f"{e.truly_remote or '(nobody)'} ({fmt_count(e.truly_remote_rows)})",
            ]
            for e in report.worst_false_edges
        ]
        out.append(table(["worst false edges", "rows", "sources", "remote truly"], rows))

    if report.regions is not None:
        out.append("")
        rows = [
            [
                name,
                fmt_count(f.rows),
                fmt_count_pct(f.attributed, f.attributed_pct),
                fmt_count_pct(f.misattributed, f.misattributed_pct),
                fmt_count_pct(f.unattributed, f.unattributed_pct),
            ]
            for name, f in report.regions.items()
        ]
        head = ["region", "rows", "attributed", "misattributed", "unattributed"]
        out.append(table(head, rows))
    return "\n".join(out)


def _misattributed_by(source: str) -> Callable[[EvalReport], str]:
    return lambda r: fmt_count(r.flows_by_source[source].misattributed)


_SIDE_ROWS: list[tuple[str, Callable[[EvalReport], str]]] = [
    ("judged at", lambda r: r.time_column),
    ("rows", lambda r: fmt_count(r.flows.rows)),
    ("attributed %", lambda r: fmt_pct(r.flows.attributed_pct)),
    ("correct", lambda r: fmt_count(r.flows.correct)),
    (
        "misattributed flows (% of rows)",
        lambda r: fmt_count_pct(r.flows.misattributed, r.flows.misattributed_pct),
    ),
    *((f"  of which by {s} rows", _misattributed_by(s)) for s in ("heartbeat", "event")),
    (
        "unattributed flows (% of known)",
        lambda r: fmt_count_pct(r.flows.unattributed, r.flows.unattributed_pct),
    ),
    ("predicted edges", lambda r: fmt_count(r.edges.predicted)),
    ("true edges", lambda r: fmt_count(r.edges.true)),
    ("false edges (% of predicted)", lambda r: fmt_count_pct(r.edges.false, r.edges.false_pct)),
    ("missing edges (% of true)", lambda r: fmt_count_pct(r.edges.missing, r.edges.missing_pct)),
]


def format_side_by_side(reports: dict[str, EvalReport]) -> str:
    """Several methods' reports as one comparison table: one column per method."""
    names = list(reports)
    rows = [[label, *(f(reports[n]) for n in names)] for label, f in _SIDE_ROWS]
    return table(["", *names], rows)
