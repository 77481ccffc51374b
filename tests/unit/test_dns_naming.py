"""remote_dns: flows named from the DNS answers their workload received (docs/dns.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from flowtrail.cli import main
from flowtrail.engine.attributor import Settings
from flowtrail.engine.dnsnames import DnsNames, check_answers
from flowtrail.engine.replay import replay
from flowtrail.engine.stream import StreamingAttribution
from flowtrail.errors import ContractError
from tests.unit.dns_tables import STRIPE, S, answers_table, flows_table, table


def named(flows: pa.Table, answers: pa.Table, grace_ns: int = 30 * S) -> list[str | None]:
    dns = DnsNames(grace_ns)
    dns.add(answers)
    out = replay(flows, dns=dns).table
    return out.column("remote_dns").to_pylist()  # type: ignore[no-any-return]


def test_an_answer_names_flows_that_start_after_it_within_ttl_and_grace() -> None:
    answers = answers_table([{"query_name": "api.stripe.com", "observed_ns": 100 * S}])
    flows = flows_table([
        {"start_ns": 99 * S},  # before the answer: the workload did not have it yet
        {"start_ns": 100 * S},  # the same instant
        {"start_ns": 160 * S},  # at the TTL's end
        {"start_ns": 190 * S},  # at the end of the grace
        {"start_ns": 190 * S + 1},  # past it
    ])  # fmt: skip
    assert named(flows, answers) == [None, "api.stripe.com", "api.stripe.com",
                                     "api.stripe.com", None]  # fmt: skip
    assert named(flows, answers, grace_ns=0) == [None, "api.stripe.com", "api.stripe.com",
                                                 None, None]  # fmt: skip


def test_repeated_answers_extend_a_name_and_a_gap_ends_it() -> None:
    answers = answers_table([
        {"query_name": "api.stripe.com", "observed_ns": t * S, "ttl_s": 10}
        for t in (0, 15, 30)  # each within the last one's TTL + grace: one run, 0..70 s
    ] + [{"query_name": "api.stripe.com", "observed_ns": 200 * S, "ttl_s": 10}])  # fmt: skip
    flows = flows_table([{"start_ns": t * S} for t in (5, 69, 71, 150, 205)])
    assert named(flows, answers, grace_ns=30 * S) == [
        "api.stripe.com", "api.stripe.com", None, None, "api.stripe.com"
    ]  # fmt: skip


def test_an_address_that_changes_name_is_named_by_the_answer_valid_then() -> None:
    answers = answers_table([
        {"query_name": "old.example.com", "observed_ns": 0, "ttl_s": 30},
        {"query_name": "new.example.com", "observed_ns": 100 * S, "ttl_s": 30},
    ])  # fmt: skip
    flows = flows_table([{"start_ns": t * S} for t in (10, 50, 80, 110)])
    assert named(flows, answers, grace_ns=10 * S) == [
        "old.example.com", None, None, "new.example.com"
    ]  # fmt: skip


def test_two_names_for_one_address_are_both_kept_sorted() -> None:
    # A CDN address behind two names at once: neither is picked.
    answers = answers_table([
        {"query_name": "static.shop.example", "observed_ns": 0},
        {"query_name": "assets.blog.example", "observed_ns": 5 * S},
    ])  # fmt: skip
    flows = flows_table([{"start_ns": 1 * S}, {"start_ns": 10 * S}])
    assert named(flows, answers) == [
        "static.shop.example", "assets.blog.example,static.shop.example"
    ]  # fmt: skip


def test_a_cname_chain_names_the_flow_by_the_name_asked_for() -> None:
    answers = answers_table([{
        "query_name": "api.stripe.com", "cname_chain": "api.stripe.com.cdn.net edge7.cdn.net",
        "observed_ns": 0,
    }])  # fmt: skip
    assert named(flows_table([{"start_ns": S}]), answers) == ["api.stripe.com"]


def test_another_workloads_answer_does_not_name_this_flow() -> None:
    answers = answers_table([
        {"query_name": "other.example.com", "observed_ns": 0, "local_workload": "search"},
        {"query_name": "elsewhere.example", "observed_ns": 0, "exporter": "h2"},
    ])  # fmt: skip
    flows = flows_table([{"start_ns": S}, {"start_ns": S, "local_workload": "search"}])
    assert named(flows, answers) == [None, "other.example.com"]


def test_host_wide_answers_name_flows_the_workload_itself_has_no_answer_for() -> None:
    answers = answers_table([
        {"query_name": "host.example", "observed_ns": 0, "local_workload": None},
        {"query_name": "own.example", "observed_ns": 0, "address": "198.51.100.7"},
    ])  # fmt: skip
    flows = flows_table([
        {"start_ns": S},  # billing has no answer for STRIPE: the host's
        {"start_ns": S, "remote_ip": "198.51.100.7"},  # billing's own answer
        {"start_ns": S, "local_workload": None},  # the host itself
        {"start_ns": S, "exporter": "h2"},  # another host: nothing
    ])  # fmt: skip
    # The host's answer is a fallback, never added to a workload's own names.
    both = answers_table([
        {"query_name": "host.example", "observed_ns": 0, "local_workload": None},
        {"query_name": "own.example", "observed_ns": 0},
    ])  # fmt: skip
    assert named(flows, answers) == ["host.example", "own.example", "host.example", None]
    assert named(flows_table([{"start_ns": S}]), both) == ["own.example"]


def test_an_answer_names_its_address_in_its_own_network_only() -> None:
    answers = answers_table([{"query_name": "db.vpc-b.example", "observed_ns": 0,
                              "network": "vpc-b"}])  # fmt: skip
    flows = flows_table([{"start_ns": S}, {"start_ns": S, "network": "vpc-b"}])
    assert named(flows, answers) == [None, "db.vpc-b.example"]


def test_the_address_matched_is_the_one_connected_to_before_nat() -> None:
    answers = answers_table([{"query_name": "api.stripe.com", "observed_ns": 0}])
    flows = flows_table([{"start_ns": S, "nat_remote_ip": "10.9.9.9", "nat_remote_port": 443}])
    assert named(flows, answers) == ["api.stripe.com"]


def test_ownership_wins_and_dns_only_stands_beside_it() -> None:
    # 10.0.5.5 is owned by `payments` (its own rows say so) and a DNS answer names it too.
    owner = {"exporter": "h9", "local_ip": "10.0.5.5", "local_port": 443,
             "local_workload": "payments", "remote_ip": "10.0.0.1", "remote_port": 41000,
             "direction": "inbound", "start_ns": 0, "end_ns": 100 * S}  # fmt: skip
    flows = flows_table([
        owner, {"start_ns": 10 * S, "remote_ip": "10.0.5.5"}, {"start_ns": 10 * S}
    ])  # fmt: skip
    answers = answers_table([
        {"query_name": "payments.internal", "observed_ns": 0, "address": "10.0.5.5"},
        {"query_name": "api.stripe.com", "observed_ns": 0},
    ])  # fmt: skip
    dns = DnsNames()
    dns.add(answers)
    out = replay(flows, dns=dns).table.to_pylist()
    assert [r["remote_workload"] for r in out] == [None, "payments", None]
    assert [r["remote_source"] for r in out] == ["unattributed", "heartbeat", "unattributed"]
    assert [r["remote_dns"] for r in out] == [None, "payments.internal", "api.stripe.com"]
    # Without answers nothing changes but the null column.
    plain = replay(flows).table
    assert plain.column("remote_workload").to_pylist() == [None, "payments", None]
    assert plain.column("remote_dns").null_count == 3


def test_both_schedules_name_alike() -> None:
    rng = np.random.default_rng(7)
    starts = rng.integers(0, 600, 300) * S
    flows = flows_table([{"start_ns": int(t), "remote_ip": f"203.0.113.{t % 5}"} for t in starts])
    answers = answers_table([
        {"query_name": f"n{i % 3}.example", "observed_ns": int(t), "address": f"203.0.113.{i % 5}",
         "ttl_s": int(rng.integers(0, 90))}
        for i, t in enumerate(rng.integers(0, 600, 80) * S)
    ])  # fmt: skip
    dns = DnsNames()
    dns.add(answers)
    batch = replay(flows, dns=dns).table
    stream = replay(flows, dns=dns, schedule="stream").table
    assert batch.column("remote_dns").equals(stream.column("remote_dns"))
    # the same as asking each flow by hand, answer by answer
    expect = []
    for t, ip in zip(starts, flows.column("remote_ip").to_pylist(), strict=True):
        names = {
            a["query_name"] for a in answers.to_pylist()
            if a["address"] == ip and a["observed_ns"] <= t <= a["observed_ns"]
            + a["ttl_s"] * S + 30 * S
        }  # fmt: skip
        expect.append(",".join(sorted(names)) or None)
    assert batch.column("remote_dns").to_pylist() == expect


def test_live_engine_names_flows_decided_after_the_answer_came() -> None:
    engine = StreamingAttribution(Settings(max_wait_ns=10 * S, use_events=False))
    flows = flows_table([{"start_ns": 100 * S}])
    engine.submit_flows(flows, now=102 * S)
    engine.submit_dns(answers_table([{"query_name": "api.stripe.com", "observed_ns": 99 * S}]))
    assert engine.tick(103 * S) == []  # nobody owns it: it waits, as every unnamed flow does
    (done,) = engine.tick(113 * S)
    assert done.column("remote_workload").to_pylist() == [None]
    assert done.column("remote_dns").to_pylist() == ["api.stripe.com"]


def test_live_engine_an_answer_that_comes_after_the_decision_names_nothing() -> None:
    engine = StreamingAttribution(Settings(max_wait_ns=10 * S, use_events=False))
    engine.submit_flows(flows_table([{"start_ns": 100 * S}]), now=102 * S)
    (done,) = engine.tick(113 * S)
    engine.submit_dns(answers_table([{"query_name": "api.stripe.com", "observed_ns": 99 * S}]))
    assert done.column("remote_dns").to_pylist() == [None]
    assert engine.dns.answers_in == 1


def test_old_runs_are_evicted() -> None:
    dns = DnsNames(grace_ns=0)
    dns.add(answers_table([
        {"query_name": "a.example", "observed_ns": 0, "ttl_s": 10},
        {"query_name": "b.example", "observed_ns": 100 * S, "ttl_s": 10},
    ]))  # fmt: skip
    assert len(dns) == 2
    assert dns.evict(50 * S) == 1
    flows = flows_table([{"start_ns": 5 * S}, {"start_ns": 105 * S}])
    assert dns.names_for(flows).to_pylist() == [None, "b.example"]


@pytest.mark.parametrize(
    ("row", "column", "text"),
    [
        ({"query_name": "API.stripe.com"}, "query_name", "lower case"),
        ({"query_name": "api.stripe.com."}, "query_name", "trailing dot"),
        ({"query_name": ""}, "query_name", "not empty"),
        ({"address": "203.0.113.010"}, "address", "not an IP address"),
        ({"ttl_s": -1}, "ttl_s", "negative"),
        ({"observed_ns": None}, "observed_ns", "missing"),
    ],
)
def test_a_malformed_answers_file_is_a_clear_error_and_writes_nothing(
    tmp_path: Path, row: dict[str, Any], column: str, text: str
) -> None:
    good = {"exporter": "h1", "local_workload": "billing", "query_name": "api.stripe.com",
            "address": STRIPE, "ttl_s": 60, "observed_ns": 0}  # fmt: skip
    bad = table([good, good, {**good, **row}])
    path = tmp_path / "dns.parquet"
    pq.write_table(bad, path)
    flows = tmp_path / "flows.parquet"
    pq.write_table(flows_table([{"start_ns": S}]), flows)
    out = tmp_path / "out.parquet"
    res = CliRunner().invoke(main, ["attribute", "--flows", str(flows), "--dns", str(path),
                                    "--out", str(out), "--quiet"])  # fmt: skip
    assert res.exit_code != 0
    assert f"file {path}" in res.output and "row 3" in res.output, res.output
    assert f"column {column!r}" in res.output and text in res.output, res.output
    assert not out.exists()


def test_a_comma_or_space_in_a_name_is_escaped_not_taken_for_the_separator() -> None:
    answers = answers_table([
        {"query_name": "a,b.example", "observed_ns": 0},
        {"query_name": "c d.example", "observed_ns": 0},
    ])  # fmt: skip
    check_answers(answers)  # printable bytes are the agent's presentation form: valid
    assert named(flows_table([{"start_ns": S}]), answers) == ["a\\044b.example,c\\032d.example"]


def test_check_answers_passes_a_clean_table() -> None:
    check_answers(answers_table([{"query_name": "api.stripe.com", "observed_ns": 0}]))
    with pytest.raises(ContractError, match="row 2"):
        check_answers(answers_table([
            {"query_name": "ok.example", "observed_ns": 0},
            {"query_name": "Bad.example", "observed_ns": 0},
        ]))  # fmt: skip


def test_attribute_cli_writes_remote_dns_and_counts_it(tmp_path: Path) -> None:
    flows = tmp_path / "flows.parquet"
    pq.write_table(flows_table([{"start_ns": S}, {"start_ns": S, "remote_ip": "198.51.100.1"}]),
                   flows)  # fmt: skip
    dns = tmp_path / "dns.jsonl"
    dns.write_text(json.dumps({"exporter": "h1", "local_workload": "billing",
                               "query_name": "api.stripe.com", "address": STRIPE,
                               "observed_ns": 0, "ttl_s": 60}) + "\n")  # fmt: skip
    out = tmp_path / "out.parquet"
    res = CliRunner().invoke(main, ["attribute", "--flows", str(flows), "--dns", str(dns),
                                    "--out", str(out), "--json", "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["dns"] == {"answers": 1, "runs": 1, "named_flows": 1, "named_unattributed": 1}
    assert pq.read_table(out).column("remote_dns").to_pylist() == ["api.stripe.com", None]
