"""The web console in a real headless chromium against a real `flowtrail up --no-agent` whose
store holds known flows: what a person sees (the map's nodes, edges and numbers, an edge's
flows, the flows table under a filter, the health figures, the time window, the URL) is
checked against the numbers written and against the API's own answers, with no errors in
the browser's console. Screenshots of each view are taken on the way (docs/ keeps copies:
FLOWTRAIL_SCREENSHOTS=docs writes them there).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from browser_driver import make_driver, quit_driver
from console_data import (
    EXTERNAL_NETWORKS,
    MINUTE,
    external_flows,
    known_flows,
    many_edges_flows,
    simulated_flows,
)
from up_process import UpWithFlows

pytestmark = pytest.mark.slow

WAIT_S = 30.0  # generous: the machine is shared


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpWithFlows]:
    u = UpWithFlows(tmp_path_factory.mktemp("console") / "data", known_flows(time.time_ns()))
    yield u
    u.close()


@pytest.fixture()
def page(browser: Any, up: UpWithFlows) -> Iterator[Any]:
    """The browser, its console log emptied first and checked for errors after the test."""
    browser.get_log("browser")
    yield browser
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


def js(driver: Any, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def wait(driver: Any, cond: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(cond, what)


def mark(driver: Any) -> str:
    return str(js(driver, "return document.body.dataset.loaded || ''"))


def settled(driver: Any, before: str) -> None:
    """Wait for a load begun after `before` (the console's load counter) to finish."""
    wait(
        driver,
        lambda d: mark(d) not in ("", before) and not js(d, "return document.body.dataset.loading"),
        f"the console to finish loading (after load {before!r})",
    )
    banner = driver.find_element("id", "error")
    assert not banner.is_displayed(), banner.text


def open_console(driver: Any, up: UpWithFlows, query: str = "") -> None:
    driver.get(f"{up.url}/?refresh=0{'&' + query if query else ''}")
    settled(driver, "")


def texts(driver: Any, css: str) -> list[str]:
    return [e.text for e in driver.find_elements("css selector", css)]


def node_names(driver: Any) -> set[str]:
    return {
        e.get_attribute("data-name")
        for e in driver.find_elements("css selector", "#map-canvas .node")
    }


def screenshot(driver: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    if os.environ.get("FLOWTRAIL_SCREENSHOTS") == "docs":
        shutil.copy(path, Path(__file__).resolve().parents[2] / "docs" / name)


def label(edge: dict[str, Any], side: str) -> str:
    """How the map names an edge's side: its workload, else its address's network."""
    return str(edge[side] if edge[side] is not None else edge[f"{side}_external"])


def test_map_nodes_edges_and_numbers(page: Any, up: UpWithFlows) -> None:
    open_console(page, up)
    assert node_names(page) == {"web", "api", "db", "203.0.113.0/24"}  # cron is 2 h old
    want = {
        ("web", "api"): (3, 0),
        ("api", "db"): (2, 1),
        ("203.0.113.0/24", "web"): (2, 0),
    }
    drawn = {
        (e.get_attribute("data-s"), e.get_attribute("data-t")): (
            int(e.get_attribute("data-flows")),
            int(e.get_attribute("data-failed")),
        )
        for e in page.find_elements("css selector", "#map-canvas .edge")
    }
    assert drawn == {
        ("w:web", "w:api"): (3, 0),
        ("w:api", "w:db"): (2, 1),
        ("x:203.0.113.0/24", "w:web"): (2, 0),
    }
    # The edge table shows the API's numbers, as a person reads them.
    api = up.get_json("/api/dependencies?since=15m&group_external=true")
    rows = page.find_elements("css selector", "#edge-table tbody tr")
    assert len(rows) == len(api) == 3
    for row, edge in zip(rows, api, strict=True):
        key = (label(edge, "caller"), label(edge, "callee"))
        assert (row.get_attribute("data-caller"), row.get_attribute("data-callee")) == key
        cells = [td.text for td in row.find_elements("css selector", "td")]
        assert cells[1:3] == [str(edge["flows"]), str(edge["failed_attempts"])]
        assert (edge["flows"], edge["failed_attempts"]) == want[key]
    # The unattributed side is a node of its own, drawn apart: the network of its addresses.
    unk = page.find_element("css selector", "#map-canvas .node.unk")
    assert unk.get_attribute("data-name") == "203.0.113.0/24"
    assert "ext" in unk.get_attribute("class").split()


def test_click_edge_lists_exactly_its_flows(page: Any, up: UpWithFlows, tmp_path: Path) -> None:
    open_console(page, up)
    page.find_element("css selector", '.edge[data-s="w:api"][data-t="w:db"] .elabel').click()
    wait(page, lambda d: d.find_elements("css selector", "#edge-flows tbody tr[data-flow-id]"),
         "the edge's flows")  # fmt: skip
    shown = {
        e.get_attribute("data-flow-id")
        for e in page.find_elements("css selector", "#edge-flows tbody tr[data-flow-id]")
    }
    assert shown == {"10", "11", "12"}  # two connections and the refused attempt
    api = up.get_json("/api/flows?since=15m&caller=api&callee=db")
    assert shown == {r["flow_id"] for r in api}
    assert page.find_element("css selector", "#map-panel h2").text == "api → db"
    assert "sel=" in page.current_url  # the selection is in the link
    # The unattributed edge lists its flows too.
    page.find_element(
        "css selector", '.edge[data-s="x:203.0.113.0/24"][data-t="w:web"] .elabel'
    ).click()
    wait(page, lambda d: d.find_element("css selector", "#map-panel h2").text
         == "203.0.113.0/24 → web", "the unattributed edge's panel")  # fmt: skip
    wait(page, lambda d: {e.get_attribute("data-flow-id") for e in d.find_elements(
        "css selector", "#edge-flows tbody tr[data-flow-id]")} == {"20", "21"},
        "the unattributed edge's flows")  # fmt: skip


def test_keyboard_reaches_and_opens_a_node(page: Any, up: UpWithFlows) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    open_console(page, up)
    page.find_element("css selector", "body").click()
    for _ in range(80):  # Tab through the page until the node "db" has the focus
        ActionChains(page).send_keys(Keys.TAB).perform()
        if js(page, "return document.activeElement.dataset.name") == "db":
            break
    else:
        raise AssertionError("Tab never reached the node db")
    ActionChains(page).send_keys(Keys.ENTER).perform()
    wait(page, lambda d: d.find_element("css selector", "#map-panel h2").text == "db",
         "the node's panel")  # fmt: skip
    panel = page.find_element("id", "map-panel").text
    assert "← api" in panel


def test_filter_narrows_the_flows_table(page: Any, up: UpWithFlows) -> None:
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    open_console(page, up, "view=flows")
    ids = lambda: {  # noqa: E731
        e.get_attribute("data-flow-id")
        for e in page.find_elements("css selector", "#flow-table tbody tr[data-flow-id]")
    }
    assert ids() == {"0", "1", "2", "10", "11", "12", "20", "21"}  # the last 15 minutes
    before = mark(page)
    callee = page.find_element("css selector", "#flow-filters input[name=fe]")
    callee.send_keys("db", Keys.ENTER)
    settled(page, before)
    assert ids() == {"10", "11", "12"}
    before = mark(page)
    Select(page.find_element("css selector", "#flow-filters select[name=fout]")).select_by_value(
        "refused"
    )
    settled(page, before)
    assert ids() == {"12"}
    query = parse_qs(urlsplit(page.current_url).query)
    assert query["fe"] == ["db"] and query["fout"] == ["refused"]
    csv_url = page.find_element("id", "flow-csv").get_attribute("href")
    assert parse_qs(urlsplit(csv_url).query)["format"] == ["csv"]
    link = urlsplit(page.find_element("id", "flow-api").get_attribute("href"))
    api = up.get_json(f"{link.path}?{link.query}")
    assert [r["flow_id"] for r in api] == ["12"]
    # Times in readable UTC, to the millisecond, as `flowtrail query` prints them.
    end_ms = api[0]["end_ns"] // 1_000_000
    want = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(end_ms // 1000)) + f".{end_ms % 1000:03d}"
    assert texts(page, "#flow-table tbody tr td")[0] == want


def test_health_figures_match_the_api(page: Any, up: UpWithFlows) -> None:
    open_console(page, up, "view=health")
    health = {g["group"]: g for g in up.get_json("/api/health?since=15m")}
    assert health["all"]["rows"] == 8 and health["attributed"]["rows"] == 6
    card = page.find_element("css selector", ".card[data-card=attributed]")
    assert card.find_element("css selector", ".card-value").text == "75.0%"
    assert "6 of 8 rows" in card.text
    sources = {
        r.get_attribute("data-group"): [td.text for td in r.find_elements("css selector", "td")]
        for r in page.find_elements("css selector", "#health-sources tbody tr")
    }
    assert sources == {
        "source=heartbeat": ["heartbeat", "6", "75.0%", "2.0 s", "2.0 s"],
        "source=unattributed": ["unattributed", "2", "25.0%", "2.0 s", "2.0 s"],
    }
    reasons = texts(page, "#health-reasons tbody tr")
    assert reasons == ["no evidence 2 25.0%"]
    live = up.get_json("/healthz")
    waiting = page.find_element("css selector", ".card[data-card=waiting] .card-value").text
    assert waiting == str(live["waiting_flows"])
    assert live["drops"] == {} and texts(page, "#health-drops tbody tr") == [
        "Nothing dropped since start."
    ]
    agents = texts(page, "#health-agents tbody tr td:first-child")
    assert sorted(agents) == ["host-a", "host-b"]  # host-c's only row is 2 h old
    bars = page.find_elements("css selector", "#chart-rows rect.bar")
    assert sum(
        int(b.find_element("css selector", "title").get_attribute("textContent").split(": ")[1]
            .split()[0]) for b in bars
    ) == 8  # fmt: skip


def test_time_window_changes_the_result_and_the_url_keeps_it(page: Any, up: UpWithFlows) -> None:
    from selenium.webdriver.support.ui import Select

    open_console(page, up)
    assert "cron" not in node_names(page)
    before = mark(page)
    Select(page.find_element("id", "win")).select_by_value("24h")
    settled(page, before)
    assert node_names(page) == {"web", "api", "db", "cron", "203.0.113.0/24"}
    edge = page.find_element("css selector", '.edge[data-s="w:cron"][data-t="w:api"]')
    assert edge.get_attribute("data-flows") == "1"
    assert parse_qs(urlsplit(page.current_url).query)["win"] == ["24h"]
    # A shared link opens the same view.
    page.get(page.current_url)
    settled(page, "")
    assert "cron" in node_names(page)
    # A custom UTC range around the two-hour-old row shows only it.
    at = time.time_ns() - 120 * MINUTE
    fmt = lambda ns: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns / 1e9))  # noqa: E731
    open_console(page, up, f"win=custom&from={fmt(at - 5 * MINUTE)}&to={fmt(at + 5 * MINUTE)}")
    assert node_names(page) == {"cron", "api"}
    assert page.find_element("id", "from").get_attribute("value") == fmt(at - 5 * MINUTE)


def test_console_files_and_api_index(up: UpWithFlows) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=30)
    try:
        for path, kind in (("/", "text/html"), ("/static/console.js", "text/javascript")):
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200 and r.getheader("Content-Type", "").startswith(kind)
            assert "default-src 'none'" in r.getheader("Content-Security-Policy", "")
            assert body
        for path in ("/static/../server.py", "/static/nothing.js", "/static/__init__.py"):
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            assert r.status == 404, path
    finally:
        conn.close()
    assert "/api/health-series" in up.get_json("/api")["endpoints"]


@pytest.fixture(scope="module")
def sim_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpWithFlows]:
    u = UpWithFlows(tmp_path_factory.mktemp("sim") / "data", simulated_flows(time.time_ns()))
    yield u
    u.close()


def test_screenshots_of_a_simulated_fleet(
    browser: Any, sim_up: UpWithFlows, tmp_path: Path
) -> None:
    """Each view over a simulated fleet at 1280×800, light and dark; the map draws every
    workload the API names."""
    browser.get_log("browser")
    open_console(browser, sim_up, "sel=%5B%22n%22%2C%22w%3Aorders%22%5D")
    edges = sim_up.get_json("/api/dependencies?since=15m&group_external=true")
    want = {label(e, k) for e in edges for k in ("caller", "callee")}
    assert node_names(browser) == want and len(want) > 20
    screenshot(browser, tmp_path, "console-map.png")
    open_console(browser, sim_up, "view=flows")
    assert len(browser.find_elements("css selector", "#flow-table tbody tr[data-flow-id]")) == 100
    screenshot(browser, tmp_path, "console-flows.png")
    open_console(browser, sim_up, "view=health&win=1h")
    screenshot(browser, tmp_path, "console-health.png")
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    light = js(browser, "return getComputedStyle(document.body).backgroundColor")
    dark = make_driver(dark=True)
    try:
        open_console(dark, sim_up)
        screenshot(dark, tmp_path, "console-map-dark.png")
        assert js(dark, "return getComputedStyle(document.body).backgroundColor") != light
    finally:
        quit_driver(dark)


def press_enter_on(driver: Any, element: Any) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    js(driver, "arguments[0].focus()", element)
    ActionChains(driver).send_keys(Keys.ENTER).perform()


@pytest.fixture(scope="module")
def ext_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpWithFlows]:
    u = UpWithFlows(tmp_path_factory.mktemp("external") / "data", external_flows(time.time_ns()))
    yield u
    u.close()


def test_external_addresses_are_grouped_by_network(
    browser: Any, ext_up: UpWithFlows, tmp_path: Path
) -> None:
    """Addresses no workload owns are one node per network, shown as such, whose edge and
    node list exactly their flows; beyond 12 networks, "auto" draws them as one node."""
    browser.get_log("browser")
    open_console(browser, ext_up, "group=off")
    nets = {"198.51.100.0/24", "2001:db8:1::/48", *EXTERNAL_NETWORKS}
    assert node_names(browser) == {"web", *nets}  # not a node per address
    for net in nets:
        node = browser.find_element("css selector", f'.node[data-id="x:{net}"]')
        assert {"unk", "ext"} <= set(node.get_attribute("class").split()), net
    edge = browser.find_element("css selector", '.edge[data-s="w:web"][data-t="x:198.51.100.0/24"]')
    assert edge.get_attribute("data-flows") == "2"  # two addresses, one edge
    screenshot(browser, tmp_path, "console-external.png")
    # The edge's flows: exactly the two connections, as the API lists them. (Opened by
    # keyboard: 15 edges fan out of web, and a click lands on whichever is drawn on top.)
    press_enter_on(browser, edge)
    wait(browser, lambda d: {e.get_attribute("data-flow-id") for e in d.find_elements(
        "css selector", "#edge-flows tbody tr[data-flow-id]")} == {"0", "1"},
        "the network edge's flows")  # fmt: skip
    api = ext_up.get_json("/api/flows?since=15m&caller=web&callee_external=198.51.100.0/24")
    assert {r["flow_id"] for r in api} == {"0", "1"}
    # The node's panel links to its flows in the flows view.
    press_enter_on(
        browser, browser.find_element("css selector", '.node[data-id="x:2001:db8:1::/48"]')
    )
    wait(browser, lambda d: d.find_element("css selector", "#map-panel h2").text
         == "2001:db8:1::/48", "the network's panel")  # fmt: skip
    before = mark(browser)
    next(
        b for b in browser.find_elements("css selector", "#map-panel button.link")
        if b.text.startswith("Its flows as callee")
    ).click()  # fmt: skip
    settled(browser, before)
    rows = browser.find_elements("css selector", "#flow-table tbody tr[data-flow-id]")
    assert [r.get_attribute("data-flow-id") for r in rows] == ["2"]
    assert parse_qs(urlsplit(browser.current_url).query)["fex"] == ["2001:db8:1::/48"]
    # Auto grouping: 15 networks are one node "(external)" that lists them.
    open_console(browser, ext_up)
    assert node_names(browser) == {"web", "(external) (15)"}
    browser.find_element("css selector", '.node[data-id="g:(external)"]').click()
    wait(browser, lambda d: len(d.find_elements("css selector", "#map-panel .members li")) == 15,
         "the group's networks")  # fmt: skip
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


@pytest.fixture(scope="module")
def many_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpWithFlows]:
    u = UpWithFlows(tmp_path_factory.mktemp("many") / "data", many_edges_flows(time.time_ns()))
    yield u
    u.close()


def test_many_edges_draw_the_largest_and_never_hide_unnamed_or_failed(
    browser: Any, many_up: UpWithFlows
) -> None:
    """Beyond 600 edges the map draws those with the most connections and every one with
    failed attempts or an unnamed side, says so, and the table still lists every edge."""
    browser.get_log("browser")
    open_console(browser, many_up, "group=off")
    edges = many_up.get_json("/api/dependencies?since=15m&group_external=true")
    assert len(edges) == 702
    drawn = {
        (e.get_attribute("data-s"), e.get_attribute("data-t"))
        for e in browser.find_elements("css selector", "#map-canvas .edge")
    }
    assert len(drawn) == 600
    assert ("w:web", "x:203.0.113.0/24") in drawn and ("w:c0", "w:z") in drawn
    doubles = {(f"w:{e['caller']}", f"w:{e['callee']}") for e in edges if e["flows"] == 2}
    assert len(doubles) == 100 and doubles <= drawn
    assert "600 of 702 edges" in browser.find_element("id", "map-note").text
    assert "Edges (702;" in browser.find_element("css selector", "#map-edges summary").text
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
