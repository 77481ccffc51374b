"""The fleet simulator: churning instances, agents, a control plane, and the truth beside them.

    from flowtrail.sim import simulate, write_sim
    out = simulate("hostile", seed=7, flows=200_000)
    write_sim(out, "sim-out/")

See docs/simulator.md for the model.
"""

from flowtrail.sim.rows import CONN_ID_COLUMN, TRUE_START_COLUMN
from flowtrail.sim.scenarios import (
    DEFAULT_SCENARIO,
    KNOBS,
    SCENARIOS,
    ScenarioConfig,
    scenario,
)
from flowtrail.sim.simulation import SimOutput, simulate, write_sim

__all__ = [
    "CONN_ID_COLUMN",
    "DEFAULT_SCENARIO",
    "KNOBS",
    "SCENARIOS",
    "TRUE_START_COLUMN",
    "ScenarioConfig",
    "SimOutput",
    "scenario",
    "simulate",
    "write_sim",
]
