"""Waiting in tests without sleeping blindly: for a condition, or for a started process.

rows = until(lambda: api.get("flows"), lambda rows: len(rows) >= 2, timeout_s=40)
await eventually(lambda: node.caught_up, 20, "the node rebuilt")
started(proc, port_file.exists, log_path, timeout_s=60, what="collector")
hello = ready_line(node, log_path, 30, "node")  # {"ready": "<name>/<incarnation>", ...}
stop_all(procs)  # SIGTERM all, then SIGKILL what outlasts the grace period
"""

from __future__ import annotations

import asyncio
import json
import select
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def until(
    fetch: Callable[[], T], done: Callable[[T], bool], timeout_s: float, every_s: float = 0.2
) -> T:
    """Call `fetch` every `every_s` until `done` holds for its result or `timeout_s` has passed.

    Returns the last result either way, so the caller's assertion can show what it got.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        got = fetch()
        if done(got) or time.monotonic() >= deadline:
            return got
        time.sleep(every_s)


async def eventually(
    cond: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.05
) -> None:
    """In a test's event loop: return once `cond()` holds; AssertionError naming `what` if
    it does not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(every_s)


def started(
    proc: subprocess.Popen[Any],
    ready: Callable[[], bool],
    log: Path,
    timeout_s: float,
    what: str,
) -> None:
    """Return once `ready()` holds for the process `proc` just started.

    Fails, with the process's log, as soon as it exits or once `timeout_s` has passed.
    """
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what} did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


def ready_line(
    proc: subprocess.Popen[bytes], log: Path, timeout_s: float, what: str
) -> dict[str, Any]:
    """The JSON line a flowtrail service prints on stdout once ready ({"ready": ...}).

    Fails, with the tail of the process's `log`, if none comes within `timeout_s`.
    """
    assert proc.stdout is not None
    got, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if got else b""
    if b"ready" not in line:
        raise AssertionError(f"{what} not ready: {log.read_text(errors='replace')[-3000:]}")
    hello: dict[str, Any] = json.loads(line)
    return hello


def stop_all(procs: Iterable[subprocess.Popen[Any]], grace_s: float = 15.0) -> None:
    """SIGTERM every process still running, then wait for each; SIGKILL any that outlast
    `grace_s`. All are signalled first, so they shut down side by side."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
