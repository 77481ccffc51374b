"""Cluster tests: real nats-server processes on loopback, started and stopped by the tests.

Tests marked `cluster` need the nats-server binary; without it they skip locally and fail in
CI (FLOWTRAIL_REQUIRE_BPF=1 is CI's "require the real parts" switch).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowtrail.cluster.natslab import NatsLab, nats_server_binary


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs nats-server (real JetStream cluster)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    # The marker only: item.keywords would also match this directory's name.
    if item.get_closest_marker("cluster") is None or nats_server_binary() is not None:
        return
    if os.environ.get("FLOWTRAIL_REQUIRE_BPF") == "1":
        pytest.fail("CI requires real parts but nats-server is not installed")
    pytest.skip("nats-server not installed")


@pytest.fixture
def nats_lab(tmp_path: Path) -> Iterator[NatsLab]:
    """A 3-server nats-server cluster with JetStream (file store in tmp_path)."""
    lab = NatsLab(tmp_path / "nats", size=3)
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()
