"""The browser for the console's tests (flowtrail.lab.browser: Debian's chromium through
Debian's chromedriver, driven by Selenium; nothing downloads a browser).

Missing chromium, chromedriver or selenium skips these tests locally; with CI set (as CI runs
set it) or FLOWTRAIL_REQUIRE_BROWSER=1 it fails instead, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from flowtrail.lab.browser import BrowserMissing, quit_browser, start_browser

REQUIRE = os.environ.get("FLOWTRAIL_REQUIRE_BROWSER") == "1" or bool(os.environ.get("CI"))


def make_driver(dark: bool = False) -> Any:
    try:
        return start_browser(dark)
    except BrowserMissing as exc:
        if REQUIRE:
            pytest.fail(f"browser tests cannot run: {exc}")
        pytest.skip(f"browser tests need a browser: {exc}")


def quit_driver(driver: Any) -> None:
    left = quit_browser(driver)
    assert left == [], f"browser processes outlived quit(): {left}"
