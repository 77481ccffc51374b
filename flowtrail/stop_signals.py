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

Repeat = Callable[[int], None]
# One wakeup fd per process: later calls add their Event to the first call's watcher.
_watched: list[tuple[threading.Event, Repeat | None]] = []
_lock = threading.Lock()


def _ignore(signum: int, frame: FrameType | None) -> None:
    """A Python-level handler must exist (else the default action kills); the work is elsewhere."""


def stop_on_signals(stop: threading.Event, *, on_repeat: Repeat | None = None) -> None:
    """Set `stop` on SIGINT or SIGTERM; call `on_repeat(count)` on every later one.

    Call from the main thread (signal handlers can only be installed there). The process's
    wakeup fd is taken by the first call; do not combine with asyncio's add_signal_handler.
    """
    with _lock:
        _watched.append((stop, on_repeat))
        if len(_watched) > 1:
            return
    read_fd, write_fd = os.pipe()
    try:
        os.set_blocking(write_fd, False)  # the C handler must never block
        # The fd first: a signal landing between the two steps still reaches the pipe.
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for sig in STOP_SIGNALS:
            signal.signal(sig, _ignore)
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        with _lock:
            _watched.clear()
        raise
    threading.Thread(target=_watch, args=(read_fd,), name="flowtrail-signals", daemon=True).start()


def _watch(read_fd: int) -> None:
    wanted = {int(s) for s in STOP_SIGNALS}
    seen = 0
    while True:
        data = os.read(read_fd, 64)
        for signum in data:
            if signum not in wanted:
                continue  # other handled signals share the fd
            seen += 1
            with _lock:
                watched = list(_watched)
            for stop, on_repeat in watched:
                stop.set()
                if seen > 1 and on_repeat is not None:
                    on_repeat(seen)
