"""The live engine's CPU per flow at several rates and tick lengths: `python bench/live_engine.py`.

Not a test. A simulated fleet (`churny`, scaled to the rate: hosts and services grow with it,
agents flush every --flush seconds) is fed to the streaming engine as a collector feeds it:
each agent batch handed over when it is received (`StreamingAttribution.submit_flows`, with
the collector clock at its receive time), and `tick` on a grid of --tick seconds. Only the
engine's calls are timed (thread CPU time, so other processes on a shared machine do not
count), over the steady part of the run: from --warm seconds after the first row is received
until connections stop starting (--seconds after it), so the ranges, peer rows and waiting
flows are in place and rows come at the full rate (the sparse tail is not fed). One JSON line
per (rate, tick): engine CPU per flow received in that window, split into submit (Arrow
columns to engine arrays, learning) and tick (deciding, result tables), and the state held
at the end.

    python bench/live_engine.py --rates 50000 200000 --ticks 0.25 1 5 30 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.engine.attributor import Settings
from flowtrail.engine.stream import COALESCE_ROWS, StreamingAttribution
from flowtrail.sim.simulation import simulate

S = 1_000_000_000


def fleet(rate: int, seconds: float, flush: float, seed: int) -> tuple[list[pa.Table], list[int]]:
    """Agent batches in received order, each with its receive time."""
    sim = simulate(
        "churny", seed, flows=int(rate * seconds), duration=seconds, flush_interval=flush,
        hosts=max(32, rate // 250), services=max(24, rate // 800),
    )  # fmt: skip
    f = sim.flows.drop_columns(["sim_true_start_ns", "sim_conn_id"])
    f = f.take(pc.sort_indices(f, [("received_ns", "ascending"), ("exporter", "ascending")]))
    recv = np.asarray(f.column("received_ns"))
    exporter = pc.dictionary_encode(f.column("exporter")).combine_chunks().indices.to_numpy()
    cut = np.flatnonzero((np.diff(recv) != 0) | (np.diff(exporter) != 0)) + 1
    starts = np.concatenate([[0], cut])
    stops = np.concatenate([cut, [len(recv)]])
    batches = [f.slice(int(a), int(b - a)) for a, b in zip(starts, stops, strict=True)]
    return batches, [int(recv[a]) for a in starts]


def run(
    batches: list[pa.Table],
    received: list[int],
    tick_ns: int,
    window: tuple[int, int],
    settings: Settings,
) -> dict[str, float | int]:
    eng = StreamingAttribution(settings, coalesce_rows=COALESCE_ROWS)  # as a collector
    first = received[0] // tick_ns * tick_ns
    measure_from = received[0] + window[0]
    last = received[0] + window[1]
    submit_cpu = tick_cpu = 0.0
    flows = decided = ticks = 0
    worst_tick = 0.0
    next_tick = first + tick_ns

    def do_tick(now: int, timed: bool) -> None:
        nonlocal tick_cpu, decided, ticks, worst_tick
        t = time.thread_time()
        out = eng.tick(now)
        dt = time.thread_time() - t
        if timed:
            tick_cpu += dt
            decided += sum(o.num_rows for o in out)
            ticks += 1
            worst_tick = max(worst_tick, dt)

    for table, recv in zip(batches, received, strict=True):
        if recv > last:
            break
        while recv >= next_tick:
            do_tick(next_tick - 1, next_tick > measure_from)
            next_tick += tick_ns
        timed = recv >= measure_from
        t = time.thread_time()
        eng.submit_flows(table, recv)
        if timed:
            submit_cpu += time.thread_time() - t
            flows += table.num_rows
    do_tick(next_tick - 1, True)  # the tick that takes the last rows
    e = eng.engine
    return {
        "flows": flows,
        "decided": decided,
        "ticks": ticks,
        "us_per_flow": round((submit_cpu + tick_cpu) / flows * 1e6, 3),
        "submit_us_per_flow": round(submit_cpu / flows * 1e6, 3),
        "tick_us_per_flow": round(tick_cpu / flows * 1e6, 3),
        "worst_tick_ms": round(worst_tick * 1e3, 1),
        "rows_per_s": round(flows / ((last - measure_from) / S)),
        "segments": e.ranges.merged,
        "peer_rows": len(e.peers),
        "waiting": eng.waiting,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rates", type=int, nargs="+", default=[50_000, 200_000])
    p.add_argument("--ticks", type=float, nargs="+", default=[0.25, 1.0, 5.0, 30.0])
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of connections")
    p.add_argument("--flush", type=float, default=5.0, help="agents' flush interval, seconds")
    p.add_argument("--warm", type=float, default=5.0, help="seconds not measured at first")
    p.add_argument("--max-wait", type=float, default=180.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    settings = Settings(max_wait_ns=int(args.max_wait * S))
    for rate in args.rates:
        batches, received = fleet(rate, args.seconds, args.flush, args.seed)
        for tick in args.ticks:
            window = (int(args.warm * S), int(args.seconds * S))
            result = run(batches, received, int(tick * S), window, settings)
            print(json.dumps({"rate": rate, "tick_s": tick, **result}), flush=True)


if __name__ == "__main__":
    main()
