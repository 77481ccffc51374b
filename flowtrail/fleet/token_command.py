"""`flowtrail token`: enrol an agent (or a reader) with the fleet's server, or revoke it."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import click

from flowtrail.errors import InputError

DATA_HELP = "The server's data directory (flowtrail up --data)."


def _data_option(f: Any) -> Any:
    return click.option(
        "--data",
        "data_dir",
        default="./flowtrail-data",
        show_default=True,
        type=click.Path(file_okay=False, path_type=Path),
        help=DATA_HELP,
    )(f)


def server_facts(data: Path, url: str | None) -> tuple[str | None, str | None, str | None]:
    """(collector URL, CA fingerprint, API URL) from the running server's up.json, else what
    DATA/tls/ca.pem says (the URL then only from --url)."""
    from flowtrail.fleet.ca import fingerprint_of
    from flowtrail.up import read_state

    state = read_state(data) or {}
    fleet = state.get("fleet") or {}
    fingerprint = fleet.get("ca_fingerprint")
    ca = data / "tls" / "ca.pem"
    if not fleet and ca.exists():
        fingerprint = fingerprint_of(ca)
    return url or fleet.get("url"), fingerprint, fleet.get("api")


@click.group("token")
def token() -> None:
    """Enrol agents and readers with the fleet's server, or revoke them (at once).

    \b
      flowtrail token add web-7 --data /var/lib/flowtrail     prints the agent's command
      flowtrail token add alice --read --data /var/lib/flowtrail
      flowtrail token revoke web-7 --data /var/lib/flowtrail
    """


@token.command("add")
@click.argument("name")
@_data_option
@click.option("--read", "read", is_flag=True, help="A reader: the query API and console only.")
@click.option(
    "--ranges",
    metavar="PREFIX,...",
    default=None,
    help="The addresses this agent's host may claim as its own (docs/collector.md).",
)
@click.option("--url", default=None, help="The server URL agents use [default: from up.json].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
def add(
    name: str, data_dir: Path, read: bool, ranges: str | None, url: str | None, as_json: bool
) -> None:
    """Add a token for agent NAME (its exporter name) and print what that host needs."""
    from flowtrail.fleet import tokens_file

    if read and ranges:
        raise InputError("--ranges: only for an agent's token, not --read")
    path = data_dir / "tokens.txt"
    secret = tokens_file.add(path, name, "read" if read else "flows", ranges)
    server, fingerprint, api = server_facts(data_dir, url)
    shown = server or "https://SERVER:4740"
    if read:
        cmd = ["curl", "-s", "-u", f"{name}:{secret}"]
        cmd += ["--cacert", "ca.pem"] if fingerprint else []
        cmd.append(f"{api or 'https://SERVER:4741'}/api/dependencies?since=1h")
    else:
        cmd = ["flowtrail", "agent", "--sink", "collector", "--out", shown, "--exporter", name]
        cmd += ["--ca-fingerprint", fingerprint] if fingerprint else []
    env = "" if read else f"FLOWTRAIL_COLLECTOR_TOKEN={secret} "
    command = env + shlex.join(cmd)
    if as_json:
        kind = "read" if read else "flows"
        facts = {"name": name, "token": secret, "kind": kind, "url": server, "api": api,
                 "ca_fingerprint": fingerprint, "command": command}  # fmt: skip
        click.echo(json.dumps(facts))
        return
    lines = [
        f"flowtrail token: {name} added to {path} (in force at the server's next request)",
        f"  server       {server or '? (the server is not running: give --url, or start it)'}",
        f"  token        {secret}",
        f"  fingerprint  {fingerprint or '- (a certificate of your own: agents trust its CA)'}",
    ]
    if read:
        lines += [
            "From another host (the console asks for it: any user name, the token as password):",
            f"  {command}",
        ]
        if fingerprint:
            lines.append(f"  (ca.pem: a copy of {data_dir / 'tls' / 'ca.pem'})")
    else:
        unit = ["flowtrail", "install-units", "agent", "--out", shown, "--exporter", name]
        unit += ["--ca-fingerprint", fingerprint] if fingerprint else []
        lines += [
            f"On {name}, as root:",
            f"  {command}",
            "or as a systemd service there:",
            f"  {env}{shlex.join(unit)}",
        ]
    click.echo("\n".join(lines))


@token.command("revoke")
@click.argument("name")
@_data_option
def revoke(name: str, data_dir: Path) -> None:
    """Remove NAME's token: its next request to the running server is refused."""
    from flowtrail.fleet import tokens_file

    path = data_dir / "tokens.txt"
    tokens_file.revoke(path, name)
    click.echo(f"flowtrail token: {name} revoked in {path}; its next request is refused")


@token.command("list")
@_data_option
def list_tokens(data_dir: Path) -> None:
    """The names that hold a token, with what each may do (tokens not shown)."""
    from flowtrail.fleet import tokens_file

    path = data_dir / "tokens.txt"
    if not path.exists():
        raise InputError(f"--data {data_dir}: no tokens file ({path})")
    for name, rest, _line in tokens_file.entries(path):
        click.echo(f"{name:<24} {rest or 'flows'}")
