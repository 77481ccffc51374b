"""A listener handed to another process: its connections are named by the process serving them.

Real kernel traffic: in the server namespace a process in one service's cgroup binds and
listens, then forks a child that moves to another service's cgroup and accepts there (what
systemd socket activation and pre-fork servers do; flowtrail/lab/handover.py). The kernel gives
an accepted socket its listener's cgroup, so without the accept tracepoints every server row
named the binder, and so did the client's remote_workload, taken from the server's row. One
real agent captures both namespaces; its rows go through `replay()`, the collector's engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowtrail.agent.exporter import Delivery, ParquetDir
from flowtrail.engine.replay import replay
from flowtrail.lab import Client, Lab, Server
from flowtrail.lab.agent import running_agent
from flowtrail.lab.handover import handed_over
from flowtrail.lab.wait import until
from flowtrail.schema import FLOWS
from flowtrail.tables import validate

pytestmark = pytest.mark.kernel

CONNECTIONS = 3


def rows_in(out: Path) -> list[dict[str, Any]]:
    files = sorted(out.glob("flows-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist() if files else []


def test_accepted_connections_are_named_by_the_acceptor_not_the_listeners_creator(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    with Lab("hand") as lab, running_agent(Delivery(ParquetDir(out)), interval_s=1.0):
        binder = lab.service_cgroup(f"sockets-{lab.tag}")  # init.scope's part in activation
        api = lab.service_cgroup(f"api-{lab.tag}")
        web = lab.client.at(lab.service_cgroup(f"web-{lab.tag}"))
        port = lab.port()
        serve = Server(lab.server.ip, port, recv=100, send=200, accepts=CONNECTIONS)
        srv = handed_over(lab, lab.server.netns, binder, api, serve)
        client = lab.spawn(web, Client(lab.server.ip, port, send=100, recv=200,
                                       connections=CONNECTIONS))  # fmt: skip
        assert client.communicate(timeout=60)[0].split() == ["done"]
        assert srv.wait(60) == 0

        def ours() -> list[dict[str, Any]]:
            return [r for r in rows_in(out) if port in (r["local_port"], r["remote_port"])]

        rows = until(ours, lambda rs: len(rs) >= 2 * CONNECTIONS, 60)
        assert len(rows) == 2 * CONNECTIONS, rows

    got = replay(validate(pa.Table.from_pylist(rows_in(out)), FLOWS)).table.to_pylist()
    mine = [r for r in got if port in (r["local_port"], r["remote_port"])]
    server_wl, client_wl = f"systemd:api-{lab.tag}.service", f"systemd:web-{lab.tag}.service"
    named = {(r["direction"], r["local_workload"], r["remote_workload"]) for r in mine}
    assert named == {("inbound", server_wl, client_wl), ("outbound", client_wl, server_wl)}
