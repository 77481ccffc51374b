"""DNS answers through a real `flowtrail collector`: POST /v1/dns_answers names flows (remote_dns).

The process, its HTTP door, write-ahead log and store are the real ones. An agent posts the
answers its workload received, then its flows; the flow to an address nobody owns waits
(--max-wait) and leaves with the name. Bad answers batches are refused with the row and
column at fault and counted; the good ones beside them are not harmed. After a restart the
answers come back from the log.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pyarrow as pa

from flowtrail.collector.client import ipc_bytes
from flowtrail.lab.wait import started, until
from flowtrail.query.queries import flows
from flowtrail.store import Store

S = 1_000_000_000
STRIPE = "203.0.113.10"


def token(exporter: str) -> str:
    return f"tok-{exporter}-0123456789abcdef"


def post(
    url: str, kind: str, exporter: str, rows: list[dict[str, Any]]
) -> tuple[int, dict[str, Any]]:
    body = ipc_bytes(pa.Table.from_pylist(rows))
    headers = {"Authorization": f"Bearer {token(exporter)}", "Content-Length": str(len(body))}
    try:
        with urlopen(Request(f"{url}/v1/{kind}", data=body, headers=headers), timeout=10) as r:
            return r.status, json.loads(r.read())
    except HTTPError as e:
        return e.code, json.loads(e.read())


def flow(fid: str, remote: str, start: int, workload: str = "billing") -> dict[str, Any]:
    return {
        "flow_id": fid, "exporter": "agent-a", "local_ip": "10.0.0.1", "local_port": 40000,
        "remote_ip": remote, "remote_port": 443, "direction": "outbound", "start_ns": start,
        "end_ns": start + S, "state": "closed", "bytes_sent": 10, "bytes_received": 10,
        "local_workload": workload,
    }  # fmt: skip


def answer(name: str, address: str, observed: int, **kw: Any) -> dict[str, Any]:
    row = {"exporter": "agent-a", "local_workload": "billing", "query_name": name,
           "address": address, "observed_ns": observed, "ttl_s": 60}  # fmt: skip
    return {**row, **kw}


def metrics(url: str) -> str:
    with urlopen(f"{url}/metrics", timeout=10) as r:
        return str(r.read().decode())


def metric(text: str, name: str, labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}}"):
            return float(line.split()[-1])
    return 0.0


class Collector:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port_file, self.log = tmp / "port", tmp / "collector.log"

    def __enter__(self) -> str:
        self.port_file.unlink(missing_ok=True)
        self.out = open(self.log, "ab")  # closed in __exit__
        self.p = subprocess.Popen(
            [sys.executable, "-m", "flowtrail.collector", "--listen", "127.0.0.1:0",
             "--plaintext", "--port-file", str(self.port_file), "--tokens",
             str(self.tmp / "tokens"), "--data-dir", str(self.tmp / "data"), "--max-wait", "2s",
             "--no-events", "--no-fsync"],
            stdout=self.out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        started(self.p, self.port_file.exists, self.log, 60, "collector")
        return f"http://127.0.0.1:{int(self.port_file.read_text())}"

    def __exit__(self, *exc: object) -> None:
        self.p.send_signal(signal.SIGTERM)
        code = self.p.wait(60)
        self.out.close()
        assert code == 0, self.log.read_text()


def settled(url: str) -> str:
    return until(lambda: metrics(url),
                 lambda t: "flowtrail_collector_waiting_flows 0.0" in t
                 and "flowtrail_collector_sink_backlog_rows 0.0" in t, 60)  # fmt: skip


def stored(tmp: Path) -> dict[str, dict[str, Any]]:
    with Store(tmp / "data" / "flows.duckdb") as store:
        return {r["flow_id"]: r for r in flows(store.cursor(), limit=1000).to_pylist()}


def test_answers_posted_name_the_flows_and_bad_ones_are_refused(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text(
        f"agent-a {token('agent-a')}\nagent-b {token('agent-b')}\n"
        f"control-plane {token('control-plane')} events\n"
    )
    t0 = time.time_ns() - 100 * S
    with Collector(tmp_path) as url:
        assert post(url, "dns_answers", "agent-a", [
            answer("api.stripe.com", STRIPE, t0, cname_chain="stripe.map.fastly.net"),
            answer("hooks.example.org", "198.51.100.7", t0, ttl_s=1),  # expired before f2
        ]) == (200, {"rows": 2})  # fmt: skip
        bad = [answer("API.stripe.com", STRIPE, t0), answer("ok.example", STRIPE, t0)]
        code, body = post(url, "dns_answers", "agent-a", [bad[1], bad[0]])
        assert code == 400 and body["reason"] == "contract", body
        assert "row 2" in body["error"] and "'query_name'" in body["error"], body
        code, body = post(url, "dns_answers", "agent-b", [answer("x.example", STRIPE, t0)])
        assert code == 403 and body["reason"] == "exporter_mismatch", body
        code, body = post(url, "dns_answers", "control-plane", [answer("y.example", STRIPE, t0)])
        assert code == 403, body  # a token that may not send flows may not send answers
        code, body = post(url, "dns_answers", "agent-a", [{"exporter": "agent-a"}])
        assert code == 400 and "missing required column" in body["error"], body
        assert post(url, "flows", "agent-a", [
            flow("f1", STRIPE, t0 + 10 * S),
            flow("f2", "198.51.100.7", t0 + 100 * S),
            flow("f3", STRIPE, t0 + 10 * S, workload="search"),  # not its answer
        ])[0] == 200  # fmt: skip
        text = settled(url)
    assert metric(text, "flowtrail_collector_rows_accepted_total", 'kind="dns_answers"') == 2
    assert metric(text, "flowtrail_collector_refused_batches_total", 'reason="contract"') == 2
    got = stored(tmp_path)
    assert {k: (r["remote_workload"], r["remote_dns"]) for k, r in got.items()} == {
        "f1": (None, "api.stripe.com"),
        "f2": (None, None),
        "f3": (None, None),
    }

    # After a restart the answers come back from the write-ahead log.
    with Collector(tmp_path) as url:
        assert post(url, "flows", "agent-a", [flow("f4", STRIPE, t0 + 30 * S)])[0] == 200
        settled(url)
    assert stored(tmp_path)["f4"]["remote_dns"] == "api.stripe.com"
