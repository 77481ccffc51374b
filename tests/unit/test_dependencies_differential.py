"""The connections behind dependencies/top talkers, computed two ways on randomised stores:
reducing snapshots to each connection's latest row by ranking every row of the window (the
straightforward SQL) and by ranking only connections with several rows (what the queries do,
for speed). Stores mix reused 4-tuples, clients whose first SYNs were lost (start long before
the handshake completed), rows without an established time, unpaired ends, interim snapshots
and failed attempts."""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from flowtrail.query import queries
from flowtrail.query.queries import Window, dependencies, top_talkers
from flowtrail.vocabulary import OUTCOMES

S = 1_000_000_000


def _ranked_latest_rows_sql(source: str, window: Window, dns: bool = False) -> str:
    columns = f"*, {queries.REMOTE_DNS_SQL} AS remote_dns" if dns else "*"
    return f"""
        SELECT {columns} FROM {source} WHERE {window.sql()}
        QUALIFY row_number() OVER (
            PARTITION BY exporter, flow_id ORDER BY end_ns DESC, (state = 'closed') DESC
        ) = 1
    """


def _store(seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    names = [None, "api", "db", "cache", "web"]
    hosts = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    for c in range(int(rng.integers(50, 300))):
        client, server = rng.choice(hosts, 2, replace=False)
        cport, sport = int(rng.integers(40000, 40004)), int(rng.choice([80, 443]))  # reuse
        est = int(rng.integers(0, 600)) * S + int(rng.integers(0, S))
        start = est - (int(rng.choice([0, 1, 3, 31])) * S if rng.random() < 0.3 else 1000)
        outcome = rng.choice([None, *OUTCOMES])
        attempt = outcome not in (None, "established", "reset")
        cw, sw = rng.choice(names), rng.choice(names)
        ends = [("outbound", client, cport, server, sport, cw, sw, start)]
        if not attempt and rng.random() < 0.7:  # the server end captured too
            skew = int(rng.integers(-2 * S, 2 * S)) if rng.random() < 0.2 else 1000
            ends.append(("inbound", server, sport, client, cport, sw, cw, est + skew))
        for e, (direction, lip, lport, rip, rport, lw, rw, st) in enumerate(ends):
            snapshots = int(rng.integers(1, 4))
            for k in range(snapshots):
                closed = k == snapshots - 1 and rng.random() < 0.8
                end = est + (k + 1) * S + int(rng.integers(0, 3)) * (k == snapshots - 1)
                rows.append({
                    "exporter": lip, "flow_id": f"f{c}-{e}",
                    "end_ns": end + (0 if closed else -1) * int(rng.integers(0, 2)),
                    "state": "closed" if closed else "active",
                    "outcome": outcome if closed or outcome is None else None,
                    "direction": direction,
                    "established_ns": None if attempt or rng.random() < 0.2 else (
                        est if direction == "outbound" else st),
                    "start_ns": st, "local_workload": lw, "remote_workload": rw,
                    "local_ip": lip, "remote_ip": rip, "local_port": lport, "remote_port": rport,
                    "nat_remote_ip": None, "nat_remote_port": None,
                    "bytes_sent": int(rng.integers(0, 10**6)) * (k + 1),
                    "bytes_received": int(rng.integers(0, 10**6)) * (k + 1),
                    "retransmits": int(rng.integers(0, 5)),
                    "srtt_us": None if rng.random() < 0.1 else int(rng.integers(10, 10**5)),
                })  # fmt: skip
    return pa.Table.from_pylist(rows)


@pytest.mark.parametrize("seed", range(25))
def test_connections_agree_with_ranking_every_row(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    con = duckdb.connect()
    con.register("flows_in", _store(seed))
    con.execute("CREATE TABLE flows AS SELECT * FROM flows_in")
    windows = [Window(), Window(200 * S, 400 * S)]
    fast = [(dependencies(con, w), top_talkers(con, w, limit=1000)) for w in windows]
    keyed = [
        queries._ends(con, "flows", w, queries.DEFAULT_PAIR_TOLERANCE_NS, True) for w in windows
    ]
    monkeypatch.setattr(queries, "_latest_rows_sql", _ranked_latest_rows_sql)
    ranked = [(dependencies(con, w), top_talkers(con, w, limit=1000)) for w in windows]
    assert fast == ranked
    assert fast[0][0].num_rows > 3 and sum(fast[0][0].column("failed_attempts").to_pylist()) > 0
    for w, ends in zip(windows, keyed, strict=True):
        again = queries._ends(con, "flows", w, queries.DEFAULT_PAIR_TOLERANCE_NS, True)
        order = ["exporter", "flow_id"]
        assert ends.drop_columns(["rid", "partner"]).sort_by([(k, "ascending") for k in order]) == (
            again.drop_columns(["rid", "partner"]).sort_by([(k, "ascending") for k in order])
        )
