"""The contract's value sets and the query vocabulary, importable without pyarrow.

flowtrail.schema builds the contract's tables from these; the command line offers them as
choices, and `--help` must not pay for Arrow to print them.
"""

from __future__ import annotations

DIRECTIONS = ("outbound", "inbound")
STATES = ("closed", "active")
ACTIONS = ("assign", "unassign")
SOURCES = ("heartbeat", "event", "unattributed")
# How a connection ended (docs/contract.md). The agent's BPF program numbers them in this order.
OUTCOMES = ("established", "refused", "timeout", "failed", "reset", "abandoned")
CONNECTED = ("established", "reset")  # the handshake completed: a connection, not an attempt
ATTEMPTS = ("refused", "timeout", "failed", "abandoned")  # it never did

# Query choices: outcome groups, what top talkers group by, output formats.
OUTCOME_GROUPS = {"connected": CONNECTED, "attempts": ATTEMPTS}
TALKER_KEYS = ("workload", "ip")
# dependencies --by: workloads only, or also a DNS-named side's name or domain (docs/dns.md)
DEPENDENCY_KEYS = ("workload", "name", "domain")
UNNAMED_SIDES = ("caller", "callee", "both")  # flows --unnamed: which side has no name
FORMATS = ("table", "json", "csv")
