"""The door's check of which addresses a batch's rows claim as their own `local_ip`.

A token with `ranges=` (collector/tokens.py) may only send rows whose local_ip lies in those
prefixes. A batch with any row outside is refused whole (403, `address_not_allowed`) and
quarantined, like a batch naming another exporter:

- a spoofing host gets nothing in: not its lie, and not the rest of that batch;
- an honest host whose addresses changed loses nothing: its agent keeps the batch in its
  spool and retries (403 is retried), so the rows arrive once the token's ranges are fixed,
  instead of being dropped row by row with no way back.

A row whose local address is marked host-local (`local_scope` = `host`) is always allowed:
the engine owns such an address per exporter, so the claim speaks for this host alone.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.addressranges import AddressRanges
from flowtrail.collector.door import Refusal

REASON = "address_not_allowed"


def check_claims(data: pa.Table, ranges: AddressRanges, exporter: str, where: str) -> None:
    """Refuse the batch if a row's local_ip is outside `ranges` (one vectorised pass)."""
    ok = ranges.allowed(data.column("local_ip"))
    if "local_scope" in data.column_names:
        ok |= np.asarray(pc.fill_null(pc.equal(data.column("local_scope"), "host"), False), bool)
    if ok.all():
        return
    outside = np.flatnonzero(~ok)
    row = int(outside[0])
    got = data.column("local_ip")[row].as_py()
    raise Refusal(
        403,
        REASON,
        f"{where}, row {row + 1}, column 'local_ip': {got!r} is not an address exporter "
        f"{exporter!r} may claim ({len(outside)} of {data.num_rows} rows outside its "
        f"token's ranges={ranges})",
        quarantine=True,
    )
