"""Does the peer-row index's slack change attribution? `python bench/peer_slack_accuracy.py`.

Not a test. For each simulator scenario (seed 0, default size) and each slack (seconds the
index keeps rows beyond max_wait), replays the flows with events and regions and judges the
result against the simulator's truth. Prints one line per (scenario, slack): flows, owned,
correct, misattributed, unattributed, false edges. A cluster node's memory is mostly this
index, so a slack that changes nothing here is a cheap way to shrink it (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse

from flowtrail.engine.attributor import Settings
from flowtrail.engine.replay import replay
from flowtrail.evaluate.metrics import evaluate
from flowtrail.sim.scenarios import SCENARIOS
from flowtrail.sim.simulation import simulate

SECOND = 1_000_000_000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--slack", type=int, nargs="+", default=[600, 60, 0], help="seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenario", nargs="+", default=sorted(SCENARIOS), choices=sorted(SCENARIOS))
    args = p.parse_args()
    for name in args.scenario:
        sim = simulate(name, args.seed)
        for slack in args.slack:
            settings = Settings(peer_slack_ns=slack * SECOND)
            result = replay(sim.flows, sim.events, sim.regions, settings=settings)
            report = evaluate(result.table, sim.truth)
            f = report.flows
            print(
                f"{name:12} slack={slack:>4}s flows={f.rows} owned={f.owned} correct={f.correct} "
                f"misattributed={f.misattributed} unattributed={f.unattributed} "
                f"false_edges={report.edges.false}",
                flush=True,
            )


if __name__ == "__main__":
    main()
