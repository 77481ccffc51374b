"""Checks at the door: a batch is read, sized, typed and range-checked before it is accepted.

Each refusal is a `Refusal` with an HTTP status, a short reason (the metrics label and the
quarantine note) and a message for the sender that says what is wrong and where.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.engine.dnsnames import check_answers
from flowtrail.errors import ContractError
from flowtrail.incoming import ExtraColumnError, validate_incoming
from flowtrail.schema import DNS_ANSWERS, EVENTS, FLOWS, Table

RESERVED_PREFIX = "__flowtrail"
ROW_ID = "__flowtrail_row"  # the collector's own row handle, never stored


@dataclass(frozen=True)
class Limits:
    max_rows: int = 1_000_000
    max_future_ns: int = 600 * 1_000_000_000  # clocks run ahead; not by ten minutes
    max_age_ns: int = 7 * 86_400 * 1_000_000_000  # an agent's spool may hold a week


class Refusal(Exception):
    """A batch refused at the door. `quarantine`: keep the body for inspection."""

    def __init__(self, status: int, reason: str, message: str, *, quarantine: bool) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.quarantine = (
            status,
            reason,
            message,
            quarantine,
        )


def read_ipc(body: bytes, where: str) -> pa.Table:
    """An Arrow IPC stream → table; anything else is a 400 naming what failed."""
    try:
        with pa.ipc.open_stream(pa.py_buffer(body)) as reader:
            return reader.read_all()
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, ValueError) as exc:
        raise Refusal(
            400, "unreadable", f"{where}: not an Arrow IPC stream: {exc}", quarantine=True
        ) from exc


def check(
    kind: str, data: pa.Table, exporter: str, now_ns: int, limits: Limits, where: str
) -> pa.Table:
    """Validate one batch of `kind` sent by `exporter`; returns it cast to contract types."""
    table: Table = {"flows": FLOWS, "dns_answers": DNS_ANSWERS}.get(kind, EVENTS)
    if data.num_rows > limits.max_rows:
        raise Refusal(
            413,
            "too_many_rows",
            f"{where}: {data.num_rows} rows, the limit is {limits.max_rows}; send smaller batches",
            quarantine=False,
        )
    reserved = [n for n in data.column_names if n.startswith(RESERVED_PREFIX)]
    if reserved:
        raise Refusal(
            400,
            "reserved_column",
            f"{where}: column(s) {reserved}: names starting {RESERVED_PREFIX!r} are the "
            "collector's own",
            quarantine=True,
        )
    try:
        data = validate_incoming(data, table, path=where)
    except ExtraColumnError as exc:
        raise Refusal(400, "extra_column", str(exc), quarantine=True) from exc
    except ContractError as exc:
        raise Refusal(400, "contract", str(exc), quarantine=True) from exc
    if kind == "flows":
        _check_exporter(data, exporter, where)
        _check_flow_times(data, now_ns, limits, where)
    elif kind == "dns_answers":
        try:
            check_answers(data, where)
        except ContractError as exc:
            raise Refusal(400, "contract", str(exc), quarantine=True) from exc
        _check_exporter(data, exporter, where)
        _check_times(data, "observed_ns", now_ns, limits, where)
    else:
        _check_times(data, "time_ns", now_ns, limits, where)
    return data


def _first_row(mask: pa.ChunkedArray | pa.Array) -> int | None:
    m = np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)
    hits = np.flatnonzero(m)
    return int(hits[0]) + 1 if len(hits) else None


def _check_exporter(data: pa.Table, exporter: str, where: str) -> None:
    names = data.column("exporter").unique()
    if len(names) == 1 and names[0].as_py() == exporter:
        return  # the usual case, without a per-row mask
    row = _first_row(pc.not_equal(data.column("exporter"), exporter))
    if row is not None:
        got = data.column("exporter")[row - 1].as_py()
        raise Refusal(
            403,
            "exporter_mismatch",
            f"{where}, row {row}, column 'exporter': {got!r}, but this token belongs to "
            f"{exporter!r}; an exporter may only send its own rows",
            quarantine=True,
        )


def _check_flow_times(data: pa.Table, now_ns: int, limits: Limits, where: str) -> None:
    # end_ns before start_ns is the contract's (validate), as for every reader of flows.
    _check_times(data, "start_ns", now_ns, limits, where)
    _check_times(data, "end_ns", now_ns, limits, where)


def _check_times(data: pa.Table, column: str, now_ns: int, limits: Limits, where: str) -> None:
    values = data.column(column)
    lo_hi = pc.min_max(values)
    lo, hi = lo_hi["min"].as_py(), lo_hi["max"].as_py()
    if lo is None or (lo >= now_ns - limits.max_age_ns and hi <= now_ns + limits.max_future_ns):
        return  # all in range: no per-row masks needed
    too_new = _first_row(pc.greater(values, now_ns + limits.max_future_ns))
    too_old = _first_row(pc.less(values, now_ns - limits.max_age_ns))
    for row, what in ((too_new, "in the future"), (too_old, "too old")):
        if row is not None:
            raise Refusal(
                400,
                "time_range",
                f"{where}, row {row}, column {column!r}: {values[row - 1].as_py()} is {what} "
                f"for this collector (accepts now - {limits.max_age_ns // 10**9}s .. "
                f"now + {limits.max_future_ns // 10**9}s)",
                quarantine=True,
            )
