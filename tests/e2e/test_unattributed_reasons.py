"""Each reason a collector gives for leaving a flow unattributed, reached on purpose.

A real `flowtrail collector` process with an event feed (no `--no-events`): agents' rows
and the control plane's events over HTTP, short waits so that every flow is decided soon.
Four flows are built to be left unattributed for a known reason:

    no_evidence                            nobody ever claimed the address
    conflicting_claims                     two agents claim the address at the same time
    conflicting_claims (peer row)          the server's own row names one workload, the
                                           ownership ranges another
    event_feed_disagrees_with_heartbeats   the feed names an owner, heartbeats inside its
                                           range name someone else
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import pyarrow as pa

from flowtrail.collector.client import ipc_bytes
from flowtrail.lab.wait import started, until
from flowtrail.store import Store

S = 1_000_000_000
UNCLAIMED_CLIENT = "192.0.2.1"  # the remote end of every evidence row: nobody owns it


def token(exporter: str) -> str:
    return f"tok-{exporter}-0123456789abcdef"


def flow(
    fid: str,
    exporter: str,
    local: str,
    lport: int,
    remote: str,
    rport: int,
    start: int,
    workload: str | None,
    direction: str = "inbound",
) -> dict[str, Any]:
    return {
        "flow_id": fid, "exporter": exporter, "local_ip": local, "local_port": lport,
        "remote_ip": remote, "remote_port": rport, "direction": direction, "start_ns": start,
        "end_ns": start + 5 * S, "state": "closed", "bytes_sent": 10, "bytes_received": 10,
        "local_workload": workload,
    }  # fmt: skip


def post(url: str, kind: str, exporter: str, rows: list[dict[str, Any]]) -> None:
    body = ipc_bytes(pa.Table.from_pylist(rows))
    headers = {"Authorization": f"Bearer {token(exporter)}", "Content-Length": str(len(body))}
    with urlopen(Request(f"{url}/v1/{kind}", data=body, headers=headers), timeout=10) as r:
        assert r.status == 200


def metric_lines(url: str) -> str:
    with urlopen(f"{url}/metrics", timeout=10) as r:
        return str(r.read().decode())


def test_each_unattributed_reason_through_the_collector(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text(
        "".join(f"{e} {token(e)}\n" for e in ("agent-a", "agent-b", "client"))
        + f"control-plane {token('control-plane')} events\n"
    )
    t0 = time.time_ns() - 300 * S
    evidence = [
        # 10.9.9.10: claimed by two workloads over the same minute.
        flow("a1", "agent-a", "10.9.9.10", 80, UNCLAIMED_CLIENT, 40001, t0, "alpha"),
        flow("b1", "agent-b", "10.9.9.10", 80, UNCLAIMED_CLIENT, 40002, t0, "beta"),
        # 10.9.9.11: heartbeats name hb-owner for a while; the feed assigns it to evt-owner.
        flow("a2", "agent-a", "10.9.9.11", 80, UNCLAIMED_CLIENT, 40003, t0 + 10 * S, "hb-owner"),
        # 10.9.9.12: ranges name range-owner alone around c3's start (t0 + 60 s); c3's own
        # server row (its peer row, started 0.5 s later as seen by a skewed clock: within the
        # pairing tolerance of 1 s, docs/contract.md) names peer-owner.
        flow(
            "a3", "agent-a", "10.9.9.12", 443, UNCLAIMED_CLIENT, 40004, t0 + 56 * S, "range-owner"
        ),
        flow(
            "b3", "agent-b", "10.9.9.12", 443, "10.9.8.1", 5003, t0 + 60_500_000_000, "peer-owner"
        ),
    ]
    asked = [
        flow("c0", "client", "10.9.8.1", 5000, "10.9.9.9", 443, t0 + 60 * S, "caller", "outbound"),
        flow("c1", "client", "10.9.8.1", 5001, "10.9.9.10", 80, t0 + 2 * S, "caller", "outbound"),
        flow("c2", "client", "10.9.8.1", 5002, "10.9.9.11", 80, t0 + 60 * S, "caller", "outbound"),
        flow("c3", "client", "10.9.8.1", 5003, "10.9.9.12", 443, t0 + 60 * S, "caller", "outbound"),
    ]
    events = [{"ip": "10.9.9.11", "workload": "evt-owner", "action": "assign",
               "time_ns": t0 - 100 * S}]  # fmt: skip

    port_file, log = tmp_path / "port", tmp_path / "collector.log"
    with open(log, "wb") as out:
        p = subprocess.Popen(
            [sys.executable, "-m", "flowtrail.collector", "--listen", "127.0.0.1:0",
             "--plaintext", "--port-file", str(port_file), "--tokens", str(tmp_path / "tokens"),
             "--data-dir", str(tmp_path / "data"), "--max-wait", "1s", "--event-lag", "1s"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            started(p, port_file.exists, log, 60, "collector")
            url = f"http://127.0.0.1:{int(port_file.read_text())}"
            post(url, "events", "control-plane", events)
            for exporter in ("agent-a", "agent-b"):
                post(url, "flows", exporter, [r for r in evidence if r["exporter"] == exporter])
            post(url, "flows", "client", asked)
            text = until(lambda: metric_lines(url),
                         lambda t: "flowtrail_collector_waiting_flows 0.0" in t
                         and "flowtrail_collector_sink_backlog_rows 0.0" in t, 60)  # fmt: skip
        finally:
            p.send_signal(signal.SIGTERM)
            assert p.wait(60) == 0, log.read_text()

    reasons = {
        line.split('reason="')[1].split('"')[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("flowtrail_collector_unattributed_flows_total{")
    }
    # Every evidence row's own remote end (UNCLAIMED_CLIENT) is unknown too: no_evidence.
    unclaimed = sum(1 for r in evidence if r["remote_ip"] == UNCLAIMED_CLIENT)
    assert reasons == {
        "no_evidence": 1 + unclaimed,
        "conflicting_claims": 2,
        "event_feed_disagrees_with_heartbeats": 1,
    }, reasons
    with Store(tmp_path / "data" / "flows.duckdb") as store:
        got = {r["flow_id"]: r for r in store.read().to_pylist()}
    for fid in ("c0", "c1", "c2", "c3"):
        assert got[fid]["remote_workload"] is None, got[fid]
        assert got[fid]["remote_source"] == "unattributed", got[fid]
    # b3's client end is the asking client (10.9.8.1): named from c3's row, its peer row.
    assert got["b3"]["remote_workload"] == "caller", got["b3"]
    assert json.dumps(sorted(got)) == json.dumps(sorted(r["flow_id"] for r in evidence + asked))
