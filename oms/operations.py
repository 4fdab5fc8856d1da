"""Commands from people, as events on the write side: a reviewer's decision, a cancellation,
stock counts and adjustments, pausing a location. Each is checked here for what can be checked
without the order's history (fields, numbers) and then judged by the agent that owns the
aggregate, which dead-letters what its state does not allow (e.g. approving an order that is
not held), with the reason.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from annotated_types import Interval
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)
from pydantic_core import ErrorDetails

from events.models import (
    MILLIONTHS,
    Actor,
    ActorKind,
    CancelledBy,
    Event,
    ExpiryBatchAdded,
    LocationPaused,
    LocationResumed,
    OrderAcceptedByStore,
    OrderAmendmentAccepted,
    OrderAmendmentRefused,
    OrderCancelled,
    OrderCompleted,
    OrderDeclinedByStore,
    OrderDelivered,
    OrderPickedUp,
    OrderPreparing,
    OrderReady,
    ReviewApproved,
    ReviewRejected,
    SafetyStockSet,
    StockAdjusted,
    StockCounted,
    StockReceived,
    parse_amount,
    utc_now,
)
from infra.settings import Settings

if TYPE_CHECKING:
    from aiohttp import web

    from infra.publisher import AsyncPublisher


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


def order_of(order_id: str, actor: str) -> dict[str, Any]:
    if not order_id.strip():
        raise CommandRejected("order_id", "must not be empty")
    if not actor.strip():
        raise CommandRejected("actor", "say who decides (--reviewer / --by)")
    # channel and external id are the order's: its agent fills them in from the history.
    return _envelope(actor, order_id) | {"order_id": order_id, "channel": "", "external_id": ""}


def review(order_id: str, *, approve: bool, reviewer: str, reason: str | None) -> Event:
    if approve:
        return ReviewApproved(**order_of(order_id, reviewer), note=reason)
    if not reason or not reason.strip():
        raise CommandRejected("reason", "a rejection needs a reason")
    return ReviewRejected(**order_of(order_id, reviewer), reason=reason)


def cancel(order_id: str, *, by: str, reason_code: str, reason: str) -> Event:
    if not reason_code.strip():
        raise CommandRejected("reason_code", "must not be empty")
    return OrderCancelled(
        **order_of(order_id, by),
        cancelled_by=CancelledBy.MERCHANT,
        reason_code=reason_code,
        reason=reason,
    )


# ---------------------------------------------------------------- a store's actions

STORE_ACTIONS = (
    "accept",
    "decline",
    "start",
    "ready",
    "handoff",
    "deliver",
    "complete",
    "accept-change",
    "refuse-change",
)
HANDOFF_TO = ("courier", "customer", "table")
READY_IN_MAX = 24 * 60  # minutes: a promise further out is a mistake, not a kitchen


def _at_store(order_id: str, location: str, actor: str) -> dict[str, Any]:
    if not location.strip() or "@" in location:
        raise CommandRejected("location", f"{location!r} is not a valid store")
    return order_of(order_id, actor) | {"location": location}


def store_action(
    action: str,
    order_id: str,
    location: str,
    *,
    by: str,
    ready_in_minutes: int | None = None,
    reason_code: str | None = None,
    reason: str | None = None,
    to: str | None = None,
    courier: str | None = None,
    courier_phone: str | None = None,
    proof: str | None = None,
    revision: int | None = None,
) -> Event:
    """A store's step with an order it was routed to: `accept` (with the minutes until it is
    ready), `decline` (with a reason: routed again without this store), `start` preparing,
    `ready`, `handoff` (to a courier, the customer who picks it up, or served at the table),
    `deliver`, `complete`; `accept-change` or `refuse-change` (with a reason) of an amendment
    the channel sent after the store accepted the order (`revision`: the one the store saw;
    none: whichever is pending). The order's agent checks the step against the lifecycle and
    that the order is this store's."""
    base = _at_store(order_id, location, by)
    if action == "accept":
        if ready_in_minutes is not None and not 1 <= ready_in_minutes <= READY_IN_MAX:
            raise CommandRejected(
                "ready_in_minutes", f"{ready_in_minutes} is not 1 to {READY_IN_MAX} minutes"
            )
        ready_at = (
            base["occurred_at"] + timedelta(minutes=ready_in_minutes)
            if ready_in_minutes is not None
            else None
        )
        return OrderAcceptedByStore(**base, estimated_ready_at=ready_at)
    if action == "decline":
        if not reason or not reason.strip():
            raise CommandRejected("reason", "a store declining an order says why")
        code = (reason_code or "OTHER").strip().upper()
        if not code:
            raise CommandRejected("reason_code", "must not be empty")
        if code == "NOT_ACCEPTED":
            raise CommandRejected(
                "reason_code", "NOT_ACCEPTED is the store policy's escalation, not a person's"
            )
        return OrderDeclinedByStore(**base, reason_code=code, reason=reason)
    if action == "start":
        return OrderPreparing(**base)
    if action == "ready":
        return OrderReady(**base)
    if action == "handoff":
        if to not in HANDOFF_TO:
            raise CommandRejected("to", f"{to!r} is not one of {', '.join(HANDOFF_TO)}")
        if to != "courier" and (courier or courier_phone):
            raise CommandRejected("courier", f"a hand-off to the {to} names no courier")
        taker = (courier or "courier").strip() if to == "courier" else to
        if to == "table":
            taker = "served at the table"
        return OrderPickedUp(**base, picked_up_by=taker, courier_phone=courier_phone or None)
    if action == "deliver":
        return OrderDelivered(**base, proof=proof or None)
    if action == "complete":
        return OrderCompleted(**base)
    if action in ("accept-change", "refuse-change"):
        if revision is not None and revision < 1:
            raise CommandRejected("revision", f"{revision} is not a channel's revision (1 or more)")
        if action == "accept-change":
            return OrderAmendmentAccepted(**base, revision=revision or 0)
        if not reason or not reason.strip():
            raise CommandRejected("reason", "a store refusing a change says why")
        code = (reason_code or "REFUSED").strip().upper()
        if not code:
            raise CommandRejected("reason_code", "must not be empty")
        return OrderAmendmentRefused(
            **base, revision=revision or 0, reason_code=code, reason=reason
        )
    raise CommandRejected("action", f"{action!r} is not one of {', '.join(STORE_ACTIONS)}")


def _stock(sku: str, location: str, actor: str) -> dict[str, Any]:
    for name, value in (("sku", sku), ("location", location)):
        if not value.strip() or "@" in value:
            raise CommandRejected(name, f"{value!r} is not a valid {name}")
    return _envelope(actor, f"{sku}@{location}") | {"sku": sku, "location": location}


def stock_units(sku: str, text: str, *, field: str, unit: str | None) -> int:
    """An operator's quantity of `sku` as its stock ledger counts it: items for a product sold
    each, millionths of the unit for one sold by weight or volume (`unit`, the catalogue's; None
    when the catalogue does not know the SKU). "3" is 3 of the product's unit, "12.5kg" must
    name that unit; a fraction of an item, or of a millionth, is refused naming `field`."""
    try:
        amount, named = parse_amount(text)
    except ValueError as exc:
        raise CommandRejected(field, str(exc)) from None
    measure = named or unit or "each"
    if unit is not None and measure != unit:
        raise CommandRejected(field, f"{sku} is stocked in {unit}, not {measure}")
    if measure == "each":
        if amount.denominator != 1:
            raise CommandRejected(field, f"{text.strip()} is not a whole number of items")
        return int(amount)
    return int(amount * MILLIONTHS)  # (at most 6 decimals: whole millionths)


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

MAX_COMMAND_BYTES = 64 * 1024
"""A command is a few short fields: a bigger body is refused (413) before it is parsed."""
QUANTITY_MAX = 1_000_000_000
"""The most units one stock command names (either sign): more than any shelf holds, and the
ledger's 64-bit levels hold billions of such commands."""

NOT_BLANK = r"[^\t\n\x0b\x0c\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
"""A character str.strip() keeps, spelt out: a regex's `\\s` means other characters in JSON
Schema's dialect (ECMA-262), which the OpenAPI document is read in (\\ufeff, not \\x1c-\\x1f or
\\x85), and in pydantic's (Rust)."""

Name = Annotated[str, StringConstraints(pattern=NOT_BLANK, max_length=200)]
Reason = Annotated[str, StringConstraints(pattern=NOT_BLANK, max_length=2000)]
Note = Annotated[str, StringConstraints(max_length=2000)]


def whole_number(value: Any) -> Any:
    """JSON has one kind of number: 3.0 is the integer 3, as JSON Schema's `integer` says."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Units = Annotated[int, BeforeValidator(whole_number)]

PATH_VARIABLES: dict[str, dict[str, Any]] = {
    # What `order_of` and `_stock` refuse, as JSON Schema.
    "order_id": {"type": "string", "pattern": NOT_BLANK},
    "sku": {"type": "string", "pattern": NOT_BLANK, "not": {"pattern": "@"}},
    "location": {"type": "string", "pattern": NOT_BLANK, "not": {"pattern": "@"}},
}
"""The route variables of COMMANDS, as the OpenAPI document describes them."""


class CommandTooLarge(CommandRejected):
    """A body over MAX_COMMAND_BYTES; only its first MAX_COMMAND_BYTES are kept."""


class CommandBody(BaseModel):
    """The JSON body of an operator's command: exactly these fields, each of its JSON type
    (strict: `"3"` is not 3). Its JSON schema is the body's in the OpenAPI document."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """The body from the request's bytes (none is `{}`), or CommandRejected naming the
        first field that is wrong and saying what is wrong with each."""
        try:
            return cls.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            errors = [
                (".".join(str(part) for part in error["loc"]) or "body", _explain(error))
                for error in exc.errors(include_url=False, include_input=False)
            ]
        field, message = errors[0]
        raise CommandRejected(field, "; ".join([message] + [f"{f}: {m}" for f, m in errors[1:]]))


def _explain(error: ErrorDetails) -> str:
    if error["type"] == "missing":
        return "is required"
    if error["type"] == "extra_forbidden" and error["loc"] and error["loc"][0] in ACTOR_FIELDS:
        return "is not taken: who acts is who signed the request (its API key, token or session)"
    if error["type"] == "string_pattern_mismatch":  # the one pattern used: NOT_BLANK
        return "must not be blank"
    return str(error["msg"])


ACTOR_FIELDS = frozenset({"by", "reviewer", "actor"})


class ReviewCommand(CommandBody):
    """A reviewer's decision on a held order."""

    # `review` refuses a rejection without a reason; the schema says so.
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"decision": {"const": "reject"}}, "required": ["decision"]},
            "then": {"required": ["reason"], "properties": {"reason": {"type": "string"}}},
        }
    )

    decision: Literal["approve", "reject"]
    reason: Reason | None = Field(default=None, description="why; a rejection needs one")


class CancelCommand(CommandBody):
    """The merchant cancels an order; what it holds is released."""

    reason: Reason
    reason_code: Name = "MERCHANT_CANCELLED"


class StoreAccept(CommandBody):
    """The store takes the order on, saying when it will be ready."""

    ready_in_minutes: (
        Annotated[int, Interval(ge=1, le=READY_IN_MAX), BeforeValidator(whole_number)] | None
    ) = Field(default=None, description="minutes until it is ready")


class StoreDecline(CommandBody):
    """The store will not make the order: it is routed again without it, or rejected."""

    reason: Reason
    reason_code: Name = Field(default="OTHER", description="BUSY, SOLD_OUT, CLOSING, OTHER, ...")


class StoreChange(CommandBody):
    """The store takes on the amendment pending on the order (the channel's revision)."""

    revision: Annotated[int, Interval(ge=1), BeforeValidator(whole_number)] | None = Field(
        default=None, description="the revision the store saw; none: whichever is pending"
    )


class StoreChangeRefusal(StoreChange):
    """The store will not make the amendment: the order stays as it was; the channel is told."""

    reason: Reason
    reason_code: Name = Field(default="REFUSED", description="COOKED, SOLD_OUT, REFUSED, ...")


class StoreStep(CommandBody):
    """A step with nothing to add: started preparing, ready, completed."""


class StoreHandoff(CommandBody):
    """The order leaves the counter: to a courier, the customer picking it up, or a table."""

    # Only a courier is named: `store_action` refuses a courier for the customer or a table.
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"to": {"not": {"const": "courier"}}}, "required": ["to"]},
            "then": {
                "properties": {"courier": {"type": "null"}, "courier_phone": {"type": "null"}}
            },
        }
    )

    to: Literal["courier", "customer", "table"]
    courier: Name | None = Field(default=None, description="the courier's name (to: courier)")
    courier_phone: Name | None = None


class StoreDelivery(CommandBody):
    """The store's own rider delivered it."""

    proof: Note | None = Field(default=None, description="signature or photo reference")


def _store_command(action: str, body: type[CommandBody]) -> HttpCommand:
    return HttpCommand(
        f"/stores/{{location}}/orders/{{order_id}}/{action}",
        body,
        lambda at, given, actor: store_action(
            action, at["order_id"], at["location"], by=actor, **given.model_dump()
        ),
    )


class StockCount(CommandBody):
    """A physical count: on hand becomes `counted`."""

    counted: Units = Field(ge=0, le=QUANTITY_MAX)


class StockAdjustment(CommandBody):
    """A correction of on hand by `delta` (negative for damage, loss, kitchen use)."""

    delta: Units = Field(ge=-QUANTITY_MAX, le=QUANTITY_MAX, json_schema_extra={"not": {"const": 0}})
    reason: Name = Field(description="DAMAGED, LOST, FOUND, CORRECTION, CONSUMED, ...")
    note: Note | None = None


class StockReceipt(CommandBody):
    """Goods in: on hand grows by `quantity`."""

    quantity: Units = Field(ge=1, le=QUANTITY_MAX)
    reference: Note | None = Field(default=None, description="purchase order, transfer id")


class SafetyStock(CommandBody):
    """The units kept back from what is available to promise."""

    quantity: Units = Field(ge=0, le=QUANTITY_MAX)


@dataclass(frozen=True)
class HttpCommand:
    """One operator's command over HTTP: the route it is posted to, its body, and the event it
    becomes (from the route's variables and the body)."""

    path: str
    body: type[CommandBody]
    build: Callable[[Mapping[str, str], Any, str], Event]  # route variables, body, actor


COMMANDS: tuple[HttpCommand, ...] = (
    HttpCommand(
        "/orders/{order_id}/review",
        ReviewCommand,
        lambda at, body, actor: review(
            at["order_id"],
            approve=body.decision == "approve",
            reviewer=actor,
            reason=body.reason,
        ),
    ),
    HttpCommand(
        "/orders/{order_id}/cancel",
        CancelCommand,
        lambda at, body, actor: cancel(
            at["order_id"], by=actor, reason_code=body.reason_code, reason=body.reason
        ),
    ),
    _store_command("accept", StoreAccept),
    _store_command("decline", StoreDecline),
    _store_command("start", StoreStep),
    _store_command("ready", StoreStep),
    _store_command("handoff", StoreHandoff),
    _store_command("deliver", StoreDelivery),
    _store_command("complete", StoreStep),
    _store_command("accept-change", StoreChange),
    _store_command("refuse-change", StoreChangeRefusal),
    HttpCommand(
        "/stock/{sku}/{location}/set",
        StockCount,
        lambda at, body, actor: stock_set(
            at["sku"], at["location"], counted=body.counted, actor=actor
        ),
    ),
    HttpCommand(
        "/stock/{sku}/{location}/adjust",
        StockAdjustment,
        lambda at, body, actor: stock_adjust(
            at["sku"],
            at["location"],
            delta=body.delta,
            reason=body.reason,
            note=body.note,
            actor=actor,
        ),
    ),
    HttpCommand(
        "/stock/{sku}/{location}/receive",
        StockReceipt,
        lambda at, body, actor: stock_receive(
            at["sku"],
            at["location"],
            quantity=body.quantity,
            reference=body.reference,
            actor=actor,
        ),
    ),
    HttpCommand(
        "/stock/{sku}/{location}/safety",
        SafetyStock,
        lambda at, body, actor: safety_stock(
            at["sku"], at["location"], quantity=body.quantity, actor=actor
        ),
    ),
)


async def read_body(request: web.Request) -> bytes:
    """The body, read no further than one byte past MAX_COMMAND_BYTES."""
    kept = bytearray()
    while len(kept) <= MAX_COMMAND_BYTES:
        chunk = await request.content.read(MAX_COMMAND_BYTES + 1 - len(kept))
        if not chunk:
            break
        kept += chunk
    return bytes(kept)


def _too_large(request: web.Request, kept: bytes) -> CommandTooLarge:
    size = f"{request.content_length:,} bytes" if request.content_length else "unknown size"
    return CommandTooLarge(
        "body",
        f"{size} is over the {MAX_COMMAND_BYTES:,} bytes a command may have; its first "
        f"{MAX_COMMAND_BYTES:,} bytes are in the dead letter (sha256 "
        f"{hashlib.sha256(kept).hexdigest()})",
    )


def add_routes(app: web.Application, publisher: AsyncPublisher, settings: Settings) -> None:
    """Each of COMMANDS at its route: 202 once Kafka took the event; 400 naming the field (413
    for a body over MAX_COMMAND_BYTES), with the body in the DLQ; 503 when Kafka did not."""
    from aiohttp import web

    from events.codec import CodecError
    from events.models import DeadLetter
    from infra.http import problem
    from infra.publisher import PublishError
    from oms.access import principal_of

    async def reject(request: web.Request, raw: bytes, exc: CommandRejected) -> web.Response:
        letter = DeadLetter.of(
            source="api",
            source_ref=f"{request.method} {request.path}:{uuid.uuid4()}",
            reason=str(exc),
            raw=raw,
        )
        try:
            await publisher.dead_letter(letter)
        except PublishError as kafka:
            return problem(503, f"{exc}; and the dead-letter topic did not take it: {kafka}")
        status = 413 if isinstance(exc, CommandTooLarge) else 400
        return problem(status, str(exc), field=exc.field, dead_letter_id=letter.dead_letter_id)

    def route(command: HttpCommand) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def accept(request: web.Request) -> web.Response:
            if request.content_type != "application/json":
                # A form post from another site cannot send this type without a CORS preflight.
                return problem(
                    415,
                    f"a command is JSON: send Content-Type application/json, not "
                    f"{request.content_type or 'none'}",
                )
            raw = await read_body(request)
            if len(raw) > MAX_COMMAND_BYTES:
                kept = raw[:MAX_COMMAND_BYTES]
                return await reject(request, kept, _too_large(request, kept))
            try:
                actor = principal_of(request).id
                event = command.build(request.match_info, command.body.parse(raw), actor)
            except CommandRejected as exc:
                return await reject(request, raw, exc)
            try:
                await publisher.publish(topic_for(settings, event), event)
            except CodecError as exc:  # a field the contract cannot carry: the command's fault
                return await reject(request, raw, CommandRejected("body", str(exc)))
            except PublishError as exc:
                return problem(503, f"Kafka did not take it: {exc}")
            return web.json_response(
                {"event_id": event.event_id, "event_type": event.event_type}, status=202
            )

        return accept

    for command in COMMANDS:
        app.router.add_post(command.path, route(command))
