"""`flowtrail install-units`: systemd unit files for the fleet's server and its agents.

The units run this very Python with `-m flowtrail` (the virtualenv it is installed in), as
root (the agent needs CAP_BPF and friends; the server's data directory is root's). The
agent's token goes into an environment file of mode 0600, never onto its command line.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import click

from flowtrail.errors import InputError

UNIT_DIR = Path("/etc/systemd/system")
ENV_DIR = Path("/etc/flowtrail")
SERVER_UNIT = "flowtrail-server.service"
AGENT_UNIT = "flowtrail-agent.service"


def quote(arg: str) -> str:
    """One ExecStart argument as systemd reads it (quotes, backslashes, % specifiers)."""
    arg = arg.replace("%", "%%")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_start(args: list[str]) -> str:
    return " ".join(quote(a) for a in [sys.executable, "-m", "flowtrail", *args])


def server_unit(data: Path, listen: str, port: int, api_port: int, agent: bool) -> str:
    args = ["up", "--data", str(data), "--listen", listen]
    args += ["--port-collector", str(port), "--port-api", str(api_port), "--status-every", "0"]
    args += [] if agent else ["--no-agent"]
    return f"""[Unit]
Description=flowtrail server: collector, store, query API and console for a fleet
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exec_start(args)}
# SIGTERM stops it cleanly: the last batch is decided and stored (up to ~15 s).
KillSignal=SIGTERM
TimeoutStopSec=90
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"""


def agent_unit(
    url: str, exporter: str, fingerprint: str | None, env_file: Path, spool: Path, interval: str
) -> str:
    args = ["agent", "--sink", "collector", "--out", url, "--exporter", exporter]
    args += ["--ca-fingerprint", fingerprint] if fingerprint else []
    args += ["--spool", str(spool), "--interval", interval]
    return f"""[Unit]
Description=flowtrail agent: this host's TCP connections, sent to the fleet's server
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
# FLOWTRAIL_COLLECTOR_TOKEN (mode 0600)
EnvironmentFile={quote(str(env_file))}
ExecStart={exec_start(args)}
# SIGTERM: the last batch is sent (or kept in the spool) before it exits.
KillSignal=SIGTERM
TimeoutStopSec=90
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"""


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    click.echo(f"flowtrail install-units: wrote {path}")


def _next(unit: str) -> None:
    click.echo(f"then: systemctl daemon-reload && systemctl enable --now {unit}")


UNIT_DIR_OPTION = click.option(
    "--unit-dir",
    default=str(UNIT_DIR),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the unit file goes.",
)


@click.group("install-units")
def install_units() -> None:
    """Write systemd unit files for the fleet's server or an agent.

    \b
      flowtrail install-units server --data /var/lib/flowtrail --listen 0.0.0.0
      FLOWTRAIL_COLLECTOR_TOKEN=... flowtrail install-units agent \\
          --out https://server:4740 --exporter web-7 --ca-fingerprint sha256:...
    """


@install_units.command("server")
@click.option(
    "--data",
    "data_dir",
    default="/var/lib/flowtrail",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The server's data directory.",
)
@click.option("--listen", default="0.0.0.0", show_default=True, help="As flowtrail up --listen.")
@click.option("--port-collector", type=click.IntRange(1, 65535), default=4740, show_default=True)
@click.option("--port-api", type=click.IntRange(1, 65535), default=4741, show_default=True)
@click.option("--with-agent", is_flag=True, help="Capture the server host's own connections too.")
@UNIT_DIR_OPTION
def server(
    data_dir: Path, listen: str, port_collector: int, port_api: int, with_agent: bool,
    unit_dir: Path,
) -> None:  # fmt: skip
    """flowtrail-server.service: `flowtrail up --listen` as a service."""
    from flowtrail.fleet.serving import listen_address

    listen = listen_address(listen)
    unit = server_unit(data_dir.absolute(), listen, port_collector, port_api, with_agent)
    _write(unit_dir / SERVER_UNIT, unit)
    _next(SERVER_UNIT)


@install_units.command("agent")
@click.option("--out", "url", required=True, help="The server's URL (https://HOST:4740).")
@click.option("--exporter", required=True, help="This agent's name, as enrolled.")
@click.option("--ca-fingerprint", default=None, help="As `flowtrail token add` printed it.")
@click.option("--interval", default="10s", show_default=True, help="How often a batch is sent.")
@click.option(
    "--env-dir",
    default=str(ENV_DIR),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where agent.env (the token, mode 0600) goes.",
)
@click.option(
    "--spool",
    default="/var/lib/flowtrail-agent/spool",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where batches wait while the server cannot take them.",
)
@UNIT_DIR_OPTION
def agent(
    url: str, exporter: str, ca_fingerprint: str | None, interval: str, env_dir: Path,
    spool: Path, unit_dir: Path,
) -> None:  # fmt: skip
    """flowtrail-agent.service, sending to the server; the token from FLOWTRAIL_COLLECTOR_TOKEN."""
    from flowtrail.collector.client import TOKEN_ENV, CollectorExporter
    from flowtrail.fleet.ca import parse_fingerprint

    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise InputError(f"set {TOKEN_ENV} to the token `flowtrail token add` printed")
    if any(c.isspace() or c in "\"'\\$" for c in token):
        raise InputError(f"{TOKEN_ENV}: not a token flowtrail made (spaces or quotes in it)")
    pin = parse_fingerprint(ca_fingerprint) if ca_fingerprint else None
    CollectorExporter(url, token, ca_fingerprint=pin)  # the URL checked as the agent will
    env_file = env_dir.absolute() / "agent.env"
    _write(env_file, f"{TOKEN_ENV}={token}\n", 0o600)
    unit = agent_unit(url, exporter, pin, env_file, spool.absolute(), interval)
    _write(unit_dir / AGENT_UNIT, unit)
    _next(AGENT_UNIT)
