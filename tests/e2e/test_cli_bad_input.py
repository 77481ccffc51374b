"""Bad input through the real `flowtrail` command (a process): exit status 2 and one line on
stderr naming the file, row and column, or the flag and path, never a traceback (README).

Tables are written by hand so that each case holds exactly one fault.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

HEADER = ("flow_id,exporter,local_ip,local_port,remote_ip,remote_port,direction,start_ns,"
          "end_ns,state,bytes_sent,bytes_received,local_workload,received_ns")  # fmt: skip
T = 1_735_689_600_000_000_000


def flow_line(n: int, **cells: object) -> str:
    row: dict[str, object] = {
        "flow_id": f"f{n}", "exporter": "h1", "local_ip": "10.0.0.1", "local_port": 40_000 + n,
        "remote_ip": "10.0.0.2", "remote_port": 443, "direction": "outbound",
        "start_ns": T + n, "end_ns": T + n + 5, "state": "closed", "bytes_sent": 1,
        "bytes_received": 1, "local_workload": "web", "received_ns": T + 10**9 + n,
    }  # fmt: skip
    row.update(cells)
    return ",".join(str(row[c]) for c in HEADER.split(","))


def flows_csv(path: Path, *lines: str) -> Path:
    path.write_text("\n".join([HEADER, flow_line(1), *lines, flow_line(9)]) + "\n")
    return path


def flowtrail(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [sys.executable, "-m", "flowtrail", *map(str, args)],
        capture_output=True, text=True, timeout=120, env=env, cwd=cwd,
    )  # fmt: skip


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused run (exit 2)."""
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flowtrail: error: "), res.stderr
    return lines[0]


def attribute(flows: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return flowtrail("attribute", "--flows", flows, "--out", out, "--quiet")


# -- values out of their type's range -------------------------------------------------------


def test_a_uint64_port_beyond_int32_names_its_row(tmp_path: Path) -> None:
    f = tmp_path / "f.csv"
    flows_csv(f, flow_line(2), flow_line(3))
    table = pacsv.read_csv(f)
    ports = pa.array([1, 2, 2**64 - 1, 4], pa.uint64())
    parquet = tmp_path / "u64.parquet"
    pq.write_table(table.set_column(3, "local_port", ports), parquet)
    line = one_line_error(attribute(parquet, tmp_path / "o.parquet"))
    assert line == (f"flowtrail: error: file {parquet}, row 3, column 'local_port': "
                    "value out of range for int32 (value 18446744073709551615)")  # fmt: skip
    assert not (tmp_path / "o.parquet").exists()


def test_a_csv_time_beyond_int64_names_its_row(tmp_path: Path) -> None:
    f = flows_csv(tmp_path / "f.csv", flow_line(2, start_ns="99999999999999999999"))
    line = one_line_error(attribute(f, tmp_path / "o.parquet"))
    assert line == (f"flowtrail: error: file {f}, row 2, column 'start_ns': "
                    "value out of range for int64 (value '99999999999999999999')")  # fmt: skip


def test_a_received_time_the_replay_clock_cannot_reach_names_its_row(tmp_path: Path) -> None:
    f = flows_csv(tmp_path / "f.csv", flow_line(2), flow_line(3, received_ns=2**63 - 1))
    line = one_line_error(attribute(f, tmp_path / "o.parquet"))
    assert line.startswith(f"flowtrail: error: file {f}, row 3, column 'received_ns': ")
    assert str(2**63 - 1) in line


# -- end before start, the same rule as the collector's ----------------------------------------


def test_attribute_refuses_a_flow_that_ends_before_it_starts(tmp_path: Path) -> None:
    f = flows_csv(tmp_path / "f.csv", flow_line(2, start_ns=T + 50, end_ns=T + 49))
    line = one_line_error(attribute(f, tmp_path / "o.parquet"))
    assert line == (f"flowtrail: error: file {f}, row 2, column 'end_ns': "
                    f"{T + 49} is before start_ns {T + 50}")  # fmt: skip


# -- only an empty cell is null ----------------------------------------------------------------


def test_na_null_and_nan_are_names_not_missing_values(tmp_path: Path) -> None:
    words = ["NA", "null", "N/A", "NaN", "nan", "NULL", "#N/A"]
    lines = [flow_line(2 + i, local_workload=w) for i, w in enumerate(words)]
    f = flows_csv(tmp_path / "f.csv", *lines, flow_line(8, local_workload=""))
    out = tmp_path / "o.parquet"
    res = attribute(f, out)
    assert res.returncode == 0, res.stderr
    got = pq.read_table(out).sort_by("flow_id")["local_workload"].to_pylist()
    assert got == ["web", *words, None, "web"]


def test_nan_in_an_integer_column_is_an_error_not_a_null(tmp_path: Path) -> None:
    f = flows_csv(tmp_path / "f.csv", flow_line(2, bytes_sent="NaN"))
    line = one_line_error(attribute(f, tmp_path / "o.parquet"))
    assert line.startswith(f"flowtrail: error: file {f}, row 2, column 'bytes_sent': ")
    assert "'NaN'" in line


def test_a_truth_interval_ending_at_nan_is_an_error_not_still_owned(tmp_path: Path) -> None:
    flows = flows_csv(tmp_path / "f.csv")
    attributed = tmp_path / "a.parquet"
    assert attribute(flows, attributed).returncode == 0
    truth = tmp_path / "truth.csv"
    truth.write_text(
        f"ip,workload,from_ns,to_ns\n10.0.0.2,db,{T},{T + 9}\n10.0.0.2,db,{T + 9},NaN\n"
    )
    line = one_line_error(flowtrail("eval", "--attributed", attributed, "--truth", truth))
    assert line.startswith(f"flowtrail: error: file {truth}, row 2, column 'to_ns': ")


# -- outputs that cannot be written --------------------------------------------------------


def test_out_under_a_file_or_under_proc_is_named_before_any_work(tmp_path: Path) -> None:
    f = flows_csv(tmp_path / "f.csv")
    a_file = tmp_path / "plain"
    a_file.write_text("")
    under_file = a_file / "sub"
    for cmd in (["sim", "--flows", "50", "--out", under_file],
                ["demo", "--flows", "50", "--scenario", "calm", "--out", under_file],
                ["agent", "--out", under_file]):  # fmt: skip
        line = one_line_error(flowtrail(*cmd))
        assert line.startswith(f"flowtrail: error: --out {under_file}: cannot write: "), line
    # Under /proc: a directory that cannot be made, or one where no file can be created.
    for out in (under_file / "o.parquet", Path("/proc/flowtrail-test/o.parquet"),
                Path("/proc/flowtrail-test.parquet")):  # fmt: skip
        line = one_line_error(attribute(f, out))
        assert line.startswith(f"flowtrail: error: --out {out}: cannot write: "), line
