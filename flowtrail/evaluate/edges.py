"""Workload dependency edges (caller → callee), predicted vs true, overall and per remote_source.

An outbound row means its local workload called the remote one; an inbound row, the reverse.
The predicted edge uses remote_workload, the true edge the truth's owner of the same address at
the same time; rows with no local_workload give neither.

Workload names are encoded once into integer codes and each edge becomes one 64-bit key
(caller code << 32 | callee code), so the distinct-edge sets and anti-joins over millions of rows
hash integers rather than pairs of strings.
"""

from __future__ import annotations

import polars as pl

from flowtrail.evaluate.frame import DIR, LOCAL, PRED, SRC
from flowtrail.evaluate.report import EdgeCounts, FalseEdge
from flowtrail.evaluate.truth import OWNER
from flowtrail.schema import SOURCES

EDGE, CODE = "_ev_edge", "_ev_code"
_SHIFT = 1 << 32
_SOURCE_ENUM = pl.Enum(SOURCES)


def edge_counts(
    frame: pl.DataFrame, worst: int
) -> tuple[EdgeCounts, dict[str, EdgeCounts], tuple[FalseEdge, ...]]:
    """Overall and per-source edge counts, plus the `worst` false edges by row count."""
    names, coded = _encode(frame)
    has_local = pl.col(LOCAL).is_not_null()
    pred_rows = coded.filter(has_local & pl.col(PRED).is_not_null()).select(
        SRC, OWNER, _edge_key(PRED)
    )
    true_rows = coded.filter(has_local & pl.col(OWNER).is_not_null()).select(SRC, _edge_key(OWNER))
    # One row per distinct edge: which sources' rows predicted it / carried it in truth.
    # An edge absent on one side has nulls there after the full join.
    predicted = pred_rows.group_by(EDGE).agg(pl.len().alias("rows"), *_source_flags("p"))
    true = true_rows.group_by(EDGE).agg(*_source_flags("t"))
    edges = predicted.join(true, on=EDGE, how="full", coalesce=True)

    is_pred, is_true = pl.col("rows").is_not_null(), pl.col("t_any").is_not_null()
    sums = [
        is_pred.sum().alias("predicted"),
        is_true.sum().alias("true"),
        (is_pred & ~is_true).sum().alias("false"),
        (is_true & ~is_pred).sum().alias("missing"),
    ]
    # Per source: an edge belongs to every source whose rows produced it (predicted) or
    # carried it in truth (true). It is false for a source whose rows claimed it and it never
    # happened, and missing for a source whose rows carried it and no row of any source
    # predicted it.
    for s in SOURCES:
        by_p, by_t = pl.col(f"p_{s}").fill_null(False), pl.col(f"t_{s}").fill_null(False)
        sums += [
            by_p.sum().alias(f"predicted_{s}"),
            by_t.sum().alias(f"true_{s}"),
            (by_p & ~is_true).sum().alias(f"false_{s}"),
            (by_t & ~is_pred).sum().alias(f"missing_{s}"),
        ]
    totals = {k: int(v) for k, v in edges.select(sums).row(0, named=True).items()}
    fields = ("predicted", "true", "false", "missing")
    overall = EdgeCounts(*(totals[f] for f in fields))
    by_source = {s: EdgeCounts(*(totals[f"{f}_{s}"] for f in fields)) for s in SOURCES}

    false_edges = edges.filter(is_pred & ~is_true)
    return overall, by_source, _worst_false_edges(pred_rows, false_edges, names, worst)


def _source_flags(prefix: str) -> list[pl.Expr]:
    """Per source: did any of the edge's rows come from it; plus `<prefix>_any` (always true)."""
    flags = [(pl.col(SRC) == i).any().alias(f"{prefix}_{s}") for i, s in enumerate(SOURCES)]
    return [*flags, pl.lit(True).alias(f"{prefix}_any")]


def _encode(frame: pl.DataFrame) -> tuple[list[str], pl.DataFrame]:
    """Workload names → dense u64 codes (one vocabulary for all three columns); source → code."""
    columns = (LOCAL, PRED, OWNER)
    vocab = pl.concat([frame.get_column(c).drop_nulls().unique() for c in columns]).unique().sort()
    names = pl.Enum(vocab)
    coded = frame.select(
        pl.col(DIR) == "outbound",
        pl.col(SRC).cast(_SOURCE_ENUM).to_physical(),
        *(pl.col(c).cast(names).to_physical().cast(pl.UInt64) for c in columns),
    )
    return vocab.to_list(), coded


def _edge_key(remote: str) -> pl.Expr:
    """caller << 32 | callee: outbound rows call the remote side, inbound rows are called by it."""
    local, other = pl.col(LOCAL), pl.col(remote)
    return (
        pl.when(pl.col(DIR))
        .then(local * _SHIFT + other)
        .otherwise(other * _SHIFT + local)
        .alias(EDGE)
    )


def _worst_false_edges(
    pred_rows: pl.DataFrame, false_edges: pl.DataFrame, names: list[str], worst: int
) -> tuple[FalseEdge, ...]:
    if worst <= 0 or not false_edges.height:
        return ()
    top = false_edges.sort(["rows", EDGE], descending=[True, False]).head(worst)
    bad_rows = pred_rows.join(top.select(EDGE), on=EDGE, how="semi")
    sources = bad_rows.group_by(EDGE).agg(pl.col(SRC).unique().sort())
    # What the remote address really was for those rows: the commonest true owner first.
    truly = (
        bad_rows.group_by(EDGE, OWNER)
        .len()
        .sort(["len", OWNER], descending=[True, False], nulls_last=True)
        .unique(subset=EDGE, keep="first", maintain_order=True)
    )
    sources_of = {int(k): v for k, v in sources.iter_rows()}
    owner_of = {int(r[EDGE]): (r[OWNER], int(r["len"])) for r in truly.iter_rows(named=True)}
    edges = []
    for r in top.iter_rows(named=True):
        key = int(r[EDGE])
        owner, owner_rows = owner_of[key]
        edges.append(
            FalseEdge(
                caller=names[key // _SHIFT],
                callee=names[key % _SHIFT],
                rows=int(r["rows"]),
                sources=tuple(SOURCES[s] for s in sources_of[key]),
                truly_remote=None if owner is None else names[owner],
                truly_remote_rows=owner_rows,
            )
        )
    return tuple(edges)
