"""SIGTERM/SIGINT stop a command at any moment — never a hang (real processes, real signals).

`Event.set()` called from a Python signal handler hung ~2% of processes signalled while the main
thread spun in `stop.wait()` (it held the Event's lock when the handler ran on top of it): that
was a CI failure of `flowtrail agent --stdout` after SIGTERM. Hundreds of signals at random
moments make the old handler fail this test with near certainty.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

CHILD = """
import os, signal, sys, threading
from flowtrail.stop_signals import stop_on_signals
stop = threading.Event()
repeats = []
stop_on_signals(stop, on_repeat=repeats.append)
signal.signal(signal.SIGUSR1, lambda s, f: None)  # another handled signal shares the wakeup fd
print("ready", flush=True)
while not stop.wait(0.0002):  # a tight wait: the main thread mostly holds the Event's lock
    pass
if sys.argv[1] == "repeat":
    print("stopping", flush=True)
    while not repeats:
        stop.wait(0.01)
    print("repeat", repeats[0], flush=True)
"""


def _spawn(mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, mode], stdout=subprocess.PIPE, text=True)


def _ready(proc: subprocess.Popen[str]) -> subprocess.Popen[str]:
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def _start(mode: str) -> subprocess.Popen[str]:
    return _ready(_spawn(mode))


def test_a_stop_signal_at_any_moment_ends_the_wait() -> None:
    rng = random.Random(7)
    hung = 0
    for round_ in range(30):
        # Started together, so one child's start-up is not spent beside the others' spinning.
        procs = [_ready(p) for p in [_spawn("once") for _ in range(8)]]
        time.sleep(rng.random() * 0.005)
        for proc in procs:
            time.sleep(rng.random() * 0.002)
            proc.send_signal(signal.SIGTERM if round_ % 2 else signal.SIGINT)
        for proc in procs:
            try:
                assert proc.wait(timeout=10) == 0
            except subprocess.TimeoutExpired:
                hung += 1
                proc.kill()
                proc.wait()
    assert hung == 0, f"{hung} of 240 processes hung after a stop signal"


def test_other_signals_do_not_stop_and_a_repeat_is_reported() -> None:
    proc = _start("repeat")
    assert proc.stdout is not None
    try:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        assert proc.poll() is None  # SIGUSR1 reached the wakeup fd but is not a stop signal
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline() == "stopping\n"
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline() == "repeat 2\n"
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
