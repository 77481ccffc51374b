"""Ground truth as ownership intervals, and the vectorised "who owned this IP at time t" lookup.

Truth rows are `[from_ns, to_ns)` intervals (to_ns null = still owned). The lookup is an as-of
join per key: the last interval starting at or before t, kept only when t < to_ns. That is
only right when one key's intervals never overlap, so overlaps are refused, not guessed at.

A key is the address, narrowed where the truth says so (contract version 5): `exporter` (an
address on a host-local network, owned on that exporter only: two hosts' container bridges)
and `port` (one connection's remote port on an address several workloads' connections share:
a NAT gateway's, whose translated ports belong to the clients behind it). A row is judged by
the narrowest interval covering it: (address, exporter, port), then (address, exporter), then
(address, port), then the address alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from flowtrail.errors import ContractError

# Internal column names; prefixed so they cannot collide with a table's extra columns.
IP, T, OWNER = "_ev_ip", "_ev_t", "_ev_owner"
EXPORTER, PORT = "_ev_exporter", "_ev_port"  # the row's exporter and (NAT-resolved) remote port
KEY, LEVEL = "_ev_key", "_ev_level"

# Narrowest first: (by exporter, by port) per level of key.
LEVELS = ((True, True), (True, False), (False, True), (False, False))


@dataclass(frozen=True)
class Truth:
    """Validated, sorted ownership intervals ready for lookups."""

    intervals: pl.DataFrame  # columns LEVEL, KEY, "from_ns", "to_ns", "workload"; by from_ns
    rows: int  # truth rows read
    addresses: int  # distinct addresses
    empty_ignored: int  # rows with to_ns == from_ns: own nothing, dropped before the join

    @property
    def levels(self) -> list[int]:
        """The key levels (indices into LEVELS) some interval is at, narrowest first."""
        return sorted(self.intervals.get_column(LEVEL).unique().to_list())

    @property
    def narrowed(self) -> bool:
        """Has any interval an exporter or a port (so rows need theirs to be judged)?"""
        return any(level != len(LEVELS) - 1 for level in self.levels)


def _key(ip: pl.Expr, exporter: pl.Expr | None, port: pl.Expr | None) -> pl.Expr:
    """One text key per (address, exporter, port); a part not keyed by is empty (intervals
    of each level are looked up apart, so only keys of one level ever meet)."""
    parts = [ip, pl.lit("\x1f")]
    parts.append(pl.lit("") if exporter is None else exporter.fill_null(""))
    parts.append(pl.lit("\x1f"))
    parts.append(pl.lit("") if port is None else port.cast(pl.String).fill_null(""))
    return pl.concat_str(parts)


def load_truth(truth: pa.Table, *, path: str | None = None) -> Truth:
    """Check the intervals (to_ns >= from_ns, no overlap per address) and index them."""
    names = ["ip", "workload", "from_ns", "to_ns"]
    names += [c for c in ("exporter", "port") if c in truth.column_names]
    df = pl.from_arrow(truth.select(names))
    assert isinstance(df, pl.DataFrame)
    for c in ("exporter", "port"):
        if c not in df.columns:
            df = df.with_columns(pl.lit(None, pl.String if c == "exporter" else pl.Int32).alias(c))
    df = df.rename({"ip": IP}).with_row_index("_ev_row", offset=1)
    has_exp, has_port = pl.col("exporter").is_not_null(), pl.col("port").is_not_null()
    level = pl.lit(0)
    for i, (by_exp, by_port) in enumerate(LEVELS):
        level = pl.when((has_exp == by_exp) & (has_port == by_port)).then(i).otherwise(level)
    df = df.with_columns(
        level.cast(pl.Int8).alias(LEVEL),
        _key(pl.col(IP), pl.col("exporter"), pl.col("port")).alias(KEY),
    )

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
    df = df.sort([KEY, "from_ns"])
    _refuse_overlaps(df, path)

    intervals = df.select([LEVEL, KEY, "from_ns", "to_ns", "workload"]).sort("from_ns")
    return Truth(
        intervals=intervals,
        rows=truth.num_rows,
        addresses=df.get_column(IP).n_unique(),
        empty_ignored=empty,
    )


def _refuse_overlaps(df: pl.DataFrame, path: str | None) -> None:
    """`df` sorted by (key, from_ns): an interval overlaps when its predecessor ends late."""
    prev_to = pl.col("to_ns").shift(1)
    same_ip = (pl.col(KEY) == pl.col(KEY).shift(1)).fill_null(False)
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
    narrowed = "".join(f" {c} {r[c]}" for c in ("exporter", "port") if r[c] is not None)
    raise ContractError(
        f"truth intervals overlap for ip {r[IP]}{narrowed}: {r['_ev_prev_workload']!r} "
        f"[{r['_ev_prev_from']}, {prev_to_text}) at row {r['_ev_prev_row']} and "
        f"{r['workload']!r} [{r['from_ns']}, {to_text}) at row {r['_ev_row']} "
        f"({marked.height} overlapping interval(s) in all); one address has one owner at a time",
        path=path,
        row=r["_ev_row"],
        column="from_ns",
    )


def with_owner(flows: pl.DataFrame, truth: Truth) -> pl.DataFrame:
    """`flows` (with columns IP and T; EXPORTER and PORT where the truth is narrowed) plus
    OWNER: who truly owned IP at T, null for nobody, by the narrowest interval covering it.

    Row order is not kept; every caller aggregates.
    """
    out = flows.sort(T)
    owners = []
    for level in truth.levels:
        by_exp, by_port = LEVELS[level]
        right = truth.intervals.filter(pl.col(LEVEL) == level).drop(LEVEL)
        exporter, port = (pl.col(EXPORTER) if by_exp else None), (pl.col(PORT) if by_port else None)
        name = f"{OWNER}_{level}"
        out = out.with_columns(_key(pl.col(IP), exporter, port).alias(KEY)).join_asof(
            right,
            left_on=T,
            right_on="from_ns",
            by=KEY,
            strategy="backward",
            # Both sides are sorted by their time key globally, hence within every key too.
            check_sortedness=False,
        )
        inside = pl.col("to_ns").is_null() | (pl.col(T) < pl.col("to_ns"))
        owner = pl.when(pl.col("from_ns").is_not_null() & inside).then(pl.col("workload"))
        out = out.with_columns(owner.otherwise(None).alias(name)).drop(
            [KEY, "from_ns", "to_ns", "workload"]
        )
        owners.append(name)
    if not owners:
        return out.with_columns(pl.lit(None, pl.String).alias(OWNER))
    return out.with_columns(pl.coalesce(owners).alias(OWNER)).drop(owners)
