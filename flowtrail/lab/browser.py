"""A headless browser for tests and benchmarks of the web console: Debian's chromium driven by
Selenium through Debian's chromedriver, at 1280×800 CSS pixels, light or dark.

Nothing here downloads a browser or a driver: both paths are given to Selenium, so its
driver manager is never asked. `quit_browser` checks that every process of the browser is
gone (each browser has a profile directory of its own, named on its command lines).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WIDTH, HEIGHT = 1280, 800


_PROFILES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()  # driver → dir


class BrowserMissing(RuntimeError):
    """chromium, chromedriver or selenium is not installed."""


def browser_problem() -> str | None:
    """Why no browser can be started here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing (Debian packages chromium, chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


def start_browser(dark: bool = False) -> Any:
    """A headless chromium (a selenium WebDriver); `dark`: prefers-color-scheme is dark."""
    problem = browser_problem()
    if problem is not None:
        raise BrowserMissing(problem)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="flowtrail-chromium-")
    for arg in (
        "--headless=new",
        "--no-sandbox",  # as root (CI) chromium refuses its sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--force-device-scale-factor=1",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--user-data-dir={profile}",
        "--lang=en-US",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=os.devnull)
    try:
        driver = webdriver.Chrome(service=service, options=opts)
    except BaseException:
        shutil.rmtree(profile, ignore_errors=True)
        raise
    _PROFILES[driver] = profile
    # The page's own size, not the window's outer one, is what a person reads at 1280×800.
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
    )
    scheme = "dark" if dark else "light"
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": scheme}]},
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


def quit_browser(driver: Any) -> list[int]:
    """Quit chromium and its driver. Returns the pids that outlived quit() by 20 s (then
    killed: they are this browser's, by its private profile directory); [] normally."""
    service_proc = driver.service.process
    profile = _PROFILES.pop(driver)
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
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(profile, ignore_errors=True)
    return left


def wait_loaded(driver: Any, before: str = "", timeout_s: float = 30.0) -> str:
    """Wait until the console finished a load begun after load number `before` ("" for the
    page's first); returns the new load number."""

    def mark() -> str:
        return str(driver.execute_script("return document.body.dataset.loaded || ''"))

    deadline = time.monotonic() + timeout_s
    while True:
        now = mark()
        if now not in ("", before) and not driver.execute_script(
            "return document.body.dataset.loading"
        ):
            return now
        if time.monotonic() > deadline:
            raise TimeoutError(f"the console did not finish loading within {timeout_s} s")
        time.sleep(0.02)
