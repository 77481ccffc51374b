"""The fleet simulator: churning instances, agents, a control plane, and the truth beside them.

    from flowtrail.sim import simulate, write_sim
    out = simulate("hostile", seed=7, flows=200_000)
    write_sim(out, "sim-out/")

See docs/simulator.md for the model.
"""

from typing import TYPE_CHECKING

from flowtrail.lazy import lazy_names
from flowtrail.sim.scenarios import (
    DEFAULT_SCENARIO,
    KNOBS,
    SCENARIOS,
    ScenarioConfig,
    scenario,
)

if TYPE_CHECKING:
    from flowtrail.sim.rows import CONN_ID_COLUMN, TRUE_START_COLUMN
    from flowtrail.sim.simulation import SimOutput, simulate, write_sim

# The simulation itself (numpy, Arrow) loads on first use: `flowtrail sim --help` reads only
# the scenarios.
_LAZY = {
    "CONN_ID_COLUMN": "flowtrail.sim.rows",
    "TRUE_START_COLUMN": "flowtrail.sim.rows",
    "SimOutput": "flowtrail.sim.simulation",
    "simulate": "flowtrail.sim.simulation",
    "write_sim": "flowtrail.sim.simulation",
}

__getattr__ = lazy_names(__name__, _LAZY)


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
