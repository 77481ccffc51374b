"""Learning heartbeats into large ownership ranges: `python bench/ownership_merge.py`.

Not a test. Merging claims into the ranges rewrites the segment arrays, O(all segments).
A live node learns many evidence messages per tick of its clock but reads the ranges once
per tick, so claims wait and are merged on the next read (flowtrail.engine.ownership).
This compares, in one run and on the same claims: reading after every message (what a
merge per message costs: the behaviour before claims waited) and reading once per tick.

Ranges hold ADDRESSES addresses first; then each tick brings MESSAGES messages of ROWS
heartbeat claims each, for random known addresses (a later stretch of their ownership).
Prints one JSON line per message size: µs per claim for each way and their ratio.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from flowtrail.engine.ownership import OwnershipRanges


def _filled(addresses: int) -> OwnershipRanges:
    r = OwnershipRanges()
    keys = np.arange(addresses, dtype=np.uint64)
    owners = (keys % 1000).astype(np.int32)
    r.add(keys, owners, np.zeros(addresses, np.int64), np.full(addresses, 10, np.int64))
    _ = r.segments
    return r


def _run(addresses: int, rows: int, messages: int, ticks: int, per_message: bool) -> float:
    """CPU seconds per claim, learning `ticks` ticks of `messages` messages each."""
    r = _filled(addresses)
    rng = np.random.default_rng(1)
    probe = np.arange(16, dtype=np.uint64)
    claims = 0
    began = time.process_time()
    for tick in range(ticks):
        for _ in range(messages):
            keys = rng.integers(0, addresses, rows).astype(np.uint64)
            start = np.full(rows, 20 + tick * 10, np.int64)
            r.add(keys, (keys % 1000).astype(np.int32), start, start + 5)
            claims += rows
            if per_message:
                _ = r.segments
        r.owner_over(probe, np.full(16, 1, np.int64), np.full(16, 2, np.int64))  # the tick
    return (time.process_time() - began) / claims


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--addresses", type=int, default=1_000_000)
    p.add_argument("--rows", type=int, nargs="+", default=[1_000, 10_000])
    p.add_argument("--messages", type=int, default=10, help="evidence messages per tick")
    p.add_argument("--ticks", type=int, default=5)
    args = p.parse_args()
    for rows in args.rows:
        each = _run(args.addresses, rows, args.messages, args.ticks, per_message=True)
        tick = _run(args.addresses, rows, args.messages, args.ticks, per_message=False)
        report = {
            "addresses": args.addresses,
            "rows_per_message": rows,
            "messages_per_tick": args.messages,
            "us_per_claim_merge_each_message": round(each * 1e6, 2),
            "us_per_claim_merge_each_tick": round(tick * 1e6, 2),
            "ratio": round(each / tick, 2),
        }
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
