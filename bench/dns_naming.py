"""What naming flows by DNS costs: DnsNames.add and names_for over synthetic answers and flows.

    python bench/dns_naming.py [--flows 1000000] [--answers 200000] [--repeat 3]

Answers: 2,000 workloads on 200 exporters, 5,000 external addresses, 3,000 names (one address
in ten under a random other name as well), TTLs 30-300 s over an hour. Flows: each follows
one of its workload's answers by 0-400 s (so some are past TTL and grace), one in four to an
address no answer names. Prints the best
of --repeat for each step, per flow and per answer.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa

from flowtrail.engine.dnsnames import DnsNames

S = 1_000_000_000


def tables(n_flows: int, n_answers: int, seed: int = 1) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    workloads = np.array([f"w{i}" for i in range(2000)])
    exporter_of = np.array([f"h{i % 200}" for i in range(2000)])
    addresses = np.array([f"198.18.{i // 250}.{i % 250}" for i in range(5000)])
    names = np.array([f"api{i}.saas{i % 400}.example" for i in range(3000)])
    w = rng.integers(0, 2000, n_answers)
    a = rng.integers(0, 5000, n_answers)
    name = np.where(a % 10 == 0, rng.integers(0, 3000, n_answers), a % 3000)
    answers = pa.table({
        "exporter": exporter_of[w], "local_workload": workloads[w], "query_name": names[name],
        "address": addresses[a], "observed_ns": rng.integers(0, 3600, n_answers) * S,
        "ttl_s": pa.array(rng.integers(30, 300, n_answers), pa.int32()),
    })  # fmt: skip
    # Each flow follows an answer of its workload within 0-400 s (named while the TTL and grace
    # last), or goes to an address no answer names (one in four).
    pick = rng.integers(0, n_answers, n_flows)
    fw, fa = w[pick], a[pick]
    start = answers.column("observed_ns").to_numpy()[pick] + rng.integers(0, 400, n_flows) * S
    remote = np.where(rng.random(n_flows) < 0.75, addresses[fa], "192.0.2.1")
    flows = pa.table({
        "exporter": exporter_of[fw], "local_workload": workloads[fw], "remote_ip": remote,
        "start_ns": start,
    })  # fmt: skip
    return answers, flows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--answers", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    answers, flows = tables(args.flows, args.answers)
    DnsNames().names_for(flows.slice(0, 10))  # compile the kernels first
    add_s, look_s = [], []
    for _ in range(args.repeat):
        dns = DnsNames()
        t = time.perf_counter()
        dns.add(answers)
        runs = len(dns)  # merges
        add_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        named = dns.names_for(flows)
        look_s.append(time.perf_counter() - t)
    print(f"answers {args.answers:,} -> runs {runs:,}; flows {args.flows:,}, "
          f"named {len(named) - named.null_count:,}")  # fmt: skip
    print(f"add + merge: {min(add_s):.3f} s ({1e9 * min(add_s) / args.answers:.0f} ns/answer)")
    print(f"names_for:   {min(look_s):.3f} s ({1e9 * min(look_s) / args.flows:.0f} ns/flow)")


if __name__ == "__main__":
    main()
