"""Run flowtrail as user nobody (uid 65534), as an unprivileged user would, for tests.

`setpriv` drops to nobody. The test's own interpreter may be one nobody cannot run (a pyenv
under root's 0700 home, reached through a helper such as env); then the system's python3 of
the same minor version runs instead, with this interpreter's site-packages and the source
tree on PYTHONPATH (same version, so the same compiled extensions load).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

NOBODY = 65534
SETPRIV = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
_SOURCE = str(Path(__file__).resolve().parents[2])


def _runs_as_nobody(python: str, env: dict[str, str]) -> bool:
    probe = subprocess.run(
        [*SETPRIV, python, "-c", "import flowtrail, numba, pyarrow"],
        capture_output=True, env=env, timeout=60,
    )  # fmt: skip
    return probe.returncode == 0


def nobody_python(env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv prefix, environment) running a python as nobody that imports flowtrail."""
    base = dict(os.environ if env is None else env)
    path = [_SOURCE, sysconfig.get_paths()["purelib"], base.get("PYTHONPATH", "")]
    base["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, shutil.which(version) or ""):
        if python and _runs_as_nobody(python, base):
            return [*SETPRIV, python], base
    raise RuntimeError(f"no {version} that user nobody can run and that imports flowtrail")
