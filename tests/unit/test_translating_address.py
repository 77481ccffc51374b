"""The engine's rule for a NAT gateway's address, on hand-made rows (the kernel test,
tests/kernel/test_nat_gateway.py, shows it on real masqueraded traffic).

The gateway 10.0.0.1 (workload gw) holds a connection of its own to the server 10.0.0.2
(workload api) for 100 s; meanwhile a host behind it connects to the server, which sees
10.0.0.1:40000. Its inbound row must not name gw; the gateway's own connection is still named
from the server's row of it.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from flowtrail.engine.attributor import Settings
from flowtrail.engine.replay import replay
from flowtrail.engine.stream import StreamingAttribution
from flowtrail.errors import ContractError
from flowtrail.schema import FLOWS
from flowtrail.tables import validate

S = 1_000_000_000
T0 = 1_700_000_000 * S


def row(fid: str, local: tuple[str, int], remote: tuple[str, int], direction: str,
        start: int, end: int, workload: str, **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "flow_id": fid, "exporter": fid.split(":")[0], "local_ip": local[0],
        "local_port": local[1], "remote_ip": remote[0], "remote_port": remote[1],
        "direction": direction, "start_ns": start, "end_ns": end, "state": "closed",
        "bytes_sent": 1, "bytes_received": 1, "local_workload": workload, **extra,
    }  # fmt: skip


def flows(translating: bool | None) -> pa.Table:
    gw, api = ("10.0.0.1", 33333), ("10.0.0.2", 443)
    mark = {} if translating is None else {"local_translating": translating}
    rows = [
        row("gw:1", gw, api, "outbound", T0, T0 + 100 * S, "gw", **mark),
        row("api:1", api, gw, "inbound", T0, T0 + 100 * S, "api"),
        # The translated connection, seen only by the server (the host behind runs no agent).
        row("api:2", api, ("10.0.0.1", 40000), "inbound", T0 + 50 * S, T0 + 51 * S, "api"),
    ]
    return validate(pa.Table.from_pylist(rows), FLOWS)


def names(table: pa.Table) -> dict[str, str | None]:
    return dict(
        zip(table["flow_id"].to_pylist(), table["remote_workload"].to_pylist(), strict=True)
    )


def test_a_translating_address_is_named_only_by_the_same_connections_other_row() -> None:
    got = names(replay(flows(translating=True)).table)
    assert got["api:2"] is None  # not gw: gw never owned port 40000
    assert got["api:1"] == "gw"  # the gateway's own connection: its own row says so
    assert got["gw:1"] == "api"


def test_without_the_mark_ranges_name_the_gateway() -> None:
    """What the mark prevents (and what a gateway without an agent able to see it risks)."""
    for mark in (None, False):
        assert names(replay(flows(translating=mark)).table)["api:2"] == "gw"


def test_the_mark_is_checked_as_a_boolean() -> None:
    t = flows(translating=None).append_column("local_translating", pa.array([1, 0, 0]))
    assert validate(t, FLOWS)["local_translating"].to_pylist() == [True, False, False]
    bad = flows(translating=None).append_column("local_translating", pa.array([2, 0, 0]))
    with pytest.raises(ContractError, match="local_translating"):
        validate(bad, FLOWS)


def test_a_live_collector_takes_the_mark_as_the_replay_does() -> None:
    """The mark in one batch, the translated connection's row in a later one."""
    eng = StreamingAttribution(Settings(use_events=False))  # as replay without events
    t = flows(translating=True)
    now = T0 + 200 * S
    eng.submit_flows(t.slice(0, 2), now)  # the gateway's connection, both rows
    eng.submit_flows(t.slice(2, 1), now + S)
    out = [*eng.tick(now + S), *eng.tick(now + 1000 * S)]
    got = names(pa.concat_tables(out))
    assert got == {"gw:1": "api", "api:1": "gw", "api:2": None}


def test_a_gateway_without_an_agent_is_unknown_unless_the_feed_names_its_address() -> None:
    """No agent on the gateway: no heartbeat for its address, no mark. The translated
    connection is unattributed, unless the event feed assigns the gateway's address to a
    workload, which is then named (docs/attribution.md: do not assign a gateway's address)."""
    server_only = flows(translating=None).slice(2, 1)  # the server's row of the translated one
    assert names(replay(server_only).table)["api:2"] is None
    feed = pa.table(
        {
            "ip": ["10.0.0.1"],
            "workload": ["nat-box"],
            "action": ["assign"],
            "time_ns": [T0 - 100 * S],
            "received_ns": [T0 - 100 * S],
        }
    )
    assert names(replay(server_only, feed).table)["api:2"] == "nat-box"
