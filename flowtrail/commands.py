"""Where each role's click command lives, loaded only when it is the one being run.

`flowtrail --help` lists the commands from this table alone; `flowtrail X ...` imports X's
module only. Each module keeps Arrow, numpy, DuckDB and the engine out of its import-time
code, so that any `--help` answers without loading them (tests/unit/test_cli_help.py).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import click


@dataclass(frozen=True)
class Entry:
    module: str
    attribute: str
    summary: str  # the command's short help, checked against the command itself by a test


COMMANDS: dict[str, Entry] = {
    "up": Entry(
        "flowtrail.up", "up",
        "Run agent + collector + store + query API on this machine, until Ctrl-C.",
    ),
    "token": Entry(
        "flowtrail.fleet.token_command", "token",
        "Enrol agents and readers with the fleet's server, or revoke them (at once).",
    ),
    "install-units": Entry(
        "flowtrail.fleet.units_command", "install_units",
        "Write systemd unit files for the fleet's server or an agent.",
    ),
    "attribute": Entry(
        "flowtrail.engine.command", "attribute",
        "Name the remote workload of every flow, replaying rows in received_ns order.",
    ),
    "sim": Entry(
        "flowtrail.sim.command", "sim",
        "Simulate a two-region fleet whose instances churn and reuse addresses, with agents, "
        "load balancers, DNAT VIPs and a control-plane event feed; write what the agents and "
        "the control plane would report beside the truth (who owned each address when).",
    ),
    "eval": Entry(
        "flowtrail.evaluate.command", "eval_command",
        "Judge attributed flows against truth: misattributed and unattributed flows, false "
        "and missing workload dependency edges, each per remote_source.",
    ),
    "demo": Entry(
        "flowtrail.demo", "demo",
        "Simulate a fleet, attribute it three ways, and print how each did against the truth.",
    ),
    "agent": Entry(
        "flowtrail.agent.command", "agent",
        "Capture this host's TCP connections with eBPF and export named flow records.",
    ),
    "collector": Entry(
        "flowtrail.collector.command", "collector",
        "Receive flow batches from agents, attribute remote workloads, store the results.",
    ),
    "cluster-node": Entry(
        "flowtrail.cluster.command", "cluster_node",
        "Run one collector node of a region until SIGTERM or SIGINT.",
    ),
    "cluster-events": Entry(
        "flowtrail.cluster.command", "cluster_events",
        "Publish a control-plane `events` table (IP assign/unassign) into a cluster.",
    ),
    "serve": Entry(
        "flowtrail.query.serve", "serve",
        "Serve the query API (/api/*) and the web console (/) over a Parquet lake.",
    ),
    "query": Entry(
        "flowtrail.query.command", "query",
        "Ask the store about attributed flows: dependencies, top talkers, flows, health.",
    ),
}  # fmt: skip


def load(name: str) -> click.Command:
    entry = COMMANDS[name]
    command = getattr(importlib.import_module(entry.module), entry.attribute)
    assert isinstance(command, click.Command)
    return command
