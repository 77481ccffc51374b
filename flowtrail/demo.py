"""`flowtrail demo` (stub: being built)."""

import click


@click.command()
def demo() -> None:
    """Simulate, attribute both ways, compare (being built)."""
    raise click.ClickException("not built yet")
