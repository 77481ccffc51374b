"""`flowtrail collector`: receive agents' flow batches over HTTPS, attribute, store."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import click

from flowtrail.errors import InputError
from flowtrail.httpguard import ConnectionLimits
from flowtrail.stop_signals import stop_on_signals
from flowtrail.units import DURATION, SIZE


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InputError(f"--listen {text!r}: expected HOST:PORT (port 0 picks a free one)")
    return host.strip("[]") or "127.0.0.1", int(port)


@click.command()
@click.option(
    "--listen",
    default="127.0.0.1:4740",
    show_default=True,
    help="Address and port to serve HTTPS on (port 0: any free port).",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM certificate (chain) the collector presents.",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM private key of --tls-cert.",
)
@click.option(
    "--plaintext",
    is_flag=True,
    help="Serve plain HTTP: allowed only on a loopback address (local tests, embedding).",
)
@click.option(
    "--tokens",
    "tokens_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Lines '<exporter> <token> [flows,events]': who may send, as whom.",
)
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Write-ahead log, quarantine and (by default) the store live here.",
)
@click.option(
    "--sink",
    type=click.Choice(["store", "parquet"]),
    default="store",
    show_default=True,
    help="store: the DuckDB file (idempotent writes). parquet: DATA/flows/date=/hour=/.",
)
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    help="DuckDB store file [default: DATA/flows.duckdb].",
)
@click.option(
    "--store-retention",
    type=DURATION,
    default="168h",
    show_default=True,
    help="Stored flows older than this (end_ns) are deleted.",
)
@click.option(
    "--max-body",
    type=SIZE,
    default="256M",
    show_default=True,
    help="Largest request body accepted (413 beyond).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1),
    default=ConnectionLimits.max_connections,
    show_default=True,
    help="Open connections at most; when full, one still waiting for its request makes room.",
)
@click.option(
    "--max-connections-per-peer",
    type=click.IntRange(1),
    default=ConnectionLimits.max_per_peer,
    show_default=True,
    help="Open connections from one IP address at most (more are closed at once).",
)
@click.option(
    "--header-timeout",
    type=DURATION,
    default="10s",
    show_default=True,
    help="A new connection's TLS handshake and first request headers must arrive within this.",
)
@click.option(
    "--idle-timeout",
    type=DURATION,
    default="30s",
    show_default=True,
    help="A kept-alive connection's next request must arrive within this.",
)
@click.option(
    "--max-rows",
    type=int,
    default=1_000_000,
    show_default=True,
    help="Most rows in one batch (413 beyond).",
)
@click.option(
    "--rate",
    "rate",
    type=float,
    default=2_000_000.0,
    show_default=True,
    help="Rows per second each exporter may send (429 beyond).",
)
@click.option(
    "--burst",
    type=float,
    default=None,
    help="Rows an exporter may send at once above its rate [default: 2 x --rate].",
)
@click.option(
    "--max-future",
    type=DURATION,
    default="10m",
    show_default=True,
    help="Refuse times further than this ahead of the collector's clock.",
)
@click.option(
    "--max-age",
    type=DURATION,
    default="168h",
    show_default=True,
    help="Refuse times older than this (an agent's spool may hold data this long).",
)
@click.option(
    "--max-wait",
    type=DURATION,
    default="180s",
    show_default=True,
    help="How long a flow waits for heartbeats before the event fallback.",
)
@click.option(
    "--max-skew",
    type=DURATION,
    default="100ms",
    show_default=True,
    help="Worst clock error of any one host.",
)
@click.option(
    "--event-lag",
    type=DURATION,
    default="20m",
    show_default=True,
    help="The event feed is trusted complete up to now minus this.",
)
@click.option(
    "--retention",
    type=DURATION,
    default="1h",
    show_default=True,
    help="Ownership ranges older than this are forgotten (bounds memory).",
)
@click.option("--no-events", is_flag=True, help="There is no event feed: do not wait for one.")
@click.option(
    "--dns-grace",
    type=DURATION,
    default="30s",
    show_default=True,
    help="How long past its TTL a DNS answer still names its address (remote_dns).",
)
@click.option(
    "--tick",
    type=DURATION,
    default="1s",
    show_default=True,
    help="How often waiting flows are decided and results stored.",
)
@click.option(
    "--keep-log",
    type=DURATION,
    default="15m",
    show_default=True,
    help="Stored batches stay in the write-ahead log this long, to rebuild "
    "ownership state after a restart.",
)
@click.option(
    "--quarantine-max",
    type=SIZE,
    default="256M",
    show_default=True,
    help="Bytes of refused batches kept; the oldest go first.",
)
@click.option(
    "--no-fsync",
    is_flag=True,
    help="Acknowledge without fsync (benchmarks only: a crash may lose batches).",
)
@click.option(
    "--port-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the port listened on here once ready.",
)
def collector(
    listen: str, tls_cert: Path | None, tls_key: Path | None, plaintext: bool,
    tokens_file: Path, data_dir: Path, sink: str, db: Path | None, store_retention: int,
    max_body: int, max_connections: int, max_connections_per_peer: int, header_timeout: int,
    idle_timeout: int, max_rows: int, rate: float, burst: float | None, max_future: int,
    max_age: int, max_wait: int, max_skew: int, event_lag: int, retention: int,
    no_events: bool, dns_grace: int, tick: int, keep_log: int, quarantine_max: int,
    no_fsync: bool, port_file: Path | None,
) -> None:  # fmt: skip
    """Receive flow batches from agents, attribute remote workloads, store the results.

    \b
    Agents POST Arrow IPC streams to https://HOST:PORT/v1/flows with
    'Authorization: Bearer TOKEN'; the control plane's feed goes to /v1/events, the
    DNS answers agents saw to /v1/dns_answers (with their flows token).
    A batch is acknowledged (200) only once it is in the write-ahead log on disk.
    GET /metrics (Prometheus) and /healthz on the same port.

    \b
      flowtrail collector --tokens tokens.txt --data-dir /var/lib/flowtrail \\
          --tls-cert cert.pem --tls-key key.pem --listen 0.0.0.0:4740
    """
    # The collector's parts (Arrow, numpy, the engine, DuckDB) load here, not for `--help`.
    from flowtrail.collector.app import CollectorApp, CollectorOptions
    from flowtrail.collector.door import Limits
    from flowtrail.collector.service import CollectorConfig
    from flowtrail.engine.attributor import Settings
    from flowtrail.outputs import write_port_file

    host, port = _listen(listen)
    if max_rows <= 0 or rate <= 0 or (burst is not None and burst <= 0):
        raise InputError("--max-rows, --rate and --burst must be positive")
    if header_timeout <= 0 or idle_timeout <= 0:
        raise InputError("--header-timeout and --idle-timeout must be more than zero")
    config = CollectorConfig(
        limits=Limits(max_rows=max_rows, max_future_ns=max_future, max_age_ns=max_age),
        settings=Settings(
            max_wait_ns=max_wait,
            max_skew_ns=max_skew,
            event_lag_ns=event_lag,
            retention_ns=retention,
            use_events=not no_events,
            dns_grace_ns=dns_grace,
        ),
        rate_rows_per_s=rate,
        burst_rows=burst if burst is not None else 2 * rate,
        tick_ns=tick,
        keep_log_ns=keep_log,
        fsync=not no_fsync,
        quarantine_bytes=quarantine_max,
    )
    options = CollectorOptions(
        data_dir=data_dir, tokens_file=tokens_file, host=host, port=port, cert=tls_cert,
        key=tls_key, plaintext=plaintext, sink=sink, db=db, store_retention_ns=store_retention,
        max_body_bytes=max_body, config=config,
        connections=ConnectionLimits(
            max_connections=max_connections, max_per_peer=max_connections_per_peer,
            header_timeout_s=header_timeout / 1e9, idle_timeout_s=idle_timeout / 1e9,
        ),
    )  # fmt: skip
    app = CollectorApp(options)
    stopping = threading.Event()
    stop_on_signals(stopping)
    bound = app.start()
    if port_file is not None:
        write_port_file(port_file, bound)
    click.echo(f"flowtrail collector: listening on {app.url()}, data in {data_dir}", err=True)
    while not stopping.wait(0.5):
        pass
    click.echo("flowtrail collector: stopping", err=True)
    app.stop()
    sys.stdout.flush()
