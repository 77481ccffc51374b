"""`flowtrail eval`: how right was an attribution, measured against ground truth."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from flowtrail.errors import InputError


@click.command("eval")
@click.option(
    "--attributed",
    "attributed_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Attributed flows (the collector's output table): Parquet, CSV or JSON Lines.",
)
@click.option(
    "--truth",
    "truth_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ground truth ownership intervals (ip, workload, from_ns, to_ns; optionally "
    "exporter and port, for addresses owned per host or per translated port).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON, not a table.")
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the report as JSON to this file.",
)
@click.option(
    "--worst",
    default=5,
    show_default=True,
    type=click.IntRange(min=0),
    help="How many of the worst false edges to list.",
)
def eval_command(
    attributed_path: Path, truth_path: Path, as_json: bool, out_path: Path | None, worst: int
) -> None:
    """Judge attributed flows against truth: misattributed and unattributed flows, false and
    missing workload dependency edges, each per remote_source.

    A row is misattributed when remote_workload is set and is not who truly owned its remote
    address (nat_remote_ip when set, else remote_ip) at its start (sim_true_start_ns when the
    table has it, else start_ns), by the narrowest truth interval covering the row (one given
    for the row's exporter, its remote port, both, or the address alone). Exit status 0 on
    success, 2 on bad input.
    """
    # Loaded here, not for `--help`: the metrics need polars and Arrow.
    from flowtrail.evaluate.metrics import evaluate
    from flowtrail.evaluate.render import format_report
    from flowtrail.schema import ATTRIBUTED, TRUTH
    from flowtrail.tables import read_table

    attributed = read_table(attributed_path, ATTRIBUTED)
    truth = read_table(truth_path, TRUTH)
    report = evaluate(
        attributed,
        truth,
        worst=worst,
        attributed_path=str(attributed_path),
        truth_path=str(truth_path),
    )
    text = json.dumps(report.to_dict(), indent=2)
    if out_path is not None:
        _write_text(out_path, text + "\n")
    click.echo(text if as_json else format_report(report))


def _write_text(path: Path, text: str) -> None:
    """Atomic, like the table writers: a reader never sees half a report."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"--out {path}: cannot write the report: {exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
