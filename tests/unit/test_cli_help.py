"""`flowtrail --help` and every subcommand's `--help` load no heavy module.

Importing pyarrow, numpy, numba, polars or DuckDB costs most of a second; help text needs
none of them. Checked in a fresh interpreter (this test process has them loaded already).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click

from flowtrail.cli import main
from flowtrail.commands import COMMANDS, load

HEAVY = ("pyarrow", "polars", "duckdb", "numpy", "numba")

# Walks the real command tree (groups included) through click, asking each for --help.
_PROBE = """
HEAVY = ("pyarrow", "polars", "duckdb", "numpy", "numba")
import contextlib, io, json, sys
import click
from flowtrail.cli import main

def helps(group, path):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield [*path, name]
        if isinstance(command, click.Group):
            yield from helps(command, [*path, name])

paths = [[]] + list(helps(main, []))
texts = {}
for path in paths:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([*path, "--help"], prog_name="flowtrail", standalone_mode=False)
        except SystemExit:
            pass
    texts[" ".join(path)] = out.getvalue()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print(json.dumps({"texts": texts, "heavy": heavy}))
"""


def test_every_help_answers_without_loading_a_heavy_module() -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, check=True
    )
    got = json.loads(done.stdout)
    texts: dict[str, str] = got["texts"]
    # Every command and query subcommand was asked, and each printed its usage.
    assert {"", "attribute", "collector", "query", "query flows", "up"} <= set(texts)
    assert len(texts) >= len(COMMANDS) + 1
    for path, text in texts.items():
        assert text.startswith(f"Usage: flowtrail {path}".rstrip()), (path, text[:200])
    assert got["heavy"] == []


def test_the_command_table_matches_the_commands() -> None:
    """The top-level listing comes from the table; each entry must say what its command says."""
    ctx = click.Context(main)
    for name, entry in COMMANDS.items():
        command = load(name)
        assert command.name == name
        assert entry.summary == command.get_short_help_str(limit=10**6), name
    assert main.list_commands(ctx) == sorted(COMMANDS)


def test_the_demo_names_its_methods_before_loading_them() -> None:
    from flowtrail.demo import METHOD_NAMES, methods

    assert tuple(methods()) == METHOD_NAMES
