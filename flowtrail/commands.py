"""Wires each role's click command into the `flowtrail` group."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    from flowtrail.agent.command import agent
    from flowtrail.cluster.command import cluster_events, cluster_node
    from flowtrail.collector.command import collector
    from flowtrail.demo import demo
    from flowtrail.engine.command import attribute
    from flowtrail.evaluate.command import eval_command
    from flowtrail.query.command import query
    from flowtrail.sim.command import sim
    from flowtrail.up import up

    commands = (
        up, attribute, sim, eval_command, demo, agent, collector, cluster_node, cluster_events,
        query,
    )  # fmt: skip
    for command in commands:
        group.add_command(command)
