"""`flowtrail serve --lake DIR`: the query API and web console over a Parquet lake.

The lake is what a cluster's nodes write together (flowtrail/store/lake.py); this serves it as
`flowtrail up` serves its store, with the same queries (flowtrail/query/queries.py), so a
cluster of any size has one place to ask. Each request reads only the partitions its window
overlaps and counts each row once (flowtrail/query/lake.py).
"""

from __future__ import annotations

import threading

import click

from flowtrail.opshttp import parse_listen
from flowtrail.outputs import write_port_file


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
    help="Where the API and console listen (loopback; port 0 picks a free one).",
)
@click.option(
    "--port-file",
    metavar="FILE",
    default=None,
    help="Write the port listened on here once ready (for scripts using port 0).",
)
def serve(lake_dir: str, listen: str, port_file: str | None) -> None:
    """Serve the query API (/api/*) and the web console (/) over a Parquet lake.

    Read-only: the lake's files are only read, and new files appear in answers as they are
    written (no restart). Stop with Ctrl-C or SIGTERM.

    \b
    Examples:
      flowtrail serve --lake /data/flowtrail-lake
      curl 'http://127.0.0.1:4741/api/dependencies?since=1h'
    """
    import duckdb

    from flowtrail.api.server import QueryAPI
    from flowtrail.query.lake import LakeSource
    from flowtrail.stop_signals import stop_on_signals

    host, port = parse_listen(listen, "--listen")
    source = LakeSource(lake_dir)
    con = duckdb.connect()  # in memory: every request gets its own cursor and views
    api = QueryAPI(con.cursor, host, port, source=source)
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
