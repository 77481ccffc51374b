"""One headless browser per test module (browser_driver.py says which and how)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from browser_driver import make_driver, quit_driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = make_driver()
    yield driver
    quit_driver(driver)
