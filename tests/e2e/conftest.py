"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def procs() -> Iterator[list[Any]]:
    """Collector processes a test started (each with its Popen as `.p`): killed at the end
    if still running, whatever the test's outcome."""
    started: list[Any] = []
    yield started
    for p in started:
        if p.p.poll() is None:
            p.p.kill()
            p.p.wait()
