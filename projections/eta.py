"""The history the prep-time learner reads (streams/eta.py learns from it; `oms eta learn`):
projections/sql/prep_facts.sql, one row per order a store accepted and marked ready. The SQL
runs on ClickHouse 18.16 as on chDB; the learning itself (quantiles per cell, the load slope,
which needs each order's open tickets) is done on these rows in Python, so it is the same
code whichever backend holds them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from projections.reports import Report, render
from projections.store import ClickHouseStore

PREP_FACTS = Report(
    "prep_facts",
    "Prep facts",
    "Orders accepted by a store and marked ready: when, where, which dishes.",
    "prep_facts.sql",
)


def prep_facts(store: ClickHouseStore, *, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Orders accepted in [since, until) and marked ready (keys: order_id, store, mode,
    line_skus, accepted_at, ready_at, fulfilled_at; times naive UTC, as the store holds them)."""
    sql = render(PREP_FACTS, store.database, {"since": since, "until": until}, as_of=until)
    columns, rows = store.query_with_columns(sql)
    return [dict(zip(columns, row, strict=True)) for row in rows]
