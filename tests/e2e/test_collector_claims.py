"""A real collector process: a token's `ranges=` keeps a spoofing host from naming addresses.

The real `python -m flowtrail.collector` over TLS on loopback, the real log and Parquet sink.
A compromised host ("rogue") claims a load balancer's address (no agent there) and an API
host's address (agent there) as its own workload "evil". Without ranges, the first flips
every client flow to the load balancer to "evil" and the second spoils the API's; with them,
the rogue's batch is refused whole, counted and quarantined, and attribution is unchanged.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.collector.client import ipc_bytes
from flowtrail.collector.sink import read_parquet_sink
from tests.e2e.test_collector_e2e import Proc, token

S = 1_000_000_000
LB, API, CLIENT, ROGUE = "10.0.0.9", "10.0.0.20", "10.0.1.1", "10.0.2.5"


def rows(exporter: str, spec: list[tuple[str, str | None, str, int, int]], t0: int) -> pa.Table:
    """(local_ip, local_workload, remote_ip, local_port, remote_port) per row, over [t0, t0+2s]."""
    n = len(spec)
    t = pa.table({
        "flow_id": [f"{exporter}-{i}" for i in range(n)],
        "exporter": [exporter] * n,
        "local_ip": [s[0] for s in spec],
        "local_port": pa.array([s[3] for s in spec], pa.int32()),
        "remote_ip": [s[2] for s in spec],
        "remote_port": pa.array([s[4] for s in spec], pa.int32()),
        "direction": ["inbound"] * n,
        "start_ns": [t0] * n,
        "end_ns": [t0 + 2 * S] * n,
        "state": ["closed"] * n,
        "bytes_sent": [1] * n,
        "bytes_received": [1] * n,
        "local_workload": pa.array([s[1] for s in spec], pa.string()),
    })  # fmt: skip
    return t


def post(proc: Proc, exporter: str, table: pa.Table, batch: str) -> tuple[int, dict[str, object]]:
    ctx = ssl.create_default_context(cafile=proc.cafile)
    conn = http.client.HTTPSConnection("127.0.0.1", proc.port, context=ctx, timeout=30)
    try:
        body = ipc_bytes(table)
        conn.request("POST", "/v1/flows", body=body, headers={
            "Authorization": f"Bearer {token(exporter)}", "Content-Length": str(len(body)),
            "X-Flowtrail-Batch": batch,
        })  # fmt: skip
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_a_spoofing_exporter_is_refused_and_flips_nothing(
    tmp_path: Path,
    procs: list[Proc],
) -> None:
    more = {
        "api-host": f"ranges={API}/32",
        "client": "ranges=10.0.1.0/24",
        "rogue": "flows ranges=10.0.2.0/24,fd00:2::/64",
    }
    proc = Proc(tmp_path, list(more), "--sink", "parquet", more=more)
    procs.append(proc)
    t0 = time.time_ns() - 30 * S

    # The API host's agent: its own address, and its own loopback (always claimable).
    api = rows("api-host", [(API, "api", "10.0.7.7", 443, 5555),
                            ("127.0.0.1", "api", "127.0.0.1", 8080, 5556)], t0)  # fmt: skip
    assert post(proc, "api-host", api, "api-1")[0] == 200
    # The rogue: one row of its own, then the load balancer's and the API's addresses.
    rogue = rows("rogue", [(ROGUE, "evil", "10.0.7.8", 22, 6000),
                           (LB, "evil", "10.0.7.8", 443, 6001),
                           (API, "evil", "10.0.7.8", 443, 6002)], t0)  # fmt: skip
    status, answer = post(proc, "rogue", rogue, "rogue-1")
    assert status == 403, answer
    assert answer["reason"] == "address_not_allowed"
    assert "row 2, column 'local_ip'" in str(answer["error"]), answer
    assert "2 of 3 rows" in str(answer["error"]), answer
    # Its own address alone is fine: the token limits what it claims, not whether it sends.
    assert post(proc, "rogue", rogue.slice(0, 1), "rogue-2")[0] == 200
    # Clients of the load balancer and of the API, a second into the claims.
    client = rows("client", [(CLIENT, "app", LB, 40001, 443),
                             (CLIENT, "app", API, 40002, 443)], t0 + S)  # fmt: skip
    client = client.set_column(
        client.column_names.index("direction"), "direction", pa.array(["outbound"] * 2)
    )
    assert post(proc, "client", client, "client-1")[0] == 200

    proc.wait_idle()
    _, text = proc.get("/metrics")
    m = text.decode()
    assert metric(m, 'flowtrail_collector_refused_batches_total{reason="address_not_allowed"}') == 1
    assert metric(m, 'flowtrail_collector_refused_rows_total{reason="address_not_allowed"}') == 3
    assert metric(m, "flowtrail_collector_quarantined_batches_total") == 1
    assert proc.stop() == 0

    notes = [json.loads(p.read_text()) for p in (tmp_path / "data" / "quarantine").glob("*.json")]
    assert [(n["reason"], n["exporter"], n["batch"]) for n in notes] == [
        ("address_not_allowed", "rogue", "rogue-1")
    ]
    out = read_parquet_sink(tmp_path / "data" / "flows")
    assert out.num_rows == api.num_rows + 1 + client.num_rows  # nothing else lost or added
    got = out.filter(pc.equal(out["exporter"], "client")).sort_by("local_port")
    # The load balancer has no agent: honestly unknown, not "evil"; the API is still the API.
    assert got["remote_workload"].to_pylist() == [None, "api"]
    assert "evil" not in out["remote_workload"].to_pylist()
