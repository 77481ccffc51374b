"""`flowtrail agent` (stub: being built)."""

import click


@click.command()
def agent() -> None:
    """Capture this host's TCP connections with eBPF (being built)."""
    raise click.ClickException("not built yet")
