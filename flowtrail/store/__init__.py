"""Where attributed flows are kept.

Store   the embedded default: one DuckDB database file, idempotent writes, retention
Lake    hour-partitioned Parquet (Hive layout) for engines beyond one machine
"""

from flowtrail.store.duck import DEFAULT_RETENTION_NS, FLOWS_TABLE, Store, open_database
from flowtrail.store.lake import Lake, lake_glob

__all__ = ["DEFAULT_RETENTION_NS", "FLOWS_TABLE", "Lake", "Store", "lake_glob", "open_database"]
