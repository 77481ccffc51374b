"""Run one click command as its own program (`python -m flowtrail.X`), with the CLI's errors."""

from __future__ import annotations

import sys

import click

from flowtrail.errors import FlowtrailError


def run_standalone(command: click.Command, prog_name: str) -> None:
    """Like the `flowtrail` group: a FlowtrailError is one line on stderr and exit status 2."""
    try:
        command.main(sys.argv[1:], prog_name=prog_name, standalone_mode=False)
    except FlowtrailError as exc:
        click.echo(f"flowtrail: error: {exc}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
