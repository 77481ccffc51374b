"""`flowtrail sim` (stub: being built)."""

import click


@click.command()
def sim() -> None:
    """Simulate a fleet (being built)."""
    raise click.ClickException("not built yet")
