"""Where attributed flows are kept.

Store   the embedded default: one DuckDB database file, idempotent writes (per row or per
        named batch), retention
Lake    hour-partitioned Parquet (Hive layout) for engines beyond one machine
"""

from flowtrail.store.duck import (
    DEFAULT_RETENTION_NS,
    FLOWS_TABLE,
    PER_BATCH,
    PER_ROW,
    Store,
    open_database,
)
from flowtrail.store.lake import Lake, lake_glob

__all__ = [
    "DEFAULT_RETENTION_NS",
    "FLOWS_TABLE",
    "PER_BATCH",
    "PER_ROW",
    "Lake",
    "Store",
    "lake_glob",
    "open_database",
]
