"""flowtrail: eBPF TCP flow logs attributed to the workloads on both ends."""

from flowtrail.errors import CapabilityError, ContractError, ExportError, FlowtrailError, InputError

__version__ = "0.1.0"
__all__ = [
    "CapabilityError",
    "ContractError",
    "ExportError",
    "FlowtrailError",
    "InputError",
    "__version__",
]
