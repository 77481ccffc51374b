"""`flowtrail serve --lake DIR`: the query API and web console over a Parquet lake.

The lake is what a cluster's nodes write together (flowtrail/store/lake.py); this serves it as
`flowtrail up` serves its store, with the same queries (flowtrail/query/queries.py), so a
cluster of any size has one place to ask. Each request reads only the partitions its window
overlaps and counts each row once (flowtrail/query/lake.py).
"""

from __future__ import annotations

import threading

import click

from flowtrail.errors import InputError
from flowtrail.opshttp import is_loopback, parse_listen
from flowtrail.outputs import problem, write_port_file


@click.command()
@click.option(
    "--lake",
    "lake_dir",
    metavar="DIR",
    required=True,
    help="The Parquet lake: region=*/date=*/hour=* directories of attributed flows, as "
    "cluster nodes (--sink lake) and collectors write them.",
)
@click.option(
    "--listen",
    default="127.0.0.1:4741",
    show_default=True,
    metavar="HOST:PORT",
    help="Where the API and console listen; port 0 picks a free one. Any address but "
    "loopback needs --tls-cert, --tls-key and --tokens: other hosts then need a read token.",
)
@click.option("--tls-cert", metavar="FILE", default=None, help="PEM certificate (chain) to serve.")
@click.option("--tls-key", metavar="FILE", default=None, help="PEM private key of --tls-cert.")
@click.option(
    "--tokens",
    "tokens_file",
    metavar="FILE",
    default=None,
    help="Tokens file (as `flowtrail token add NAME --read` writes it): requests from other "
    "hosts need one of its read tokens (Bearer, or Basic's password); reread when it changes.",
)
@click.option(
    "--port-file",
    metavar="FILE",
    default=None,
    help="Write the port listened on here once ready (for scripts using port 0).",
)
def serve(
    lake_dir: str,
    listen: str,
    tls_cert: str | None,
    tls_key: str | None,
    tokens_file: str | None,
    port_file: str | None,
) -> None:
    """Serve the query API (/api/*) and the web console (/) over a Parquet lake.

    Read-only: the lake's files are only read, and new files appear in answers as they are
    written (no restart). Stop with Ctrl-C or SIGTERM.

    \b
    Examples:
      flowtrail serve --lake /data/flowtrail-lake
      curl 'http://127.0.0.1:4741/api/dependencies?since=1h'
      flowtrail serve --lake DIR --listen 0.0.0.0:4741 --tls-cert C --tls-key K --tokens T
    """
    import duckdb

    from flowtrail.api.server import QueryAPI
    from flowtrail.query.lake import LakeSource
    from flowtrail.stop_signals import stop_on_signals

    host, port = parse_listen(listen, "--listen")
    given = [tls_cert, tls_key, tokens_file]
    if any(given) and not all(given):
        raise InputError("--tls-cert, --tls-key and --tokens go together")
    if not is_loopback(host) and not all(given):
        raise InputError(
            f"--listen {listen}: other hosts may reach it: give --tls-cert, --tls-key and "
            "--tokens (read tokens), or listen on loopback"
        )
    tls, readers = None, None
    if tls_cert and tls_key and tokens_file:
        from flowtrail.collector.server import tls_context
        from flowtrail.collector.tokens import TokenFile
        from flowtrail.fleet.access import ReadAccess

        try:
            tls = tls_context(tls_cert, tls_key)
        except OSError as exc:  # ssl.SSLError too
            raise InputError(f"--tls-cert {tls_cert} / --tls-key {tls_key}: {exc}") from exc
        try:
            readers = ReadAccess(TokenFile(tokens_file)).allows
        except OSError as exc:
            raise InputError(f"--tokens {tokens_file}: {problem(exc)}") from exc
    source = LakeSource(lake_dir)
    con = duckdb.connect()  # in memory: every request gets its own cursor and views
    api = QueryAPI(con.cursor, host, port, source=source, tls=tls, readers=readers)
    api.start()
    if port_file:
        write_port_file(port_file, api.port)
    click.echo(f"flowtrail serve: {api.url()}/ (console), {api.url()}/api (queries)", err=True)
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        stop.wait()
    finally:
        api.stop()
        con.close()
