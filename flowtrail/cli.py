"""The `flowtrail` command line. Subcommands live beside the code they drive."""

from __future__ import annotations

import sys

import click

from flowtrail import __version__
from flowtrail.commands import COMMANDS, load
from flowtrail.errors import FlowtrailError


class _Group(click.Group):
    """Loads a subcommand's module only when that subcommand runs (see flowtrail.commands),
    and turns FlowtrailError into a one-line message and exit code 2, never a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load(cmd_name) if cmd_name in COMMANDS else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # From the table, not the commands: listing them must not import every module.
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [
            (name, click.Command(name, help=entry.summary).get_short_help_str(limit))
            for name, entry in sorted(COMMANDS.items())
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except FlowtrailError as exc:
            click.echo(f"flowtrail: error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flowtrail")
def main() -> None:
    """flowtrail: every TCP connection as a flow record naming the workloads on both ends.

    \b
    Typical use:
      flowtrail up                        agent + collector + store + query API, one host (root)
      flowtrail demo                      simulate fleets, attribute three ways, compare
      flowtrail sim --out DIR             write a simulated fleet's flows, events, truth
      flowtrail attribute --flows F --out OUT [--events E] [--regions R]
      flowtrail eval --attributed A --truth T
      flowtrail agent --stdout            capture this host's TCP connections (root)
      flowtrail collector --tokens T ...  receive agents' batches over HTTPS, attribute, store
      flowtrail cluster-node --nats URL --region R   one node of a NATS JetStream cluster
      flowtrail query dependencies --db D  who talked to whom, from the store
    """
