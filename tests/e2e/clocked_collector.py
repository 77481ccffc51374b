"""Run `flowtrail collector` with its clock in a test's hands (the one stand-in of the test).

    python tests/e2e/clocked_collector.py COLLECTOR-ARGS...
    env: FLOWTRAIL_TEST_CLOCK_FILE  the time (ns) every clock read returns, rewritten by the test
         FLOWTRAIL_TEST_TICK_FDS    "<request fd>,<ack fd>": the tick loop's clock read blocks
                                    until the test writes a time on the request pipe

A simulated hour cannot be lived through in a test, and replay() ticks at instants of its
own grid; a wall clock can do neither. So the process reads its time from a file the test
advances, and its tick loop ticks exactly when and at what time the test asks. The loop
writes "ready" on the ack pipe each time it is about to ask for a time, which is after its
previous tick has finished. Everything else (HTTP, door checks, the write-ahead log with
fsync, the engine, the store, signals, restarts) is the real `flowtrail collector`.
When the request pipe is closed, the loop ticks at the file's time, so SIGTERM stops it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

_CLOCK_FILE = Path(os.environ["FLOWTRAIL_TEST_CLOCK_FILE"])
_req_fd, _ack_fd = (int(x) for x in os.environ["FLOWTRAIL_TEST_TICK_FDS"].split(","))
_requests = os.fdopen(_req_fd, "r")
_acks = os.fdopen(_ack_fd, "w")
_closed = False


def _file_time() -> int:
    return int(_CLOCK_FILE.read_text())


def _clock() -> int:
    global _closed
    caller = sys._getframe(1).f_code.co_name
    if _closed or threading.current_thread().name != "collector-tick" or caller != "_guarded_tick":
        return _file_time()
    try:
        _acks.write("ready\n")
        _acks.flush()
    except BrokenPipeError:
        _closed = True
        return _file_time()
    line = _requests.readline()
    if not line:
        _closed = True
        return _file_time()
    return int(line)


# Before flowtrail is imported: the collector binds time.time_ns as its clock when defined.
time.time_ns = _clock

from flowtrail.collector.__main__ import run  # noqa: E402

if __name__ == "__main__":
    sys.argv[0] = "flowtrail collector"
    run()
