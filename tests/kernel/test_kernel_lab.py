"""`flowtrail demo --kernel`, short: real flows of a moving fleet, judged against the lab's truth.

Three hosts (network namespaces on a bridge), each with its own `flowtrail agent --netns`
process; workloads in their own cgroups hand addresses to each other every few seconds (also
across hosts); an agent-less load balancer named only by a late event; host 0 drops every
other SYN to its services. Beside the hosts, a NAT gateway masquerades two LAN clients while
holding connections of its own, and two isolated networks use the same addresses under two
hosts' agents; the truth names the gateway's callers per port and the overlapping addresses
per exporter. The heartbeat method must name no flow wrongly, draw no false edge and leave at
most 0.5% of owned connections unattributed (the gateway's translated ones apart: unattributed
at the server by design); every attempt the workloads made must be captured once at each end
that has an agent, or be among the losses the agents counted.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flowtrail.demo import compare_tables
from flowtrail.engine.replay import replay
from flowtrail.evaluate import evaluate
from flowtrail.lab.fleet import LB_WORKLOAD
from flowtrail.lab.kernel_demo import (
    KernelRun,
    by_kind,
    counted_once,
    miscounted,
    run_lab,
    translated,
)
from flowtrail.lab.workload import SERVICE_PORT

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run = KernelRun(duration_s=25, hosts=3, slots=9, rate=15.0, churn_s=3.0, seed=7)
    # Kept (pytest keeps the last few runs' directories): the agents' files and the lab's logs
    # are what to read when an assertion fails.
    got = run_lab(run, str(tmp_path_factory.mktemp("kernel-lab")))
    got["compared"] = compare_tables(got["flows"], got["events"], got["regions"], got["truth"])
    got["by_kind"] = by_kind(
        got["compared"]["tables"]["heartbeat"], got["truth"], got["gateway_ip"]
    )
    return got


def test_the_fleet_really_churned(lab: dict[str, Any]) -> None:
    assert lab["handovers"] >= 3
    made = lab["attempts"]
    outcomes = set(made.get_column("outcome"))
    assert {"established", "refused"} <= outcomes, outcomes
    assert made.height >= 150


def test_every_attempt_is_captured_once_at_each_agent_end(lab: dict[str, Any]) -> None:
    once = counted_once(lab["attempts"], lab["flows"])
    off = miscounted(lab["attempts"], lab["flows"])
    # Nothing twice; nothing missing but what the kernel programs counted as lost (a program
    # cannot run again on a CPU where it is running: `recursion_miss`, and the close of a
    # socket whose start it missed: `untracked_close`). Loaded hosts see a few.
    assert off.filter(off["found"] > off["made"]).height == 0, f"{once}\n{off}"
    missing = once["client_ends_missing"] + once["server_ends_missing"]
    assert missing <= sum(lab["capture_drops"].values()), f"{once}\n{off}\n{lab['capture_drops']}"
    assert once["client_ends_missing"] == 0, once
    assert once["client_ends_extra"] == 0, once
    assert once["server_ends_missing"] == 0, once
    assert once["server_ends_extra"] == 0, once
    assert once["server_ends_expected"] > 0


def test_heartbeat_names_no_flow_wrongly_and_leaves_few_unattributed(
    lab: dict[str, Any],
) -> None:
    report = lab["compared"]["reports"]["heartbeat"]
    flows, edges = report.flows, report.edges
    assert flows.rows == lab["flows"].num_rows - lab["listening_rows"]  # those are not flows
    assert lab["listening_rows"] > 0
    assert flows.misattributed == 0, report.to_dict()
    assert edges.false == 0, report.to_dict()
    assert flows.owned > 0.9 * flows.rows  # the lab names almost every address it uses
    # Not asserted on every row (failed attempts too): 25 s make about 600 rows, so a few
    # failed attempts left null (to a quiet `db` server, whose handed-over listener names
    # nobody; within a second of a handover) pass 0.5%, as in one of six runs. The
    # five-minute run in the README shows the share.
    # Connections: both ends' rows (paired, also after lost SYNs) and the ranges name them;
    # the gateway's translated ones are apart (below).
    connections = lab["by_kind"]["connections"].flows
    assert connections.unattributed <= 0.005 * connections.owned, connections
    # A failed attempt has no row at the other end: only a range spanning its instant names
    # it (a listener's, mostly), so a few stay null, honestly; none is named wrongly.
    assert lab["by_kind"]["failed attempts"].flows.misattributed == 0


def test_the_load_balancer_is_named_from_the_event_feed_only(lab: dict[str, Any]) -> None:
    table = lab["compared"]["tables"]["heartbeat"]
    rows = table.filter(pc.ends_with(table.column("remote_ip"), ".250")).to_pydict()
    named = [
        (w, s) for w, s in zip(rows["remote_workload"], rows["remote_source"], strict=True) if w
    ]
    assert named
    assert set(named) == {(LB_WORKLOAD, "event")}


def test_a_listener_bound_in_another_cgroup_is_named_by_its_server(lab: dict[str, Any]) -> None:
    """Every `db` workload binds its listener in `<name>-listener.service` and serves from its
    own cgroup: the connections it accepted are its own, at both ends."""
    flows = lab["flows"]
    served = pc.and_(
        pc.equal(flows.column("direction"), "inbound"),
        pc.starts_with(pc.fill_null(flows.column("local_workload"), ""), "systemd:db-"),
    )
    assert pc.sum(served).as_py(), "no db workload accepted a connection"
    table = lab["compared"]["tables"]["heartbeat"]
    names = set(table.column("local_workload").to_pylist())
    names |= set(table.column("remote_workload").to_pylist())
    assert not {n for n in names if n and n.endswith("-listener.service")}
    # Nor does its listening socket claim the address for the cgroup it was bound in: that
    # cgroup holds no process any more.
    heard = flows.filter(pc.equal(flows.column("outcome"), "listening"))
    assert not {
        n for n in heard.column("local_workload").to_pylist() if n.endswith("-listener.service")
    }


def judged(flows: pa.Table, lab: dict[str, Any]) -> pa.Table:
    """`flows` attributed by the heartbeat method (the demo's first) as the collector would."""
    return replay(flows, lab["events"], lab["regions"]).table


def test_the_nat_gateway_is_never_named_as_its_clients_caller(lab: dict[str, Any]) -> None:
    """The servers see the gateway's address for its LAN clients' connections, while the
    gateway's own connections name it: the translated rows name nobody, never the gateway."""
    flows, table = lab["flows"], lab["compared"]["tables"]["heartbeat"]
    gw = lab["gateway_ip"]
    own = flows.filter(pc.equal(flows.column("local_ip"), gw))
    # The premise: the gateway's own rows (its heartbeats), each marked as translating.
    assert own.num_rows > 0 and pc.all(own.column("local_translating")).as_py()
    served_own = table.filter(
        pc.and_(pc.equal(table.column("remote_ip"), gw), pc.invert(translated(table, gw)))
    )
    assert set(served_own.column("remote_workload").to_pylist()) - {None} == {
        "systemd:router.service"
    }
    nat = lab["by_kind"]["translated connections"].flows
    assert nat.rows >= 10, nat
    # The truth knows each translated row's real caller, so naming the gateway would count.
    assert nat.owned == nat.rows, nat
    assert (nat.misattributed, nat.attributed) == (0, 0), nat


def test_overlapping_networks_never_name_each_other(lab: dict[str, Any]) -> None:
    """Two hosts' isolated networks on the same addresses: each host's rows are named within
    its own; pair B's calls to its `.2` after its workload left are refused, and nobody's,
    while pair A's `.2` is still owned."""
    table = lab["compared"]["tables"]["heartbeat"]
    prefix = lab["overlap_prefix"]
    mine = table.filter(pc.starts_with(table.column("remote_ip"), prefix)).to_pylist()
    by_host = {
        e: {r["remote_workload"] for r in mine if r["exporter"] == e} - {None}
        for e in ("host-0", "host-1")
    }
    assert by_host == {
        "host-0": {"systemd:neta-1.service", "systemd:neta-2.service"},
        "host-1": {"systemd:netb-1.service", "systemd:netb-2.service"},
    }
    # Refused at the service port: after netb-2 left (before, only calls to a closed port).
    gone = (f"{prefix}2", SERVICE_PORT)
    refused_b = [r for r in mine if r["exporter"] == "host-1" and r["outcome"] == "refused"
                 and (r["remote_ip"], r["remote_port"]) == gone]  # fmt: skip
    assert len(refused_b) >= 3
    assert {r["remote_workload"] for r in refused_b} == {None}


def test_the_truth_sees_a_misattribution_at_the_gateway_and_across_networks(
    lab: dict[str, Any],
) -> None:
    """The judge is exact here: rows stripped of the evidence that keeps the gateway and the
    overlapping networks apart are attributed wrongly, and the lab's truth says so."""
    flows, truth = lab["flows"], lab["truth"]
    unmarked = flows.set_column(
        flows.schema.get_field_index("local_translating"),
        "local_translating",
        pa.nulls(flows.num_rows, pa.bool_()),
    )
    named = judged(unmarked, lab)
    wrong = evaluate(named.filter(translated(named, lab["gateway_ip"])), truth).flows
    assert wrong.misattributed > 0, wrong
    unscoped = flows
    for column in ("local_scope", "remote_scope"):
        unscoped = unscoped.set_column(
            unscoped.schema.get_field_index(column), column, pa.nulls(flows.num_rows, pa.string())
        )
    named = judged(unscoped, lab)
    across = named.filter(pc.starts_with(named.column("remote_ip"), lab["overlap_prefix"]))
    assert evaluate(across, truth).flows.misattributed > 0
