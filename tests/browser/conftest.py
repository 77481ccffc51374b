"""A real headless browser for the console's tests: Debian's chromium driven by Selenium
through Debian's chromedriver (nothing downloads a browser or a driver of its own).

Missing chromium or chromedriver skips these tests locally; with CI set (as CI runs set it) or
FLOWTRAIL_REQUIRE_BROWSER=1 it fails instead, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REQUIRE = os.environ.get("FLOWTRAIL_REQUIRE_BROWSER") == "1" or bool(os.environ.get("CI"))
WIDTH, HEIGHT = 1280, 800


def _problem() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing (Debian packages chromium, chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


def make_driver(dark: bool = False) -> Any:
    """A headless chromium at 1280×800 CSS pixels; `dark` asks for prefers-color-scheme dark."""
    problem = _problem()
    if problem is not None:
        if REQUIRE:
            pytest.fail(f"browser tests cannot run: {problem}")
        pytest.skip(f"browser tests need chromium: {problem}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="flowtrail-chromium-")
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI: chromium refuses its sandbox as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--force-device-scale-factor=1",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--user-data-dir={profile}",
        "--lang=en-US",
    ):
        opts.add_argument(arg)
    if dark:
        opts.add_argument("--blink-settings=preferredColorScheme=0")
        opts.add_argument("--force-dark-mode")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager (which would download one) is never asked.
    service = Service(executable_path=CHROMEDRIVER, log_output=os.devnull)
    driver = webdriver.Chrome(service=service, options=opts)
    driver.flowtrail_profile = profile
    # The window's inner size, not its outer one, is what a person reads at 1280×800.
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
    )
    if dark:
        driver.execute_cdp_cmd(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
        )
    return driver


def _processes_using(profile: str) -> list[int]:
    """Pids whose command line names this browser's own profile directory."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if profile.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue  # gone meanwhile
    return pids


def quit_driver(driver: Any) -> None:
    """Quit chromium and its driver; fails if any of the browser's processes outlive it."""
    service_proc = driver.service.process
    profile = driver.flowtrail_profile
    try:
        driver.quit()
    finally:
        if service_proc is not None and service_proc.poll() is None:
            service_proc.kill()
            service_proc.wait(10)
        deadline = time.monotonic() + 20
        left = _processes_using(profile)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = _processes_using(profile)
        for pid in left:  # ours (the profile is a fresh temporary directory): end them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(profile, ignore_errors=True)
    assert left == [], f"browser processes outlived quit(): {left}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = make_driver()
    yield driver
    quit_driver(driver)
