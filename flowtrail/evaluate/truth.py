"""Ground truth as ownership intervals, and the vectorised "who owned this IP at time t" lookup.

Truth rows are `[from_ns, to_ns)` intervals (to_ns null = still owned). The lookup is an as-of
join per address: the last interval starting at or before t, kept only when t < to_ns. That is
only right when one address's intervals never overlap, so overlaps are refused, not guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from flowtrail.errors import ContractError

# Internal column names; prefixed so they cannot collide with a table's extra columns.
IP, T, OWNER = "_ev_ip", "_ev_t", "_ev_owner"


@dataclass(frozen=True)
class Truth:
    """Validated, sorted ownership intervals ready for lookups."""

    intervals: pl.DataFrame  # columns IP, "from_ns", "to_ns", "workload"; sorted by from_ns
    rows: int  # truth rows read
    addresses: int  # distinct addresses
    empty_ignored: int  # rows with to_ns == from_ns: own nothing, dropped before the join


def load_truth(truth: pa.Table, *, path: str | None = None) -> Truth:
    """Check the intervals (to_ns >= from_ns, no overlap per address) and index them."""
    df = pl.from_arrow(truth.select(["ip", "workload", "from_ns", "to_ns"]))
    assert isinstance(df, pl.DataFrame)
    df = df.rename({"ip": IP}).with_row_index("_ev_row", offset=1)

    backwards = df.filter(pl.col("to_ns") < pl.col("from_ns"))
    if backwards.height:
        first = backwards.row(0, named=True)
        raise ContractError(
            f"ownership of {first[IP]} by {first['workload']!r} ends (to_ns {first['to_ns']}) "
            f"before it starts (from_ns {first['from_ns']})",
            path=path,
            row=first["_ev_row"],
            column="to_ns",
        )

    empty = df.filter(pl.col("to_ns") == pl.col("from_ns")).height
    df = df.filter(pl.col("to_ns").is_null() | (pl.col("to_ns") > pl.col("from_ns")))
    df = df.sort([IP, "from_ns"])
    _refuse_overlaps(df, path)

    intervals = df.select([IP, "from_ns", "to_ns", "workload"]).sort("from_ns")
    return Truth(
        intervals=intervals,
        rows=truth.num_rows,
        addresses=df.get_column(IP).n_unique(),
        empty_ignored=empty,
    )


def _refuse_overlaps(df: pl.DataFrame, path: str | None) -> None:
    """`df` sorted by (ip, from_ns): an interval overlaps when its predecessor ends late."""
    prev_to = pl.col("to_ns").shift(1)
    same_ip = (pl.col(IP) == pl.col(IP).shift(1)).fill_null(False)
    overlap = same_ip & (prev_to.is_null() | (prev_to > pl.col("from_ns")))
    marked = df.with_columns(
        overlap.alias("_ev_overlap"),
        pl.col("_ev_row").shift(1).alias("_ev_prev_row"),
        pl.col("workload").shift(1).alias("_ev_prev_workload"),
        prev_to.alias("_ev_prev_to"),
        pl.col("from_ns").shift(1).alias("_ev_prev_from"),
    ).filter(pl.col("_ev_overlap"))
    if not marked.height:
        return
    r = marked.row(0, named=True)
    prev_to_text = "still owned" if r["_ev_prev_to"] is None else str(r["_ev_prev_to"])
    to_text = "still owned" if r["to_ns"] is None else str(r["to_ns"])
    raise ContractError(
        f"truth intervals overlap for ip {r[IP]}: {r['_ev_prev_workload']!r} "
        f"[{r['_ev_prev_from']}, {prev_to_text}) at row {r['_ev_prev_row']} and "
        f"{r['workload']!r} [{r['from_ns']}, {to_text}) at row {r['_ev_row']} "
        f"({marked.height} overlapping interval(s) in all); one address has one owner at a time",
        path=path,
        row=r["_ev_row"],
        column="from_ns",
    )


def with_owner(flows: pl.DataFrame, truth: Truth) -> pl.DataFrame:
    """`flows` (with columns IP and T) plus OWNER: who truly owned IP at T, null for nobody.

    Row order is not kept; every caller aggregates.
    """
    left = flows.sort(T)
    joined = left.join_asof(
        truth.intervals,
        left_on=T,
        right_on="from_ns",
        by=IP,
        strategy="backward",
        # Both sides are sorted by their time key globally, hence within every address too.
        check_sortedness=False,
    )
    inside = pl.col("to_ns").is_null() | (pl.col(T) < pl.col("to_ns"))
    owner = pl.when(pl.col("from_ns").is_not_null() & inside).then(pl.col("workload"))
    return joined.with_columns(owner.otherwise(None).alias(OWNER)).drop(
        ["from_ns", "to_ns", "workload"]
    )
