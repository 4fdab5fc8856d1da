"""Commands from people, as events on the write side: a reviewer's decision, a cancellation,
stock counts and adjustments, pausing a location. Each is checked here for what can be checked
without the order's history (fields, numbers) and then judged by the agent that owns the
aggregate, which dead-letters what its state does not allow (e.g. approving an order that is
not held), with the reason.
"""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from events.models import (
    Actor,
    ActorKind,
    CancelledBy,
    Event,
    ExpiryBatchAdded,
    LocationPaused,
    LocationResumed,
    OrderCancelled,
    ReviewApproved,
    ReviewRejected,
    SafetyStockSet,
    StockAdjusted,
    StockCounted,
    StockReceived,
    utc_now,
)
from infra.settings import Settings


class CommandRejected(ValueError):
    """A command that is wrong on its face; names the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def _envelope(actor: str, correlation: str) -> dict[str, Any]:
    now = utc_now()
    return {
        "event_id": str(uuid.uuid4()),
        "sequence": 1,
        "occurred_at": now,
        "recorded_at": now,
        "correlation_id": correlation,
        "actor": Actor(kind=ActorKind.USER, id=actor),
    }


def _order(order_id: str, actor: str) -> dict[str, Any]:
    if not order_id.strip():
        raise CommandRejected("order_id", "must not be empty")
    if not actor.strip():
        raise CommandRejected("actor", "say who decides (--reviewer / --by)")
    # channel and external id are the order's: its agent fills them in from the history.
    return _envelope(actor, order_id) | {"order_id": order_id, "channel": "", "external_id": ""}


def review(order_id: str, *, approve: bool, reviewer: str, reason: str | None) -> Event:
    if approve:
        return ReviewApproved(**_order(order_id, reviewer), note=reason)
    if not reason or not reason.strip():
        raise CommandRejected("reason", "a rejection needs a reason")
    return ReviewRejected(**_order(order_id, reviewer), reason=reason)


def cancel(order_id: str, *, by: str, reason_code: str, reason: str) -> Event:
    if not reason_code.strip():
        raise CommandRejected("reason_code", "must not be empty")
    return OrderCancelled(
        **_order(order_id, by),
        cancelled_by=CancelledBy.MERCHANT,
        reason_code=reason_code,
        reason=reason,
    )


def _stock(sku: str, location: str, actor: str) -> dict[str, Any]:
    for name, value in (("sku", sku), ("location", location)):
        if not value.strip() or "@" in value:
            raise CommandRejected(name, f"{value!r} is not a valid {name}")
    return _envelope(actor, f"{sku}@{location}") | {"sku": sku, "location": location}


def stock_set(sku: str, location: str, *, counted: int, actor: str) -> Event:
    """A count: on hand becomes `counted` (the ledger records the difference)."""
    if counted < 0:
        raise CommandRejected("counted", f"{counted} is negative")
    return StockCounted(**_stock(sku, location, actor), counted=counted)


def stock_adjust(
    sku: str, location: str, *, delta: int, reason: str, actor: str, note: str | None = None
) -> Event:
    if delta == 0:
        raise CommandRejected("delta", "must not be 0")
    if not reason.strip():
        raise CommandRejected("reason", "say why (DAMAGED, LOST, FOUND, CORRECTION, ...)")
    return StockAdjusted(
        **_stock(sku, location, actor), delta=delta, reason=reason.upper(), note=note
    )


def stock_receive(
    sku: str, location: str, *, quantity: int, actor: str, reference: str | None = None
) -> Event:
    if quantity <= 0:
        raise CommandRejected("quantity", f"{quantity} must be positive")
    return StockReceived(**_stock(sku, location, actor), quantity=quantity, reference=reference)


def safety_stock(sku: str, location: str, *, quantity: int, actor: str) -> Event:
    if quantity < 0:
        raise CommandRejected("quantity", f"{quantity} is negative")
    return SafetyStockSet(**_stock(sku, location, actor), quantity=quantity)


def batch_received(
    sku: str, location: str, *, batch_id: str, quantity: int, expires_on: date, actor: str
) -> Event:
    if quantity <= 0:
        raise CommandRejected("quantity", f"{quantity} must be positive")
    return ExpiryBatchAdded(
        **_stock(sku, location, actor), batch_id=batch_id, quantity=quantity, expires_on=expires_on
    )


def location_pause(location: str, *, paused: bool, reason: str, actor: str) -> Event:
    if not location.strip():
        raise CommandRejected("location", "must not be empty")
    kind = LocationPaused if paused else LocationResumed
    return kind(**_envelope(actor, location), entity_id=location, reason=reason, automatic=False)


def catalogue_updates(path: Any, *, actor: str) -> list[Event]:
    """Every product and location in a catalogue file as an update event (the file's errors
    name the file and the field)."""
    from events.models import LocationUpdated, ProductUpdated
    from streams.catalogue import CatalogueError
    from streams.reference import load_catalogue

    try:
        catalogue = load_catalogue(path)
    except CatalogueError as exc:
        raise CommandRejected("file", str(exc)) from exc
    updates: list[Event] = [
        ProductUpdated(**_envelope(actor, sku), entity_id=sku, product=product)
        for sku, product in catalogue.products.items()
    ]
    updates += [
        LocationUpdated(**_envelope(actor, location_id), entity_id=location_id, location=location)
        for location_id, location in catalogue.locations.items()
    ]
    return updates


def topic_for(settings: Settings, event: Event) -> str:
    """Where a command goes: the agent that owns its aggregate reads it there."""
    from events.models import CatalogueEvent, OrderEvent, StockEvent

    if isinstance(event, OrderEvent):
        return settings.topics.order_commands
    if isinstance(event, StockEvent):
        return settings.topics.stock_commands
    if isinstance(event, CatalogueEvent):
        return settings.topics.catalogue
    raise TypeError(type(event).__name__)


def send(settings: Settings, event: Event) -> None:
    """Publish one command and wait for Kafka's ack."""
    from infra.publisher import Publisher

    publisher = Publisher(settings)
    publisher.publish(topic_for(settings, event), event)
    publisher.flush(30)


# ---------------------------------------------------------------- over HTTP (`oms api`)

_BUILDERS: dict[str, Any] = {
    "set": (stock_set, {"counted": int}),
    "adjust": (stock_adjust, {"delta": int, "reason": str, "note": (str, None)}),
    "receive": (stock_receive, {"quantity": int, "reference": (str, None)}),
    "safety": (safety_stock, {"quantity": int}),
}


def _field(body: dict[str, Any], name: str, kind: Any) -> Any:
    """A JSON field of the expected type (a `(type, default)` pair makes it optional)."""
    expected, default = kind if isinstance(kind, tuple) else (kind, ...)
    if name not in body or body[name] is None:
        if default is ...:
            raise CommandRejected(name, "is required")
        return default
    value = body[name]
    if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise CommandRejected(name, f"must be an integer, got {value!r}")
    if expected is str and not isinstance(value, str):
        raise CommandRejected(name, f"must be a string, got {value!r}")
    return value


def add_routes(app: Any, publisher: Any, settings: Settings) -> None:
    """POST /orders/{id}/review, /orders/{id}/cancel and /stock/{sku}/{location}/{action}:
    202 once Kafka took the command; 400 naming the field (and the body in the DLQ)."""
    import json

    from aiohttp import web

    from events.models import DeadLetter
    from infra.publisher import PublishError

    async def accept(request: web.Request, build: Any) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise CommandRejected("body", "must be a JSON object")
            event = build(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return await reject(request, raw, CommandRejected("body", f"not JSON: {exc}"))
        except CommandRejected as exc:
            return await reject(request, raw, exc)
        try:
            await publisher.publish(topic_for(settings, event), event)
        except PublishError as exc:
            return web.json_response({"error": f"Kafka did not take it: {exc}"}, status=503)
        return web.json_response(
            {"event_id": event.event_id, "event_type": event.event_type}, status=202
        )

    async def reject(request: web.Request, raw: bytes, exc: CommandRejected) -> web.Response:
        letter = DeadLetter.of(
            source="api",
            source_ref=f"{request.method} {request.path}:{uuid.uuid4()}",
            reason=str(exc),
            raw=raw,
        )
        await publisher.dead_letter(letter)
        return web.json_response(
            {"error": str(exc), "field": exc.field, "dead_letter_id": letter.dead_letter_id},
            status=400,
        )

    async def review_order(request: web.Request) -> web.Response:
        order_id = request.match_info["order_id"]

        def build(body: dict[str, Any]) -> Event:
            decision = _field(body, "decision", str)
            if decision not in ("approve", "reject"):
                raise CommandRejected("decision", f"{decision!r}: say approve or reject")
            return review(
                order_id,
                approve=decision == "approve",
                reviewer=_field(body, "reviewer", str),
                reason=_field(body, "reason", (str, None)),
            )

        return await accept(request, build)

    async def cancel_order(request: web.Request) -> web.Response:
        order_id = request.match_info["order_id"]
        return await accept(
            request,
            lambda body: cancel(
                order_id,
                by=_field(body, "by", str),
                reason_code=_field(body, "reason_code", (str, "MERCHANT_CANCELLED")),
                reason=_field(body, "reason", str),
            ),
        )

    async def stock_command(request: web.Request) -> web.Response:
        sku, location = request.match_info["sku"], request.match_info["location"]
        action = request.match_info["action"]
        if action not in _BUILDERS:
            return web.json_response(
                {"error": f"unknown action {action!r}", "field": "action"}, status=404
            )
        builder, fields = _BUILDERS[action]
        return await accept(
            request,
            lambda body: builder(
                sku,
                location,
                actor=_field(body, "by", (str, "api")),
                **{name: _field(body, name, kind) for name, kind in fields.items()},
            ),
        )

    app.router.add_post("/orders/{order_id}/review", review_order)
    app.router.add_post("/orders/{order_id}/cancel", cancel_order)
    app.router.add_post("/stock/{sku}/{location}/{action}", stock_command)
