"""`python -m flowtrail.collector ARGS` = `flowtrail collector ARGS` (tests run it so)."""

from __future__ import annotations

import sys

import click

from flowtrail.collector.command import collector
from flowtrail.errors import FlowtrailError


def run() -> None:
    try:
        collector.main(sys.argv[1:], prog_name="flowtrail collector", standalone_mode=False)
    except FlowtrailError as exc:
        click.echo(f"flowtrail: error: {exc}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    run()
