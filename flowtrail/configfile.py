"""`--config FILE`: a TOML file whose keys are a command's long options.

Keys may sit at the top level or in tables (sections) that only group them for people,
e.g. `[nats] servers = [...]` and `[node] region = "us-east"`; a key is an option's long
name with dashes or underscores (`ack-wait` or `ack_wait`), or the name the option's value
goes by (`servers` for the repeatable `--nats`). Flags and environment variables given
at run time override the file. An unknown key or section is an error naming the file and
the key, so a typo never silently leaves a default in place.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def load_defaults(
    path: str, command: click.Command, sections: tuple[str, ...], skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The file's settings as click's default_map for `command` (param name -> value).

    Sections in `skip` belong to other commands sharing the file: allowed, not read.
    """
    try:
        doc = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--config") from exc
    except tomllib.TOMLDecodeError as exc:
        raise click.BadParameter(f"{path}: not valid TOML: {exc}", param_hint="--config") from exc
    known: dict[str, str] = {}  # a long option's name or a parameter's name -> parameter
    repeatable = {p.name for p in command.params if isinstance(p, click.Option) and p.multiple}
    flags = {  # what the error lists: the long options, as people know them
        o[2:]
        for p in command.params
        if isinstance(p, click.Option) and p.name != "config"
        for o in p.opts
        if o.startswith("--")
    }
    for p in command.params:
        if p.name and p.name != "config" and isinstance(p, click.Option):
            known[p.name] = p.name
            for opt in (*p.opts, *p.secondary_opts):
                if opt.startswith("--") and not opt.startswith("--no-"):
                    known[opt[2:].replace("-", "_")] = p.name
    out: dict[str, Any] = {}

    def take(key: str, value: Any, where: str) -> None:
        name = key.replace("-", "_")
        if name not in known:
            choices = ", ".join(sorted(flags))
            raise click.BadParameter(
                f"{path}: unknown setting {where}{key!r} (known: {choices})",
                param_hint="--config",
            )
        if known[name] in out:
            raise click.BadParameter(f"{path}: {key!r} given twice", param_hint="--config")
        if known[name] in repeatable and isinstance(value, str):
            value = [value]  # one value where a list may go
        out[known[name]] = value

    for key, value in doc.items():
        if isinstance(value, dict):
            if key in skip:
                continue
            if key not in sections:
                allowed = ", ".join(f"[{name}]" for name in (*sections, *skip))
                raise click.BadParameter(
                    f"{path}: unknown section [{key}] (sections: {allowed})",
                    param_hint="--config",
                )
            for sub, sub_value in value.items():
                take(sub, sub_value, f"[{key}] ")
        else:
            take(key, value, "")
    return out


def config_option(*sections: str, skip: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Add `--config FILE` to a command; its settings become the command's defaults."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None:
            assert ctx.command is not None
            ctx.default_map = {
                **(ctx.default_map or {}),
                **load_defaults(value, ctx.command, sections, skip),
            }
        return value

    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        is_eager=True,
        expose_value=False,
        callback=callback,
        help="TOML file of settings (keys = these options' long names, optionally grouped "
        f"in [{'], ['.join(sections)}]); flags override it.",
    )
