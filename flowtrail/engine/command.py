"""`flowtrail attribute` (stub: being built)."""

import click


@click.command()
def attribute() -> None:
    """Attribute flows offline (being built)."""
    raise click.ClickException("not built yet")
