"""The console's flows table shows the DNS name of a remote side no workload owns (remote_dns),
in a real headless chromium against a real `flowtrail up --no-agent`; ownership wins where a
workload owns the side; the DNS name filter narrows the table."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from console_data import MINUTE, SECOND, _row
from test_console import mark, open_console, settled
from up_process import UpWithFlows

from flowtrail.schema import ATTRIBUTED

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpWithFlows]:
    t = time.time_ns() - MINUTE
    rows = [
        _row(
            1,
            t,
            local_workload="billing",
            remote_ip="203.0.113.10",
            remote_workload=None,
            remote_source="unattributed",
        ),
        _row(
            2,
            t - SECOND,
            local_workload="billing",
            remote_ip="192.0.2.50",
            remote_workload=None,
            remote_source="unattributed",
        ),
        _row(3, t - 2 * SECOND, local_workload="web", remote_workload="api"),
        _row(
            4,
            t - 3 * SECOND,
            local_workload="web",
            remote_ip="198.51.100.1",
            remote_workload=None,
            remote_source="unattributed",
        ),
    ]
    dns = ["api.stripe.com", "assets.blog.example,static.shop.example", "api.internal", None]
    table = pa.Table.from_pylist(rows, schema=ATTRIBUTED.schema).append_column(
        "remote_dns", pa.array(dns, pa.string())
    )
    u = UpWithFlows(tmp_path_factory.mktemp("console-dns") / "data", table)
    yield u
    u.close()


def callee_cells(page: Any) -> dict[str, str]:
    out = {}
    for tr in page.find_elements("css selector", "#flow-table tbody tr[data-flow-id]"):
        text = tr.find_elements("css selector", "td")[2].text
        out[tr.get_attribute("data-flow-id")] = " ".join(text.split())  # name and address wrap
    return out


def test_flows_table_names_unowned_sides_by_dns(browser: Any, up: UpWithFlows) -> None:
    open_console(browser, up, "view=flows")
    cells = callee_cells(browser)
    assert cells["1"].startswith("api.stripe.com (DNS) 203.0.113.10:443"), cells
    assert cells["2"].startswith("assets.blog.example,static.shop.example (DNS)"), cells
    assert cells["3"].startswith("api 10.0.0.2:443"), cells  # ownership wins
    assert cells["4"].startswith("unnamed 198.51.100.1:443"), cells
    before = mark(browser)
    box = browser.find_element("css selector", "#flow-filters input[name=fname]")
    box.send_keys("static.shop.example")
    box.submit()
    settled(browser, before)
    assert set(callee_cells(browser)) == {"2"}
    assert "fname=static.shop.example" in browser.current_url
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
