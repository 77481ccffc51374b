"""Scenario knobs: each knob is declared once (name, type, bounds, help), scenarios are presets.

The CLI builds its options from `KNOBS`, the docs test checks every knob is documented, and
`ScenarioConfig.validate` is the single place that rejects bad values (naming the flag).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from flowtrail.errors import InputError


@dataclass(frozen=True)
class Knob:
    name: str  # field name; the flag is --name-with-dashes
    kind: type  # int, float (seconds/fractions) or bool
    help: str
    low: float = 0.0  # inclusive lower bound
    high: float | None = None  # inclusive upper bound (fractions: 1.0)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def metavar(self) -> str:
        if self.kind is int:
            return "N"
        if self.high == 1:
            return "FRACTION"
        return "MS" if self.name == "max_skew" else "SECONDS"


KNOBS: tuple[Knob, ...] = (
    Knob(
        "duration", float, "seconds of fleet time in which connections start (or 90s, 20m, 1h)", 1
    ),
    Knob("flows", int, "approximate number of flow rows to write (sets the connection rate)", 1),
    Knob("hosts", int, "hosts with an agent, split evenly over the two regions", 2),
    Knob("services", int, "number of services (workloads); each has instances that churn", 2),
    Knob("replicas", int, "mean instances per service deployment (each drawn 1..2x this)", 1),
    Knob("lifetime", float, "median instance lifetime, seconds (lognormal)", 0.1),
    Knob("restart_delay", float, "max seconds before a replacement instance gets an address", 0),
    Knob(
        "pool_slack",
        int,
        "spare addresses per region pool beyond live instances (reuse)",
        1,
        100_000,
    ),
    Knob("ready_delay", float, "seconds after an address is assigned before connections start", 0),
    Knob("drain", float, "seconds before an address is released that connections stop", 0),
    Knob("max_skew", float, "per-host clock skew bound, milliseconds (uniform +/-)", 0),
    Knob("flush_interval", float, "seconds between an agent's batch flushes", 1),
    Knob("late_batches", float, "fraction of agent batches received minutes late", 0, 1),
    Knob("late_batch_delay", float, "max extra delay of a late batch, seconds", 0),
    Knob("lost_batches", float, "fraction of agent batches lost entirely", 0, 1),
    Knob("event_delay", float, "median control-plane event delivery delay, seconds", 0),
    Knob("late_events", float, "fraction of control-plane events delayed by minutes", 0, 1),
    Knob("late_event_delay", float, "max delay of a late event, seconds", 0),
    Knob("lb_share", float, "fraction of deployments reached through agent-less LBs", 0, 1),
    Knob("lb_lifetime", float, "median LB lifetime before replacement, seconds (0 = never)", 0),
    Knob("lb_drain", float, "seconds an old LB keeps its address after its replacement", 0),
    Knob("vip_share", float, "fraction of deployments reached through a DNAT VIP", 0, 1),
    Knob("nat_missing", float, "fraction of VIP client rows whose NAT info is null", 0, 1),
    Knob("long_lived", float, "fraction of connections lasting many minutes", 0, 1),
    Knob("both_regions", float, "fraction of services deployed in both regions", 0, 1),
    Knob("cross_region", float, "fraction of calls sent to the other region when possible", 0, 1),
    Knob("ipv6_share", float, "fraction of services dual-stack (IPv4 + IPv6 addresses)", 0, 1),
    Knob("external_share", float, "fraction of calls from agent-less external callers", 0, 1),
    Knob(
        "unknown_local",
        float,
        "fraction of connection ends whose agent can't name the local "
        "workload (null local_workload)",
        0,
        1,
    ),
)

KNOB_BY_NAME = {k.name: k for k in KNOBS}


@dataclass(frozen=True)
class ScenarioConfig:
    """The effective knobs of one simulated world. Times are seconds unless said otherwise."""

    name: str
    duration: float
    flows: int
    hosts: int
    services: int
    replicas: int
    lifetime: float
    restart_delay: float
    pool_slack: int
    ready_delay: float
    drain: float
    max_skew: float  # milliseconds
    flush_interval: float
    late_batches: float
    late_batch_delay: float
    lost_batches: float
    event_delay: float
    late_events: float
    late_event_delay: float
    lb_share: float
    lb_lifetime: float
    lb_drain: float
    vip_share: float
    nat_missing: float
    long_lived: float
    both_regions: float
    cross_region: float
    ipv6_share: float
    external_share: float
    unknown_local: float

    def validate(self) -> ScenarioConfig:
        """Raise InputError naming the flag of the first bad knob; return self when sound."""
        for knob in KNOBS:
            value = getattr(self, knob.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InputError(f"{knob.flag}: expected a number, got {value!r}")
            if value != value or value in (float("inf"), float("-inf")):
                raise InputError(f"{knob.flag}: must be a finite number, got {value!r}")
            if knob.kind is int and int(value) != value:
                raise InputError(f"{knob.flag}: must be a whole number, got {value!r}")
            if value < knob.low:
                raise InputError(f"{knob.flag}: must be at least {knob.low:g}, got {value!r}")
            if knob.high is not None and value > knob.high:
                raise InputError(f"{knob.flag}: must be at most {knob.high:g}, got {value!r}")
        if self.vip_share + self.lb_share > 1:
            raise InputError(
                f"--vip-share + --lb-share must be at most 1, got "
                f"{self.vip_share:g} + {self.lb_share:g}"
            )
        if self.max_skew * 1e-3 >= self.flush_interval / 2:
            raise InputError(
                f"--max-skew: must be below half of --flush-interval "
                f"({self.flush_interval * 500:g} ms), got {self.max_skew:g} ms"
            )
        batches = self.hosts * (self.duration / self.flush_interval + 6)
        if batches > 20_000_000:
            raise InputError(
                f"--hosts x --duration / --flush-interval gives {batches:,.0f} agent batches; "
                "at most 20,000,000"
            )
        if self.hosts > 9999:
            raise InputError(f"--hosts: at most 9999 (host names have 4 digits), got {self.hosts}")
        if self.services > 500:
            raise InputError(f"--services: at most 500, got {self.services}")
        if self.replicas > 200:
            raise InputError(f"--replicas: at most 200, got {self.replicas}")
        if self.duration > 7 * 86400:
            raise InputError(f"--duration: at most 7 days, got {self.duration:g} s")
        if self.flows > 50_000_000:
            raise InputError(f"--flows: at most 50,000,000, got {self.flows}")
        return self

    def with_knobs(self, **knobs: Any) -> ScenarioConfig:
        """A copy with some knobs replaced (None = keep the scenario's value)."""
        changes = {k: v for k, v in knobs.items() if v is not None}
        unknown = sorted(set(changes) - set(KNOB_BY_NAME))
        if unknown:
            raise InputError(f"unknown knob(s) {unknown}; known: {sorted(KNOB_BY_NAME)}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CALM = ScenarioConfig(
    name="calm",
    duration=1800,
    flows=40_000,
    hosts=32,
    services=24,
    replicas=3,
    lifetime=1800,
    restart_delay=10,
    pool_slack=400,
    ready_delay=5,
    drain=10,
    max_skew=2,
    flush_interval=60,
    late_batches=0.0,
    late_batch_delay=0,
    lost_batches=0.0,
    event_delay=0.3,
    late_events=0.0,
    late_event_delay=0,
    lb_share=0.2,
    lb_lifetime=0,
    lb_drain=60,
    vip_share=0.3,
    nat_missing=0.02,
    long_lived=0.02,
    both_regions=0.25,
    cross_region=0.1,
    ipv6_share=0.25,
    external_share=0.0,
    unknown_local=0.0,
)

_CHURNY = dataclasses.replace(
    _CALM,
    name="churny",
    duration=1200,
    flows=50_000,
    lifetime=180,
    restart_delay=5,
    pool_slack=12,
    ready_delay=1,
    drain=2,
    max_skew=20,
    late_batches=0.01,
    late_batch_delay=300,
    lost_batches=0.005,
    event_delay=0.5,
    late_events=0.02,
    late_event_delay=300,
    lb_lifetime=1800,
    lb_drain=60,
    nat_missing=0.03,
    long_lived=0.03,
    external_share=0.003,
    unknown_local=0.002,
)

_HOSTILE = dataclasses.replace(
    _CHURNY,
    name="hostile",
    flows=60_000,
    lifetime=30,
    restart_delay=3,
    pool_slack=3,
    ready_delay=0,
    drain=0,
    max_skew=100,
    late_batches=0.03,
    late_batch_delay=600,
    lost_batches=0.01,
    event_delay=1.0,
    late_events=0.05,
    late_event_delay=1200,
    lb_lifetime=300,
    lb_drain=20,
    nat_missing=0.05,
    long_lived=0.04,
    external_share=0.005,
    unknown_local=0.005,
)

_REUSE_STORM = dataclasses.replace(
    _HOSTILE,
    name="reuse-storm",
    lifetime=12,
    restart_delay=1,
    pool_slack=1,
    max_skew=50,
)

SCENARIOS: dict[str, ScenarioConfig] = {s.name: s for s in (_CALM, _CHURNY, _HOSTILE, _REUSE_STORM)}
DEFAULT_SCENARIO = "churny"

SCENARIO_NOTES = {
    "calm": "instances live ~30 min, big pools, readiness/drain grace, 2 ms skew, nothing lost",
    "churny": "instances live ~3 min, small pools, 20 ms skew, a few late/lost batches (default)",
    "hostile": "instances live ~30 s, no grace, 100 ms skew, late/lost batches,\n"
    "events late by up to 20 min, LBs replaced, 5% NAT info missing",
    "reuse-storm": "hostile with ~12 s lifetimes and one spare address: constant reuse",
}


def scenario(name: str) -> ScenarioConfig:
    """The named scenario's knobs; InputError listing the known names otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        known = ", ".join(SCENARIOS)
        raise InputError(f"--scenario: unknown scenario {name!r}; known: {known}") from None


_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_seconds(text: str, flag: str) -> float:
    """'90', '90s', '20m', '1.5h' -> seconds; InputError naming the flag otherwise."""
    m = _DURATION_RE.match(text)
    if not m:
        raise InputError(f"{flag}: expected seconds or a duration like 90s, 20m, 1h; got {text!r}")
    return float(m.group(1)) * _UNIT_S[m.group(2)]
