"""RAW_SCHEMA → FLOWS assembly, the agent loop's bookkeeping and the human view.

Hand-built RAW_SCHEMA batches and a stand-in capture object (a list of batches) are used so
this runs without root; the real capture drives the same code in tests/kernel/test_agent_e2e.py.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from flowtrail.agent.assemble import AGENT_SCHEMA, assemble, check_raw
from flowtrail.agent.command import human_lines, parse_duration, parse_netns, parse_size
from flowtrail.agent.exporter import Delivery, ParquetDir
from flowtrail.agent.identity import IdentityChain
from flowtrail.agent.records import RAW_SCHEMA
from flowtrail.agent.runner import Agent, AgentConfig
from flowtrail.errors import InputError
from flowtrail.schema import FLOWS
from flowtrail.tables import read_table, validate

HOST_NS = 4026531840


def raw(rows: list[dict[str, object]]) -> pa.Table:
    base: dict[str, object] = {
        "sock_id": 7,
        "family": 4,
        "local_ip": "10.0.0.1",
        "local_port": 40000,
        "remote_ip": "10.0.0.2",
        "remote_port": 80,
        "direction": "outbound",
        "outcome": "established",
        "start_ns": 1_000,
        "end_ns": 5_000_000,
        "bytes_sent": 2048,
        "bytes_received": 4096,
        "segs_sent": 4,
        "segs_received": 5,
        "retransmits": 1,
        "srtt_us": 30,
        "cgroup_id": 0,
        "netns_ino": HOST_NS,
        "pid": 42,
        "comm": "curl",
    }
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=RAW_SCHEMA)


def test_assembly_maps_columns_and_keeps_failed_attempts() -> None:
    batch = raw(
        [
            {},
            {"sock_id": 8, "outcome": "refused", "bytes_sent": 0, "bytes_received": 0},
            {"sock_id": 9, "outcome": "timeout", "direction": "outbound"},
            {"sock_id": 10, "local_ip": "2001:db8::1", "remote_ip": "2001:db8::2", "family": 6},
        ]
    )
    names = pa.array(["web", None, "web", "web"])
    nat = (
        pa.array([None, None, None, "2001:db8::9"]),
        pa.array([None, None, None, 8080], pa.int32()),
    )
    flows = assemble(
        batch, exporter="h1", region="eu", state="closed", local_workload=names, nat=nat
    )
    assert flows.schema == AGENT_SCHEMA
    validate(flows, FLOWS)
    rows = flows.to_pylist()
    assert [r["flow_id"] for r in rows] == ["h1:7", "h1:8", "h1:9", "h1:10"]
    assert {r["state"] for r in rows} == {"closed"}  # failed attempts are closed, with an outcome
    assert [r["outcome"] for r in rows] == ["established", "refused", "timeout", "established"]
    assert rows[0]["bytes_sent"] == 2048 and rows[0]["retransmits"] == 1
    assert rows[1]["local_workload"] is None and rows[0]["region"] == "eu"
    assert (rows[3]["nat_remote_ip"], rows[3]["nat_remote_port"]) == ("2001:db8::9", 8080)


def test_check_raw_names_the_problem() -> None:
    with pytest.raises(InputError, match="missing column 'cgroup_id'"):
        check_raw(raw([{}]).drop_columns(["cgroup_id"]))
    bad = raw([{}])
    bad = bad.set_column(0, pa.field("sock_id", pa.string()), pa.array(["x"]))
    with pytest.raises(InputError, match="'sock_id' is string, expected uint64"):
        check_raw(bad)


class ListCapture:
    """Stand-in for Capture: hands out prepared batches; nothing is live."""

    def __init__(self, batches: list[pa.Table]) -> None:
        self.batches = batches

    def poll(self, timeout_ms: int = 0) -> pa.RecordBatch | None:
        return self.batches.pop(0).to_batches()[0] if self.batches else None

    def live(self) -> pa.RecordBatch:
        return pa.RecordBatch.from_pylist([], schema=RAW_SCHEMA)

    def stats(self) -> dict[str, int]:
        return {"ringbuf_full": 3, "map_full": 0}


def test_agent_counts_malformed_rows_and_exports_the_rest(tmp_path: Path) -> None:
    batches = [
        raw([{}, {"sock_id": 8, "direction": "sideways"}]),
        raw([{"sock_id": 9, "end_ns": 0}, {"sock_id": 11, "local_ip": None}]),
        raw([{"sock_id": 12}]),
    ]
    seen: list[int] = []
    agent = Agent(
        ListCapture(batches),
        AgentConfig(exporter="h1", interval_s=3600),
        IdentityChain.build(("host",), host_workload="box", host_netns=HOST_NS),
        Delivery(ParquetDir(tmp_path)),
        on_closed=lambda r, f: seen.append(f.num_rows),
    )
    agent.drain()
    assert agent.flush(snapshots=False) == 2
    m = agent.metrics()
    assert m["captured_rows"] == 5 and m["dropped_malformed_rows"] == 3
    assert m["exported_rows"] == 2 and m["capture_drop_ringbuf_full"] == 3
    assert sum(seen) == 2  # only well-formed rows reach the human view
    (f,) = tmp_path.glob("flows-*.parquet")
    t = read_table(f, FLOWS)
    assert t.column("flow_id").to_pylist() == ["h1:7", "h1:12"]
    assert t.column("local_workload").to_pylist() == ["box", "box"]


def test_held_rows_past_batch_rows_go_out_early_and_nothing_is_lost(tmp_path: Path) -> None:
    """Memory is bounded by batch_rows, not by the interval: a busy host's closed rows go out
    in batches of their own before the interval ends; every row is exported once."""
    batches = [raw([{"sock_id": 10 * b + i} for i in range(3)]) for b in range(5)]
    agent = Agent(
        ListCapture(batches),
        AgentConfig(exporter="h1", interval_s=3600, resolve_every_s=0, batch_rows=5),
        IdentityChain.build(("host",), host_workload="box", host_netns=HOST_NS),
        Delivery(ParquetDir(tmp_path)),
    )
    held = []
    for _ in range(5):
        agent.step()
        held.append(agent.metrics()["held_rows"])
    assert held == [3, 0, 3, 0, 3]
    assert agent.flush(snapshots=False) == 3
    m = agent.metrics()
    assert m["early_batches"] == 2 and m["exported_rows"] == 15 and m["intervals"] == 1
    files = sorted(tmp_path.glob("flows-*.parquet"))
    assert [read_table(f, FLOWS).num_rows for f in files] == [6, 6, 3]
    ids = [i for f in files for i in read_table(f, FLOWS).column("flow_id").to_pylist()]
    assert sorted(ids) == sorted(f"h1:{10 * b + i}" for b in range(5) for i in range(3))


def test_human_line_is_named() -> None:
    batch = raw([{"bytes_sent": 10 * 1024}])
    flows = assemble(
        batch,
        exporter="h",
        region=None,
        state="closed",
        local_workload=pa.array(["k8s:shop/cart"]),
        nat=(pa.array(["10.1.1.1"]), pa.array([8080], pa.int32())),
    )
    (line,) = human_lines(batch, flows)
    for part in ("42", "curl", "OUT", "10.0.0.1:40000", "10.0.0.2:80", " 10 ", "k8s:shop/cart"):
        assert part in line
    assert line.endswith("10.1.1.1:8080")


def test_flag_parsing_names_the_flag() -> None:
    assert parse_duration("60s", "--interval") == 60
    assert parse_duration("1m", "--interval") == 60
    assert parse_duration("250ms", "--interval") == 0.25
    with pytest.raises(InputError, match="--interval 'soon'"):
        parse_duration("soon", "--interval")
    with pytest.raises(InputError, match="more than zero"):
        parse_duration("0s", "--interval")
    assert parse_size("4M", "--ringbuf") == 4 << 20
    with pytest.raises(InputError, match="--spool-max"):
        parse_size("lots", "--spool-max")


def test_every_cli_option_is_documented() -> None:
    from flowtrail.agent.command import agent

    doc = (Path(__file__).parents[2] / "docs" / "agent.md").read_text()
    for param in agent.params:
        for opt in param.opts:
            if opt.startswith("--"):
                assert f"`{opt}" in doc, f"{opt} is not documented in docs/agent.md"


class FailingCapture(ListCapture):
    """Gives its batches, then fails the way a broken ring buffer read would."""

    def poll(self, timeout_ms: int = 0) -> pa.RecordBatch | None:
        if not self.batches:
            raise OSError(5, "ring buffer read failed")
        return super().poll(timeout_ms)


def test_run_exports_what_it_has_then_raises_a_capture_failure(tmp_path: Path) -> None:
    import threading

    agent = Agent(
        FailingCapture([raw([{}]), raw([{"sock_id": 8}])]),
        AgentConfig(exporter="h1", interval_s=3600, poll_ms=10, resolve_every_s=0.02),
        IdentityChain.build(("host",), host_workload="box", host_netns=HOST_NS),
        Delivery(ParquetDir(tmp_path)),
    )
    with pytest.raises(OSError, match="ring buffer read failed"):
        agent.run(threading.Event())
    (f,) = tmp_path.glob("flows-*.parquet")
    assert read_table(f, FLOWS).column("flow_id").to_pylist() == ["h1:7", "h1:8"]


def test_collector_sink_from_the_cli_needs_a_url_and_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from flowtrail.cli import main

    monkeypatch.delenv("FLOWTRAIL_COLLECTOR_TOKEN", raising=False)
    monkeypatch.delenv("FLOWTRAIL_COLLECTOR_TOKEN_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["agent", "--sink", "collector", "--out", "https://127.0.0.1:1"])
    assert res.exit_code == 2
    assert "FLOWTRAIL_COLLECTOR_TOKEN" in res.output


def test_agent_with_netns_exports_only_its_namespaces_rows_and_counts_the_rest(
    tmp_path: Path,
) -> None:
    mine, other = 4026532001, 4026532002
    batches = [
        raw([{"sock_id": 1, "netns_ino": mine}, {"sock_id": 2, "netns_ino": other}]),
        raw([{"sock_id": 3, "netns_ino": other}, {"sock_id": 4, "netns_ino": mine}]),
    ]
    agent = Agent(
        ListCapture(batches),
        AgentConfig(exporter="h1", interval_s=3600, netns=frozenset({mine})),
        IdentityChain.build(("host",), host_workload="box", host_netns=HOST_NS),
        Delivery(ParquetDir(tmp_path)),
    )
    agent.drain()
    assert agent.flush(snapshots=False) == 2
    m = agent.metrics()
    assert m["captured_rows"] == 2 and m["other_netns_rows"] == 2
    (f,) = tmp_path.glob("flows-*.parquet")
    assert read_table(f, FLOWS).column("flow_id").to_pylist() == ["h1:1", "h1:4"]


def test_netns_option_takes_names_paths_and_inodes_and_refuses_a_missing_name() -> None:
    own = Path("/proc/self/ns/net").stat().st_ino
    assert parse_netns(("/proc/self/ns/net", "12345")) == frozenset({own, 12345})
    with pytest.raises(InputError, match="--netns 'no-such-ns-here': no such network namespace"):
        parse_netns(("no-such-ns-here",))
