"""`python -m flowtrail.cluster ARGS`: one cluster-mode collector node (tests run it so)."""

from __future__ import annotations

from flowtrail.cluster.command import cluster_node
from flowtrail.standalone import run_standalone


def run() -> None:
    run_standalone(cluster_node, "flowtrail cluster-node")


if __name__ == "__main__":
    run()
