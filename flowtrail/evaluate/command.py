"""`flowtrail eval` (stub: being built)."""

import click


@click.command("eval")
def eval_command() -> None:
    """Evaluate attribution against truth (being built)."""
    raise click.ClickException("not built yet")
