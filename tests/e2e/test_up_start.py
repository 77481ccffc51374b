"""`flowtrail up` starts cleanly or not at all, and knows a stale up.json (real processes).

A start refused for a port in use or a bad identity file leaves nothing behind: no data
directory, no store, no certificate. An `up` killed with SIGKILL leaves its up.json; the
next start says so and removes it before anything else, and `read_state` calls it stale.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowtrail.lab.wait import started
from flowtrail.up import read_state


def up(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowtrail.up", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.mark.parametrize("flag", ["--port-collector", "--port-api"])
def test_a_port_in_use_refuses_before_anything_is_made(
    tmp_path: Path, busy_port: int, flag: str
) -> None:
    data = tmp_path / "data"
    other = "--port-api" if flag == "--port-collector" else "--port-collector"
    done = up("--no-agent", "--data", str(data), flag, str(busy_port), other, "0")
    assert done.returncode == 2, done.stderr
    assert f"{flag} {busy_port}" in done.stderr and "in use" in done.stderr
    assert "Traceback" not in done.stderr
    assert not data.exists()


def test_a_port_in_use_leaves_an_existing_directory_untouched(
    tmp_path: Path, busy_port: int
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    done = up("--no-agent", "--data", str(data), "--port-api", str(busy_port))
    assert done.returncode == 2, done.stderr
    assert list(data.iterdir()) == []  # no store, no tokens, no certificate, no lock


@pytest.mark.kernel  # root: the agent's checks pass, so the identity file is what fails
def test_a_bad_identity_file_refuses_before_anything_is_made(tmp_path: Path) -> None:
    data = tmp_path / "data"
    identity = tmp_path / "identity.toml"
    identity.write_text('[[register]]\nworkload = "web"\ncgroup = "no-slash"\n')
    done = up("--data", str(data), "--identity", str(identity), "--port-collector", "0",
              "--port-api", "0")  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert str(identity) in done.stderr and "entry 1" in done.stderr
    assert not data.exists()


def test_a_killed_up_leaves_a_stale_state_that_is_recognised(tmp_path: Path) -> None:
    data, log_path = tmp_path / "data", tmp_path / "up.log"

    def start() -> subprocess.Popen[bytes]:
        with open(log_path, "wb") as log:
            p = subprocess.Popen(
                [sys.executable, "-m", "flowtrail.up", "--no-agent", "--data", str(data),
                 "--port-collector", "0", "--port-api", "0"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

        def ready() -> bool:  # this process's up.json
            state = read_state(data)
            return state is not None and state["pid"] == p.pid

        started(p, ready, log_path, 60, "flowtrail up --no-agent")
        return p

    first = start()
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    left = json.loads((data / "up.json").read_text())
    assert left["pid"] == first.pid  # a SIGKILL gives no chance to remove it
    assert read_state(data) is None  # but it is known to be stale

    second = start()
    try:
        out = log_path.read_text()
        assert f"left by pid {first.pid}, which no longer runs" in out, out
        assert json.loads((data / "up.json").read_text())["pid"] == second.pid
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log_path.read_text()
    assert not (data / "up.json").exists()
    assert os.path.exists(data / "flows.duckdb")
