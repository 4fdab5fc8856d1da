"""The order log folded into read-model rows: pure functions over events, no I/O.

`fold(state, event, where)` takes an order's `orders` row (or None) and one event and returns
the next row plus what the event adds to `order_lines`, `fulfilment_stages` and
`order_activity_per_minute` — or None when the event was already applied (its sequence is not
above the row's version), which is what makes a replay or a re-sent event harmless.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from operator import itemgetter
from typing import Any, NamedTuple

from events.lifecycle import OrderStatus, next_status
from events.models import (
    MILLIONTHS,
    ActorKind,
    OrderAccepted,
    OrderAcceptedByStore,
    OrderAmendmentRequested,
    OrderCancelled,
    OrderDelivered,
    OrderEvent,
    OrderHeld,
    OrderLine,
    OrderModified,
    OrderPickedUp,
    OrderPreparing,
    OrderPrioritised,
    OrderReady,
    OrderReceived,
    OrderRefunded,
    OrderRejected,
    OrderRouted,
    ReviewApproved,
    ReviewRejected,
    ShipmentCreated,
)
from projections.schema import ORDERS_COLUMNS
from projections.store import Row

OrderRow = dict[str, Any]


# Named tuples rather than frozen dataclasses: one of each is made per message, and a tuple is
# built several times faster; the fields read the same.
class Position(NamedTuple):
    """Where a message sits on Kafka; every row carries the position of the event it came from."""

    topic: str
    partition: int
    offset: int


class Activity(NamedTuple):
    """One event's contribution to `order_activity_per_minute`."""

    minute: datetime
    channel: str
    event_type: str
    currency: str
    amount: int


class OrderChange(NamedTuple):
    row: OrderRow
    lines: list[Row]
    stages: list[Row]
    activity: Activity


# A sale is an accepted order that is neither rejected nor cancelled; refunds do not undo it.
VOID = frozenset({OrderStatus.REJECTED.value, OrderStatus.CANCELLED.value})
# Statuses that end the order's flow: entering one closes the last stage and opens none.
END_STAGES = frozenset(
    s.value
    for s in (
        OrderStatus.REJECTED,
        OrderStatus.CANCELLED,
        OrderStatus.COMPLETED,
        OrderStatus.REFUNDED,
    )
)


_ACTOR_KINDS = {kind: kind.value for kind in ActorKind}
_STATUSES = {s.value: s for s in OrderStatus}


def seconds(when: datetime) -> datetime:
    """A contract time (aware UTC) as ClickHouse DateTime holds it: naive UTC, whole seconds.
    (The constructor, not `replace`: a third of the time, and this runs per event.)"""
    return datetime(when.year, when.month, when.day, when.hour, when.minute, when.second)


def empty_row(order_id: str, at: datetime) -> OrderRow:
    row: OrderRow = {column: "" for column in ORDERS_COLUMNS}
    row.update(
        order_id=order_id,
        total=0,
        line_count=0,
        item_count=0,
        priority_score=0,
        promised_at=None,
        accepted_at=None,
        risk_score=0,
        held=0,
        held_at=None,
        reviewed_at=None,
        cancelled=0,
        rejection_codes=[],
        handed_over_at=None,
        delivered_at=None,
        refunded=0,
        is_sale=0,
        stage_entered_at=at,
        stage_seq=0,
        line_skus=[],
        line_names=[],
        line_quantities=[],
        line_prices=[],
        line_locations=[],
        line_amounts=[],
        line_units=[],
        line_millionths=[],
        line_options=[],
        table_name="",
        covers=0,
        ready_by=None,
        amended_from=[],
        placed_at=at,
        updated_at=at,
        version=0,
        _partition=0,
        _offset=0,
    )
    return row


def _customer_key(phone: str | None, channel: str, customer_id: str | None) -> str:
    """Who the customer is across orders, for events without the pseudonymous `Customer.key`
    (which the projector sets on everything it reads: projections/privacy.py): the phone
    number, else the channel's customer id."""
    if phone:
        return phone
    return f"{channel}:{customer_id}" if customer_id else ""


def _lines(lines: list[OrderLine]) -> dict[str, Any]:
    return {
        "line_skus": [line.sku for line in lines],
        "line_names": [line.name for line in lines],
        "line_quantities": [line.quantity for line in lines],
        "line_prices": [line.unit_price for line in lines],
        "line_locations": ["" for _ in lines],
        "line_amounts": [line.amount for line in lines],
        "line_units": [line.unit for line in lines],
        "line_millionths": [_millionths(line) for line in lines],
        "line_options": [", ".join(line.options) for line in lines],
        "line_count": len(lines),
        "item_count": sum(max(line.quantity, 0) for line in lines),
    }


def ticket_lines(row: Mapping[str, Any]) -> list[str]:
    """The row's lines as a kitchen ticket prints them: "2× 红烧牛肉面 (少辣)"."""
    options = row["line_options"] or [""] * len(row["line_names"])
    return [
        f"{quantity}× {name} ({extra})" if extra else f"{quantity}× {name}"
        for quantity, name, extra in zip(
            row["line_quantities"], row["line_names"], options, strict=False
        )
    ]


def _millionths(line: OrderLine) -> int:
    """The line's exact quantity in millionths of its unit (whole quantities too)."""
    measured = line.quantity_millionths
    return measured if measured is not None else line.quantity * MILLIONTHS


def _order_details(event: OrderReceived | OrderModified, row: OrderRow) -> dict[str, Any]:
    """What an OrderReceived sets, or what a revision replaces (its optional fields only when
    the channel sent them)."""
    changes: dict[str, Any] = {"total": event.total, **_lines(event.lines)}
    if isinstance(event, OrderModified) and row["version"]:
        before = ticket_lines(row)
        if ticket_lines(changes) != before:  # a change of table or covers only is no amendment
            changes["amended_from"] = before
    if event.table is not None or isinstance(event, OrderReceived):
        changes["table_name"] = event.table or ""
    if event.covers is not None or isinstance(event, OrderReceived):
        changes["covers"] = max(event.covers or 0, 0)
    if event.address is not None:
        changes["address"] = event.address.text
        changes["city"] = event.address.city or ""
    if event.mode is not None:
        changes["mode"] = event.mode.value
    if event.currency is not None:
        changes["currency"] = event.currency
    if event.customer is not None:
        changes["customer_name"] = event.customer.name or ""
        changes["customer_phone"] = event.customer.phone or ""
        changes["customer_key"] = event.customer.key or _customer_key(
            event.customer.phone, event.channel, event.customer.id
        )
    if event.location_hint and not row["location"]:
        changes["location"] = event.location_hint
    if event.placed_at is not None and (isinstance(event, OrderReceived) or not row["version"]):
        changes["placed_at"] = seconds(event.placed_at)
    return changes


def _event_changes(event: OrderEvent, row: OrderRow, at: datetime) -> dict[str, Any]:
    """The columns an event sets besides status, version and position."""
    if isinstance(event, OrderAmendmentRequested):
        return {}  # held for the store: the order is as it was until it is applied
    if isinstance(event, OrderReceived | OrderModified):
        return _order_details(event, row)
    if isinstance(event, OrderAccepted):
        return {
            "total": event.total,
            "currency": event.currency,
            "accepted_at": row["accepted_at"] or at,
        }
    if isinstance(event, OrderRejected):
        return {
            "rejection_codes": [r.code for r in event.reasons],
            "rejection_message": "; ".join(r.message for r in event.reasons),
        }
    if isinstance(event, OrderHeld):
        return {"held": 1, "held_at": at, "risk_score": event.risk_score}
    if isinstance(event, ReviewApproved):
        return {"review_outcome": "approved", "reviewed_at": at}
    if isinstance(event, ReviewRejected):
        return {
            "review_outcome": "rejected",
            "reviewed_at": at,
            "cancelled": 1,
            "cancelled_by": "reviewer",
            "cancel_reason": "REVIEW_REJECTED",
        }
    if isinstance(event, OrderCancelled):
        return {
            "cancelled": 1,
            "cancelled_by": event.cancelled_by.value,
            "cancel_reason": event.reason_code,
        }
    if isinstance(event, OrderRouted):
        by_sku: dict[str, str] = {}
        for group in event.groups:
            for line in group.lines:
                by_sku.setdefault(line.sku, line.location or group.location)
        return {
            "location": event.location,
            "line_locations": [by_sku.get(sku, event.location) for sku in row["line_skus"]],
        }
    if isinstance(event, OrderPrioritised):
        promised = seconds(event.promised_at) if event.promised_at else None
        return {"location": event.location, "priority_score": event.score, "promised_at": promised}
    if isinstance(event, OrderAcceptedByStore):
        ready = seconds(event.estimated_ready_at) if event.estimated_ready_at else None
        return {"location": event.location, "ready_by": ready}
    if isinstance(event, OrderPreparing | OrderReady):
        return {"location": event.location}
    if isinstance(event, OrderPickedUp):
        return {"location": event.location, "handed_over_at": row["handed_over_at"] or at}
    if isinstance(event, ShipmentCreated):
        return {"handed_over_at": row["handed_over_at"] or at}
    if isinstance(event, OrderDelivered):
        return {"delivered_at": row["delivered_at"] or at}
    if isinstance(event, OrderRefunded):
        return {"refunded": row["refunded"] + event.amount}
    return {}


def _amount(event: OrderEvent) -> int:
    if isinstance(event, OrderAmendmentRequested):
        return 0
    if isinstance(event, OrderReceived | OrderModified | OrderAccepted):
        return event.total
    if isinstance(event, OrderRefunded):
        return event.amount
    return 0


_LINE_FACTS = (
    "line_skus",
    "line_names",
    "line_quantities",
    "line_prices",
    "line_locations",
    "location",
    "region",
    "currency",
    "channel",
    "mode",
    "customer_key",
    "placed_at",
    "is_sale",
    "line_amounts",
    "line_units",
    "line_millionths",
)


_line_facts = itemgetter(*_LINE_FACTS)


def _line_rows(old: OrderRow | None, new: OrderRow, where: Position) -> list[Row]:
    """The order's lines as sales facts, when anything they show changed. A line the revision
    removed gets a row with quantity 0 that is not a sale."""
    if old is not None and _line_facts(old) == _line_facts(new):
        return []
    rows: list[Row] = []
    count = len(new["line_skus"])
    before = len(old["line_skus"]) if old is not None else 0
    for n in range(max(count, before)):
        if n < count:
            sku, name = new["line_skus"][n], new["line_names"][n]
            quantity, price = new["line_quantities"][n], new["line_prices"][n]
            amounts = new["line_amounts"]  # (a row stored before v4 has none)
            amount = amounts[n] if n < len(amounts) else quantity * price
            units, measures = new["line_units"], new["line_millionths"]  # (none before v5)
            unit = units[n] if n < len(units) else "each"
            millionths = measures[n] if n < len(measures) else quantity * MILLIONTHS
            location = new["line_locations"][n] or new["location"]
            is_sale = new["is_sale"]
        else:
            assert old is not None
            sku, name, quantity, price = old["line_skus"][n], old["line_names"][n], 0, 0
            amount, location, is_sale = 0, new["location"], 0
            units = old["line_units"]
            unit, millionths = (units[n] if n < len(units) else "each"), 0
        rows.append(
            (
                new["order_id"],
                n,
                sku,
                name,
                quantity,
                price,
                amount,  # the line as the channel states it (quantity × price without one)
                new["currency"],
                new["channel"],
                location,
                new["region"],
                new["mode"],
                new["customer_key"],
                new["placed_at"],
                is_sale,
                new["version"],
                unit,
                millionths,
                where.topic,
                where.partition,
                where.offset,
            )
        )
    return rows


def _stage_rows(old: OrderRow | None, new: OrderRow, at: datetime, where: Position) -> list[Row]:
    """Close the stage the order leaves and open the one it enters (none for an end status)."""
    if old is not None and old["status"] == new["status"]:
        return []
    common = (
        new["channel"],
        new["mode"],
        new["location"],
        new["version"],
        where.topic,
        where.partition,
        where.offset,
    )
    rows: list[Row] = []
    if old is not None and old["stage"]:
        entered = old["stage_entered_at"]
        spent = max(int((at - entered).total_seconds()), 0)
        rows.append(
            (
                new["order_id"],
                old["stage_seq"],
                old["stage"],
                entered,
                at,
                spent,
                new["status"],
                *common,
            )
        )
    if new["status"] not in END_STAGES:
        rows.append((new["order_id"], new["version"], new["status"], at, None, None, "", *common))
        new.update(stage=new["status"], stage_entered_at=at, stage_seq=new["version"])
    else:
        new.update(stage="", stage_seq=0)
    return rows


def fold(
    state: OrderRow | None, event: OrderEvent, where: Position, at: datetime | None = None
) -> OrderChange | None:
    """Apply one event to an order's row; None when it was applied before.

    The row's times (stages entered and left, the activity minute, accepted_at, updated_at ...)
    are when OrderStream recorded each event: a channel's OrderReceived occurred when the
    customer placed the order, which may be days before it arrived, and that time is kept in
    `placed_at` only. `at` is `seconds(event.occurred_at)` when the caller has it already; it
    is used when the event was recorded as it occurred, as every event the worker writes is."""
    if state is not None and event.sequence <= state["version"]:
        return None  # already applied: a replay, or the same event re-sent on the log
    if at is None or event.recorded_at != event.occurred_at:
        at = seconds(event.recorded_at)
    old = state
    base = state if state is not None else empty_row(event.order_id, at)
    row = dict(base)
    row.update(channel=event.channel or row["channel"], external_id=event.external_id)
    row.update(_event_changes(event, row, at))
    # The lifecycle's move (a history that does not start with the order cannot happen in a
    # well-formed log: the order stays visible with what this event says).
    current = _STATUSES.get(base["status"]) if state is not None else None
    row["status"] = status = next_status(current, type(event)).value
    row["region"] = row["city"] or row["location"]
    if status in VOID:
        row["is_sale"] = 0
    elif base["status"] not in VOID:
        row["is_sale"] = int(row["accepted_at"] is not None)
    row.update(
        version=event.sequence,
        updated_at=at,
        _topic=where.topic,
        _partition=where.partition,
        _offset=where.offset,
    )
    stages = _stage_rows(old, row, at, where)
    activity = Activity(
        datetime(at.year, at.month, at.day, at.hour, at.minute),
        row["channel"],
        type(event).__name__,
        row["currency"],
        _amount(event),
    )
    return OrderChange(row, _line_rows(old, row, where), stages, activity)


def event_row(event: OrderEvent, where: Position, at: datetime | None = None) -> Row:
    """The event as `order_events` keeps it, with its whole body as JSON in `payload`. `at` is
    `seconds(event.occurred_at)` when the caller has it already."""
    return (
        event.event_id,
        type(event).__name__,
        event.order_id,
        event.sequence,
        seconds(event.occurred_at) if at is None else at,
        seconds(event.recorded_at),
        event.channel,
        f"{_ACTOR_KINDS[event.actor.kind]}:{event.actor.id}",
        event.model_dump_json(),
        where.topic,
        where.partition,
        where.offset,
    )
