"""Test tiers: unit tests need nothing; `kernel` tests need root and the real kernel.

Locally a missing capability skips a kernel test; with FLOWTRAIL_REQUIRE_BPF=1 (as .ci/run
sets) it fails instead, so CI can never pass by skipping the eBPF work.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REQUIRE_BPF = os.environ.get("FLOWTRAIL_REQUIRE_BPF") == "1"


def kernel_capability_problem() -> str | None:
    """Why kernel tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "not root"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "no BTF at /sys/kernel/btf/vmlinux"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    # The marker, not item.keywords: keywords also hold directory and test names, so every
    # test under tests/kernel/ would be gated, unprivileged or not.
    if item.get_closest_marker("kernel") is None:
        return
    problem = kernel_capability_problem()
    if problem is None:
        return
    if REQUIRE_BPF:
        pytest.fail(f"FLOWTRAIL_REQUIRE_BPF=1 but this kernel test cannot run: {problem}")
    pytest.skip(f"kernel test needs root and BTF: {problem}")
