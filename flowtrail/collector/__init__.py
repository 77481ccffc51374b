"""The collector: agents' batches in over HTTPS, attributed flows out to a store.

CollectorApp / CollectorOptions   one assembled collector process (command, `flowtrail up`)
Collector / CollectorConfig       the transport-free core: ingest, tick, replay
CollectorExporter                 the agent's side: an exporter that sends to a collector
WriteAheadLog, ParquetSink, Sink  durability and where decided rows go
"""

from flowtrail.collector.app import CollectorApp, CollectorOptions
from flowtrail.collector.client import CollectorExporter
from flowtrail.collector.service import Collector, CollectorConfig
from flowtrail.collector.sink import ParquetSink, Sink
from flowtrail.collector.wal import WriteAheadLog

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
