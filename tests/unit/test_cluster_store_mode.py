"""A cluster node refuses a store idempotent per batch: redeliveries would be stored twice.

A node decides a redelivered work batch again, mixed with other batches in one write, so only
rows' keys can drop what the dead node had stored. The refusal comes before any NATS
connection (none is needed to see it).
"""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from flowtrail.cli import main
from flowtrail.store import PER_BATCH, Store


def test_a_node_refuses_a_store_made_per_batch(tmp_path: Path) -> None:
    out = tmp_path / "flows.duckdb"
    Store(out, idempotence=PER_BATCH).close()
    got = CliRunner().invoke(
        main,
        ["cluster-node", "--nats", "nats://127.0.0.1:1", "--region", "r", "--name", "n",
         "--out", str(out)],
    )  # fmt: skip
    assert got.exit_code == 2, got.output
    assert "idempotent per batch" in got.output and "give a new file" in got.output
    with Store(out) as store:  # untouched
        assert store.idempotence == PER_BATCH and store.count() == 0
