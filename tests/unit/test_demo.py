"""`flowtrail demo`: the main job's comparison, on a small hostile fleet."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from flowtrail.cli import main


def test_demo_compares_three_ways_and_keeps_files(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        main,
        ["demo", "--scenario", "reuse-storm", "--flows", "15000", "--json", "--out", str(tmp_path)],
    )
    assert res.exit_code == 0, res.output
    got = json.loads(res.output[res.output.index("{") :])["reuse-storm"]
    assert set(got) == {"heartbeat", "plain heartbeat", "event"}
    ours = got["heartbeat"]["eval"]
    assert ours["flows"]["misattributed"] == 0
    assert ours["edges"]["false"] == 0
    assert ours["flows"]["unattributed"] <= 0.01 * ours["flows"]["owned"]
    plain = got["plain heartbeat"]["eval"]["flows"]
    assert plain["unattributed"] > ours["flows"]["unattributed"]  # what the extras buy
    event = got["event"]["eval"]
    assert event["edges"]["false"] > 0.2 * event["edges"]["predicted"]
    kept = {p.name for p in (tmp_path / "reuse-storm").iterdir()}
    assert {"flows.parquet", "truth.parquet", "attributed-heartbeat.parquet"} <= kept
