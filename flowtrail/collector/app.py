"""One collector process assembled: log, sink, quarantine, engine, HTTPS server.

`CollectorApp(options).start()` returns once it listens; `stop()` shuts down cleanly (the
server first, then a last tick, then the log). `flowtrail collector` and `flowtrail up`
both build it.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from flowtrail.collector.quarantine import Quarantine
from flowtrail.collector.server import CollectorHTTPServer, tls_context
from flowtrail.collector.service import Collector, CollectorConfig
from flowtrail.collector.sink import ParquetSink, Sink
from flowtrail.collector.tokens import TokenFile
from flowtrail.collector.wal import WriteAheadLog
from flowtrail.errors import InputError
from flowtrail.httpguard import ConnectionLimits
from flowtrail.opshttp import is_loopback
from flowtrail.outputs import problem


@dataclass
class CollectorOptions:
    data_dir: Path
    tokens_file: Path
    host: str = "127.0.0.1"
    port: int = 4740
    cert: Path | None = None
    key: Path | None = None
    plaintext: bool = False  # loopback only
    sink: str = "store"  # store (DuckDB file) or parquet (a directory)
    db: Path | None = None  # default: data_dir/flows.duckdb
    store_retention_ns: int | None = 7 * 86_400 * 10**9
    max_body_bytes: int = 256 << 20
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    config: CollectorConfig = field(default_factory=CollectorConfig)
    data_flag: str = "--data-dir"  # names data_dir in messages
    tls_context: ssl.SSLContext | None = None  # instead of cert and key (flowtrail up)
    # GET /metrics, /healthz: (peer, Authorization) → answer? None: everyone (see server.py)
    readers: Callable[[str, str | None], bool] | None = None


def make_sink(options: CollectorOptions) -> Sink:
    if options.sink == "parquet":
        return ParquetSink(options.data_dir / "flows")
    if options.sink == "store":
        from flowtrail.store import PER_BATCH, Store

        db = options.db or options.data_dir / "flows.duckdb"
        # Rows were validated at the door and the attribution columns come from the engine.
        # Idempotent per batch: the log names each batch before it is written (a store made
        # per row, by an older collector, stays so and works too).
        return Store(  # type: ignore[no-any-return]
            db,
            retention_ns=options.store_retention_ns,
            validate_rows=False,
            idempotence=PER_BATCH,
        )
    raise InputError(f"--sink {options.sink!r}: choose store or parquet")


class CollectorApp:
    """`sink`: an already open sink to write to (e.g. the Store that `flowtrail up` also
    queries, since DuckDB allows one writer process); default: built from the options."""

    def __init__(self, options: CollectorOptions, sink: Sink | None = None) -> None:
        self.options = options
        if options.plaintext:
            if not is_loopback(options.host):
                raise InputError(f"--plaintext: only on loopback, not {options.host!r}")
            self._tls = None
        elif options.tls_context is not None:
            self._tls = options.tls_context
        else:
            if options.cert is None or options.key is None:
                raise InputError("give --tls-cert and --tls-key (or --plaintext on loopback)")
            try:
                self._tls = tls_context(str(options.cert), str(options.key))
            except (OSError, ValueError) as exc:
                raise InputError(f"--tls-cert/--tls-key: cannot load: {exc}") from exc
        self.tokens = TokenFile(options.tokens_file)  # revocations apply at once
        tokens = self.tokens
        data = options.data_dir
        cfg = options.config
        with self._data_dir_errors():
            data.mkdir(parents=True, exist_ok=True)
            wal = WriteAheadLog(
                data / "wal",
                segment_bytes=cfg.segment_bytes,
                segment_age_ns=cfg.segment_age_ns,
                fsync=cfg.fsync,
            )
            quarantine = Quarantine(data / "quarantine", cfg.quarantine_bytes)
            sink = sink if sink is not None else make_sink(options)
        self.collector = Collector(cfg, tokens=tokens, wal=wal, sink=sink, quarantine=quarantine)
        self.server: CollectorHTTPServer | None = None
        self._serving: threading.Thread | None = None

    @contextmanager
    def _data_dir_errors(self) -> Iterator[None]:
        """A data directory that cannot be made, read or written is the operator's to fix:
        one line naming it, not a traceback."""
        try:
            yield
        except OSError as exc:
            flag, where = self.options.data_flag, self.options.data_dir
            raise InputError(f"{flag} {where}: cannot use: {problem(exc)}") from exc

    def start(self) -> int:
        """Replay the log, then listen; returns the port (useful with port 0)."""
        with self._data_dir_errors():
            self.collector.start()  # the log is read, and its first new segment made
        try:
            self.server = CollectorHTTPServer(
                (self.options.host, self.options.port),
                self.collector,
                tls=self._tls,
                max_body_bytes=self.options.max_body_bytes,
                limits=self.options.connections,
                readers=self.options.readers,
            )
        except OSError as exc:
            self.collector.stop()
            raise InputError(
                f"--listen {self.options.host}:{self.options.port}: cannot listen: {exc}"
            ) from exc
        self._serving = threading.Thread(
            target=self.server.serve_forever, name="collector-http", daemon=True
        )
        self._serving.start()
        return self.server.port

    def url(self) -> str:
        assert self.server is not None
        scheme = "http" if self._tls is None else "https"
        host = self.options.host
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{self.server.port}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self._serving is not None:
            self._serving.join()
        self.collector.stop()
