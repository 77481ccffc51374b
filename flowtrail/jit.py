"""`compiled`: numba's njit with a compile cache that never stops a run.

numba caches compiled code beside the source file (`__pycache__`) or in ~/.cache/numba, and
when neither is writable (a packaged install run by a user without a writable HOME) its
`cache=True` raises "cannot cache function" at import. Then the cache goes to a directory of
this user's own under the temporary directory (created 0700, used only if this user owns it
and nobody else can write it), and failing that the kernels compile at every start (a few
seconds), uncached but working.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from numba import njit
from numba.core import config


def private_cache_dir() -> str | None:
    """<tmp>/flowtrail-numba-<uid>, made 0700; None unless it is this user's own and private."""
    path = Path(tempfile.gettempdir()) / f"flowtrail-numba-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()  # not through a symlink someone else planted
    except OSError:
        return None
    private = stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022
    return str(path) if private and os.access(path, os.W_OK | os.X_OK) else None


def compiled(func: Callable[..., Any]) -> Any:
    """njit(nogil=True) with the best cache available (see the module doc). Any, as numba's
    own dispatchers are: the kernels' types are inferred by numba, not declared."""
    try:
        return njit(cache=True, nogil=True)(func)
    except RuntimeError as exc:
        if "cannot cache" not in str(exc):
            raise
    if not getattr(config, "CACHE_DIR", ""):  # numba reads it at each decoration
        fallback = private_cache_dir()
        if fallback is not None:
            setattr(config, "CACHE_DIR", fallback)  # noqa: B010 (numba declares it at run time)
            try:
                return njit(cache=True, nogil=True)(func)
            except RuntimeError:
                pass
    return njit(cache=False, nogil=True)(func)
