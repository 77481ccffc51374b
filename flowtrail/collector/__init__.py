"""The collector: agents' batches in over HTTPS, attributed flows out to a store.

CollectorApp / CollectorOptions   one assembled collector process (command, `flowtrail up`)
Collector / CollectorConfig       the transport-free core: ingest, tick, replay
CollectorExporter                 the agent's side: an exporter that sends to a collector
WriteAheadLog, ParquetSink, Sink  durability and where decided rows go
"""

from typing import TYPE_CHECKING

from flowtrail.lazy import lazy_names

if TYPE_CHECKING:
    from flowtrail.collector.app import CollectorApp, CollectorOptions
    from flowtrail.collector.client import CollectorExporter
    from flowtrail.collector.service import Collector, CollectorConfig
    from flowtrail.collector.sink import ParquetSink, Sink
    from flowtrail.collector.wal import WriteAheadLog

# Loaded on first use: `flowtrail collector --help` needs none of Arrow, numpy or DuckDB.
_LAZY = {
    "CollectorApp": "flowtrail.collector.app",
    "CollectorOptions": "flowtrail.collector.app",
    "CollectorExporter": "flowtrail.collector.client",
    "Collector": "flowtrail.collector.service",
    "CollectorConfig": "flowtrail.collector.service",
    "ParquetSink": "flowtrail.collector.sink",
    "Sink": "flowtrail.collector.sink",
    "WriteAheadLog": "flowtrail.collector.wal",
}

__getattr__ = lazy_names(__name__, _LAZY)


__all__ = [
    "Collector",
    "CollectorApp",
    "CollectorConfig",
    "CollectorExporter",
    "CollectorOptions",
    "ParquetSink",
    "Sink",
    "WriteAheadLog",
]
