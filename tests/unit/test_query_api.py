"""Queries by name with text parameters (the shape an HTTP API receives)."""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import pytest

from flowtrail.engine.replay import replay
from flowtrail.errors import InputError
from flowtrail.query.api import run_query
from flowtrail.query.queries import FlowFilter, Window, dependencies, flows, top_talkers
from flowtrail.sim.simulation import simulate
from flowtrail.store import Store


@pytest.fixture(scope="module")
def con(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    sim = simulate("churny", 4, flows=2_000)
    path = tmp_path_factory.mktemp("api") / "s.duckdb"
    with Store(path) as store:
        store.write(replay(sim.flows, sim.events, sim.regions).table)
    c = duckdb.connect(str(path), read_only=True)
    yield c
    c.close()


def test_text_parameters_reach_the_same_queries(con: duckdb.DuckDBPyConnection) -> None:
    row = flows(con, limit=1).to_pylist()[0]
    since, until = str(row["end_ns"] - 10**12), str(row["end_ns"] + 1)
    window = Window(int(since), int(until))
    got = run_query(con, "dependencies", {"since": since, "until": until, "known_only": "yes"})
    assert got.equals(dependencies(con, window, known_only=True))
    got = run_query(con, "top-talkers", {"by": "ip", "limit": "3"})
    assert got.equals(top_talkers(con, by="ip", limit=3))
    params = {
        "port": str(row["remote_port"]), "exporter": row["exporter"], "outcome": "connected",
        "limit": "50",
    }  # fmt: skip
    got = run_query(con, "flows", params)
    where = FlowFilter(port=row["remote_port"], exporter=row["exporter"], outcome="connected")
    assert got.equals(flows(con, where=where, limit=50))
    assert got.num_rows > 0
    assert run_query(con, "health", {}).column("group")[0].as_py() == "all"


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("nope", {}, "unknown query 'nope'"),
        ("health", {"limit": "3"}, "unknown parameter(s) ['limit']"),
        ("flows", {"port": "http"}, "--port 'http': not an integer"),
        ("flows", {"limit": "-1"}, "--limit -1"),
        ("flows", {"source": "magic"}, "--source 'magic'"),
        ("flows", {"outcome": "fine"}, "--outcome 'fine'"),
        ("dependencies", {"known_only": "maybe"}, "--known-only 'maybe'"),
        ("top-talkers", {"by": "port"}, "--by 'port'"),
        ("health", {"since": "soon"}, "--since 'soon'"),
    ],
)
def test_bad_parameters_name_themselves(
    con: duckdb.DuckDBPyConnection, name: str, params: dict[str, str], message: str
) -> None:
    with pytest.raises(InputError) as err:
        run_query(con, name, params)
    assert message in str(err.value)
