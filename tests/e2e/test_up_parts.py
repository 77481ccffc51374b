"""`flowtrail up`'s small parts without root: the token file, the lock, the docs' coverage."""

from __future__ import annotations

import os
import re
from pathlib import Path

import click
import pytest

from flowtrail.api import ENDPOINTS
from flowtrail.collector.tokens import Tokens
from flowtrail.errors import InputError
from flowtrail.fleet.serving import is_fleet, listen_address
from flowtrail.up import Layout, ensure_token, lock_data_dir, up

DOC = Path(__file__).resolve().parents[2] / "docs" / "up.md"


def test_token_made_once_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    first = ensure_token(path, "host-a")
    assert len(first) >= 40
    assert path.stat().st_mode & 0o777 == 0o600
    assert ensure_token(path, "host-a") == first
    other = ensure_token(path, "host-b")  # another exporter name gets its own line
    assert other != first
    tokens = Tokens.load(path)  # the collector reads what `up` wrote
    a, b = tokens.lookup(first), tokens.lookup(other)
    assert a is not None and a.exporter == "host-a"
    assert b is not None and b.exporter == "host-b"


@pytest.mark.parametrize("name", ["", "two words", "#comment", "tab\there"])
def test_bad_exporter_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match="--exporter"):
        ensure_token(tmp_path / "tokens.txt", name)
    assert not (tmp_path / "tokens.txt").exists()


def test_one_up_per_data_directory(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    fd = lock_data_dir(layout)
    try:
        with pytest.raises(InputError, match=r"in use by another flowtrail up \(pid \d+\)"):
            lock_data_dir(layout)
    finally:
        os.close(fd)
    os.close(lock_data_dir(layout))  # free again once the holder let go


def test_every_option_and_endpoint_is_documented() -> None:
    text = DOC.read_text()
    for param in up.params:
        if isinstance(param, click.Option) and param.name != "help":
            flag = max(param.opts, key=len)
            assert f"`{flag}" in text, f"docs/up.md does not describe {flag}"
    for endpoint, params in ENDPOINTS.items():
        assert f"/api/{endpoint}" in text
        for p in params:
            assert re.search(rf"`{p}`", text), f"docs/up.md does not describe ?{p}="


def test_listen_addresses() -> None:
    """Loopback serves this host; any other IPv4 address (0.0.0.0: all) serves a fleet."""
    assert listen_address("localhost") == "127.0.0.1"
    assert listen_address("127.0.0.9") == "127.0.0.9"
    assert not is_fleet("127.0.0.1") and not is_fleet("127.0.0.9")
    assert is_fleet(listen_address("0.0.0.0")) and is_fleet(listen_address("10.0.0.1"))
    for host in ("example.com", "", "10.0.0"):
        with pytest.raises(InputError, match=r"--listen .*IPv4 address"):
            listen_address(host)
    with pytest.raises(InputError, match="IPv4 only"):
        listen_address("::1")
