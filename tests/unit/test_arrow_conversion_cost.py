"""Converting Python values to Arrow costs no import attempt (it is done per batch).

pyarrow tries `import dateutil` on every conversion of a Python value (a scalar, a list);
where dateutil is not installed every attempt searches sys.path again: ~90 µs per call
against ~6 µs, measured. flowtrail depends on python-dateutil for this reason, and makes the
per-batch constants once. This checks the effect, not the package: no import machinery runs
while values are converted.
"""

from __future__ import annotations

import importlib._bootstrap as bootstrap
import threading

import pyarrow as pa
import pyarrow.compute as pc
import pytest


def test_converting_python_values_to_arrow_imports_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pa.scalar(1)  # whatever is imported on first use, once
    attempts: list[str] = []
    real = bootstrap._find_and_load  # type: ignore[attr-defined]
    me = threading.get_ident()

    def counting(name: str, import_: object) -> object:
        # The hook is process-wide: another thread's import (a plugin's, a logger's) is not
        # this conversion's cost.
        if threading.get_ident() == me:
            attempts.append(name)
        return real(name, import_)  # type: ignore[arg-type]

    monkeypatch.setattr(bootstrap, "_find_and_load", counting)
    column = pa.chunked_array([pa.array([1, 2, 3])])
    for _ in range(20):
        pa.scalar(5)
        pa.array(["outbound", "inbound"])
        pc.add(column, 60)
        pc.equal(pa.array(["a"]), "a")
    assert attempts == [], f"imports tried on conversion: {sorted(set(attempts))}"
