"""Read-side queries over the ClickHouse read models (used by the CLI and the read API).

Analytics live in projections/reports.py; these are the lookups an operator or an API makes.
"""

from __future__ import annotations

from typing import Any

from projections.reports import run_report
from projections.schema import ORDERS_COLUMNS
from projections.store import ClickHouseStore, sql_string

_LIST_COLUMNS = (
    "order_id",
    "channel",
    "external_id",
    "mode",
    "status",
    "location",
    "currency",
    "total",
    "placed_at",
)


def order_state(store: ClickHouseStore, order_id: str) -> dict[str, Any] | None:
    """The order's current state, found by order id or by its channel's external id."""
    rows = store.query(
        f"SELECT {', '.join(ORDERS_COLUMNS)} FROM {store.database}.orders FINAL "
        f"WHERE order_id = {sql_string(order_id)} OR external_id = {sql_string(order_id)} "
        "ORDER BY placed_at LIMIT 1"
    )
    return dict(zip(ORDERS_COLUMNS, rows[0], strict=True)) if rows else None


def order_history(store: ClickHouseStore, order_id: str) -> list[dict[str, Any]]:
    columns = ("sequence", "event_type", "occurred_at", "actor", "event_id")
    rows = store.query(
        f"SELECT {', '.join(columns)} FROM {store.database}.order_events FINAL "
        f"WHERE order_id = {sql_string(order_id)} ORDER BY sequence, occurred_at"
    )
    return [dict(zip(columns, row, strict=True)) for row in rows]


TRACKING_EVENT_TYPES = (
    "OrderReceived",
    "OrderModified",
    "ShipmentCreated",
    "ShipmentStatusUpdated",
)


def tracking_events(store: ClickHouseStore, order_id: str) -> list[tuple[str, str]]:
    """(event type, payload) of the events a customer's tracking page is made of, in sequence:
    the order's shipments, their statuses, and the order as received (masked, as
    projections/privacy.py leaves every payload). One read of `order_events`, which is
    ordered by order id."""
    types = ", ".join(sql_string(t) for t in TRACKING_EVENT_TYPES)
    rows = store.query(
        f"SELECT event_type, payload FROM {store.database}.order_events FINAL "
        f"WHERE order_id = {sql_string(order_id)} AND event_type IN ({types}) "
        "ORDER BY sequence, occurred_at"
    )
    return [(str(event_type), str(payload)) for event_type, payload in rows]


def list_orders(
    store: ClickHouseStore,
    *,
    status: str | None = None,
    channel: str | None = None,
    location: str | None = None,
    limit: int = 20,
    offset: int = 0,
) -> list[dict[str, Any]]:
    filters = []
    if status:
        filters.append(f"status = {sql_string(status)}")
    if channel:
        filters.append(f"channel = {sql_string(channel)}")
    if location:
        filters.append(f"location = {sql_string(location)}")
    where = f"WHERE {' AND '.join(filters)}" if filters else ""
    rows = store.query(
        f"SELECT {', '.join(_LIST_COLUMNS)} FROM {store.database}.orders FINAL {where} "
        f"ORDER BY placed_at DESC, order_id LIMIT {int(offset)}, {int(limit)}"
    )
    return [dict(zip(_LIST_COLUMNS, row, strict=True)) for row in rows]


def status_counts(store: ClickHouseStore, *, order_ids: list[str] | None = None) -> dict[str, int]:
    where = ""
    if order_ids is not None:
        if not order_ids:
            return {}
        where = f"WHERE order_id IN ({', '.join(sql_string(o) for o in order_ids)})"
    rows = store.query(
        f"SELECT status, count() FROM {store.database}.orders FINAL {where} GROUP BY status"
    )
    return {str(status): int(count) for status, count in rows}


def verdict_counts(store: ClickHouseStore, *, order_ids: list[str] | None = None) -> dict[str, int]:
    """Orders by validation verdict — "accepted" (passed validation, whatever happened since),
    "rejected" (failed it) or "pending" — where `status_counts` gives the current status."""
    where = ""
    if order_ids is not None:
        if not order_ids:
            return {}
        where = f"WHERE order_id IN ({', '.join(sql_string(o) for o in order_ids)})"
    rows = store.query(
        "SELECT multiIf(accepted_at IS NOT NULL, 'accepted', status = 'rejected', 'rejected', "
        f"'pending') AS verdict, count() FROM {store.database}.orders FINAL {where} "
        "GROUP BY verdict"
    )
    return {str(verdict): int(count) for verdict, count in rows}


def event_count(store: ClickHouseStore) -> int:
    rows = store.query(f"SELECT count() FROM {store.database}.order_events FINAL")
    return int(rows[0][0])


def fulfilment_queue(
    store: ClickHouseStore, location: str, *, limit: int = 100
) -> list[dict[str, Any]]:
    """The location's queue: orders prioritised there and not yet picked up, shipped or
    cancelled, highest priority score first, then the earliest promised time
    (projections/sql/fulfilment_queue.sql). Keys: order_id, external_id, channel, mode, status,
    priority_score, promised_at, placed_at, item_count, total, currency."""
    return run_report(store, "fulfilment_queue", location=location, limit=limit).as_dicts()
