"""Which owner table an address of a flow row belongs to: one rule for replay, collector, cluster.

Ownership is per address *within a scope*, and a lookup never crosses scopes:

* host-local: loopback and link-local addresses always, and any address the exporting agent
  marks `host` (`local_scope` / `remote_scope`: a bridge behind NAT, a namespace without a
  route out). Owned per exporter: one host's evidence never names another host's address.
* routable: every other address, owned per declared address space (`network`; rows without
  one share the default space, as every row did before scopes existed).

A row's remote address is looked up in the scope its own agent gave it, with the row's
exporter and network: a connection whose ends disagree on a scope is not paired or named,
which costs coverage, never correctness.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.engine.ipkeys import IpKeys

U64 = npt.NDArray[np.uint64]
HOST = "host"

SCOPE_COLUMNS = ("network", "local_scope", "remote_scope")


def _column(table: pa.Table, name: str) -> pa.ChunkedArray | None:
    return table.column(name) if name in table.column_names else None


def _is_host(table: pa.Table, name: str) -> npt.NDArray[np.bool_] | None:
    col = _column(table, name)
    if col is None or col.null_count == len(col):
        return None
    return np.asarray(pc.fill_null(pc.equal(col, HOST), False).to_numpy(), bool)


def remote_addresses(table: pa.Table) -> pa.ChunkedArray:
    """Each row's remote address after destination NAT (nat_remote_ip where given)."""
    remote = table.column("remote_ip")
    nat = _column(table, "nat_remote_ip")
    return remote if nat is None else pc.coalesce(nat, remote)


def local_keys(table: pa.Table, ipkeys: IpKeys) -> U64:
    """Keys of each row's local address, in its scope."""
    return ipkeys.keys(
        table.column("local_ip"),
        table.column("exporter"),
        host=_is_host(table, "local_scope"),
        network=_column(table, "network"),
    )


def remote_keys(table: pa.Table, ipkeys: IpKeys, remote: pa.ChunkedArray | None = None) -> U64:
    """Keys of each row's (NAT-resolved, unless `remote` is given) remote address, in its scope."""
    return ipkeys.keys(
        remote_addresses(table) if remote is None else remote,
        table.column("exporter"),
        host=_is_host(table, "remote_scope"),
        network=_column(table, "network"),
    )
