"""flowtrail as an unprivileged user with no writable HOME (root needed to become nobody).

numba caches compiled kernels beside the source or in ~/.cache; when neither is writable the
run must still work: the cache moves to the user's own private directory under /tmp, and when
even that is not trustworthy (made by someone else, writable by others) nothing is cached.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flowtrail.lab.nobody import NOBODY, nobody_python

pytestmark = pytest.mark.kernel  # root: setpriv to nobody


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory nobody may write (pytest's tmp_path sits below a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="flowtrail-nobody-test-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _sim_and_attribute(work: Path) -> subprocess.CompletedProcess[str]:
    argv, env = nobody_python()
    env["HOME"] = "/nonexistent"  # no writable home
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("XDG_CACHE_HOME", None)
    sim = subprocess.run(
        [*argv, "-m", "flowtrail", "sim", "--out", str(work / "sim"), "--flows", "400"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert sim.returncode == 0, sim.stderr
    return subprocess.run(
        [*argv, "-m", "flowtrail", "attribute", "--flows", str(work / "sim" / "flows.parquet"),
         "--events", str(work / "sim" / "events.parquet"), "--out", str(work / "out.parquet")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


def _cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"flowtrail-numba-{NOBODY}"


def test_no_writable_home_caches_in_a_private_directory(open_dir: Path) -> None:
    shutil.rmtree(_cache_dir(), ignore_errors=True)
    done = _sim_and_attribute(open_dir)
    assert done.returncode == 0, done.stderr
    assert "cannot cache" not in done.stderr
    assert pq.read_metadata(open_dir / "out.parquet").num_rows > 0
    st = _cache_dir().stat()
    assert (st.st_uid, st.st_mode & 0o777) == (NOBODY, 0o700)
    assert any(_cache_dir().rglob("*.nbi"))  # the kernels really were cached there


def test_a_cache_directory_made_by_someone_else_is_not_used(open_dir: Path) -> None:
    shutil.rmtree(_cache_dir(), ignore_errors=True)
    _cache_dir().mkdir(mode=0o777)
    os.chmod(_cache_dir(), 0o777)  # root's, writable by all: another user's trap
    try:
        done = _sim_and_attribute(open_dir)
        assert done.returncode == 0, done.stderr
        assert pq.read_metadata(open_dir / "out.parquet").num_rows > 0
        assert not any(_cache_dir().iterdir())  # compiled uncached instead
    finally:
        shutil.rmtree(_cache_dir(), ignore_errors=True)
