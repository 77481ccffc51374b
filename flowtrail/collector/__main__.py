"""`python -m flowtrail.collector ARGS` = `flowtrail collector ARGS` (tests run it so)."""

from __future__ import annotations

from flowtrail.collector.command import collector
from flowtrail.standalone import run_standalone


def run() -> None:
    run_standalone(collector, "flowtrail collector")


if __name__ == "__main__":
    run()
