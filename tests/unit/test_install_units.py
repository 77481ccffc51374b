"""`flowtrail install-units`: the unit files it writes pass `systemd-analyze verify` (when the
tool is here; else they are parsed as INI and their ExecStart checked), the agent's token is
only in its 0600 environment file, and the ExecStart line runs a `flowtrail` command line
that the CLI accepts."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FLOWTRAIL = [sys.executable, "-m", "flowtrail"]
TOKEN = "k5J0yQ8a1dYz0t4YxW2fQm7vR3nS9bL6cE1uH8pT0gA"
PIN = "sha256:" + "3f" * 32
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def _install(tmp: Path, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = dict(ENV)
    env.pop("FLOWTRAIL_COLLECTOR_TOKEN", None)
    if token is not None:
        env["FLOWTRAIL_COLLECTOR_TOKEN"] = token
    return subprocess.run(
        [*FLOWTRAIL, "install-units", *args, "--unit-dir", str(tmp / "units")],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def _verify(unit: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is not None:
        r = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True,
                           text=True, cwd=unit.parent, timeout=60)  # fmt: skip
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr
        return
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(unit)
    assert set(parser.sections()) == {"Unit", "Service", "Install"}
    assert parser["Install"]["WantedBy"] == "multi-user.target"
    assert Path(shlex.split(parser["Service"]["ExecStart"])[0]).is_absolute()


def _exec_start(unit: Path) -> list[str]:
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_server_and_agent_units(tmp_path: Path) -> None:
    r = _install(tmp_path, "server", "--data", str(tmp_path / "data"), "--listen", "0.0.0.0")
    assert r.returncode == 0, r.stderr
    assert "systemctl daemon-reload && systemctl enable --now flowtrail-server.service" in r.stdout
    r = _install(tmp_path, "agent", "--out", "https://10.0.0.5:4740", "--exporter", "web-7",
                 "--ca-fingerprint", PIN, "--env-dir", str(tmp_path / "etc"),
                 "--spool", str(tmp_path / "spool"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    server, agent = (
        tmp_path / "units/flowtrail-server.service",
        tmp_path / "units/flowtrail-agent.service",
    )
    for unit in (server, agent):
        _verify(unit)
    env = tmp_path / "etc/agent.env"
    assert env.stat().st_mode & 0o777 == 0o600
    assert env.read_text() == f"FLOWTRAIL_COLLECTOR_TOKEN={TOKEN}\n"
    assert TOKEN not in agent.read_text() and f"EnvironmentFile={env}" in agent.read_text()

    argv = _exec_start(server)
    assert argv[:3] == FLOWTRAIL and argv[3] == "up"
    assert argv[argv.index("--listen") + 1] == "0.0.0.0" and "--no-agent" in argv
    argv = _exec_start(agent)
    assert argv[3:6] == ["agent", "--sink", "collector"]
    assert argv[argv.index("--ca-fingerprint") + 1] == PIN
    # The command lines parse as the CLI reads them (--help stops before anything runs).
    for unit in (server, agent):
        argv = _exec_start(unit)
        check = subprocess.run([*argv, "--help"], capture_output=True, text=True, env=ENV,
                               timeout=60)  # fmt: skip
        assert check.returncode == 0, check.stderr


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a unit systemd would refuse does."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("no systemd-analyze here; the INI check stands in")
    unit = tmp_path / "broken.service"
    unit.write_text("[Service]\nExecStart=relative/flowtrail up\n")
    with pytest.raises(AssertionError):
        _verify(unit)


@pytest.mark.parametrize("token", [None, "", "has space in it", 'quote"d'])
def test_agent_unit_needs_a_clean_token(tmp_path: Path, token: str | None) -> None:
    r = _install(tmp_path, "agent", "--out", "https://10.0.0.5:4740", "--exporter", "web-7",
                 "--env-dir", str(tmp_path / "etc"), token=token)  # fmt: skip
    assert r.returncode == 2 and "FLOWTRAIL_COLLECTOR_TOKEN" in r.stderr
    assert not (tmp_path / "units").exists() and not (tmp_path / "etc").exists()
