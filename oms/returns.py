"""Returns and refunds (docs/carriers.md, "Returns"): `oms returns ...` and its HTTP routes.

Each step reads the order log (`oms.shipping.the_order_log`), checks the step with the pure
decisions of `streams.returns` (which name the field that is wrong), and sends an order command
the order agent checks against the lifecycle and logs: `ReturnRequested`, `ReturnApproved` or
`ReturnDenied`, `ReturnLabelCreated` (the label bought from a configured carrier with the
parties reversed, reference `return_id@location` as the idempotency key), `ReturnReceived` with
`ReturnInspected` (the agent then sends the resellable units to the ledger), `OrderRefunded`.

Every command's id derives from the return and the step, so a step sent twice (a retry, a
crash between send and answer) is taken once by the agent; a second label request asks the
carrier with the same reference and gets the first label back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from annotated_types import Interval
from pydantic import BeforeValidator, Field

from events.models import (
    Event,
    InspectedLine,
    OrderEvent,
    OrderModified,
    OrderReceived,
    OrderRefunded,
    RefundRequested,
    ReturnApproved,
    ReturnDenied,
    ReturnInspected,
    ReturnLabelCreated,
    ReturnLine,
    ReturnReceived,
    ReturnRequested,
    deterministic_id,
    utc_now,
)
from infra.settings import Settings
from oms.operations import (
    CommandBody,
    CommandRejected,
    Name,
    Note,
    Reason,
    order_of,
    topic_for,
    whole_number,
)
from streams.returns import (
    OrderReturns,
    Return,
    ReturnRefused,
    ReturnRules,
    Step,
    check_inspection,
    check_receipt,
    check_request,
    check_step,
    label_reference,
    refund,
)

if TYPE_CHECKING:
    from aiohttp import web

    from connectors.carriers.base import Carrier
    from infra.publisher import AsyncPublisher
    from oms.shipping import ShippingConfig


def rules_of(settings: Settings) -> ReturnRules:
    return ReturnRules(
        window_days=settings.return_window_days, restocking_fee_bps=settings.restocking_fee_bps
    )


# ---------------------------------------------------------------- the order log


@dataclass
class ReturnsView:
    """What the order log says of returns: each order's `OrderReturns`, the order as placed
    and last stated (personal data opened: the customer's address goes on a return label),
    and the platforms' refund requests by id."""

    books: dict[str, OrderReturns]
    placed: dict[str, tuple[OrderReceived, OrderReceived | OrderModified]]
    refund_requests: dict[tuple[str, str], RefundRequested]

    def book(self, order_id: str) -> OrderReturns:
        found = self.books.get(order_id)
        if found is None:
            raise CommandRejected("order_id", f"no order {order_id!r} on the order log")
        return found


def view_of(events: Iterable[Event]) -> ReturnsView:
    from streams.returns import apply

    view = ReturnsView({}, {}, {})
    for event in events:
        if not isinstance(event, OrderEvent):
            continue
        after = apply(view.books.get(event.order_id), event)
        if after is None:
            continue
        view.books[event.order_id] = after
        if isinstance(event, OrderReceived):
            view.placed[event.order_id] = (event, event)
        elif isinstance(event, OrderModified) and event.order_id in view.placed:
            view.placed[event.order_id] = (view.placed[event.order_id][0], event)
        elif isinstance(event, RefundRequested):
            view.refund_requests[(event.order_id, event.refund_id)] = event
    return view


def read_view(settings: Settings) -> ReturnsView:
    from oms.shipping import the_order_log

    return view_of(the_order_log(settings))


# ---------------------------------------------------------------- the commands (no I/O)


def _lines(lines: Iterable[ReturnLine]) -> str:
    return ",".join(f"{line.sku}×{line.quantity}" for line in sorted(lines, key=lambda x: x.sku))


def _command(order_id: str, by: str, *, key: str) -> dict[str, Any]:
    """The envelope of a return command; its id derived from `key` (idempotent)."""
    return order_of(order_id, by) | {"event_id": deterministic_id("return-command", order_id, key)}


def _refused(exc: ReturnRefused) -> CommandRejected:
    return CommandRejected(exc.field, str(exc).split(": ", 1)[1])


def request_return(
    view: ReturnsView,
    order_id: str,
    *,
    lines: list[ReturnLine],
    reason: str,
    by: str,
    now: datetime,
    rules: ReturnRules,
    return_id: str | None = None,
    refund_request_id: str | None = None,
) -> ReturnRequested:
    """A return of `lines` (or of the lines of the platform's refund request
    `refund_request_id`); the return id is the request's when there is one."""
    book = view.book(order_id)
    if refund_request_id is not None:
        asked = view.refund_requests.get((order_id, refund_request_id))
        if asked is None:
            raise CommandRejected(
                "refund_request_id", f"order {order_id} has no refund request {refund_request_id}"
            )
        lines = (
            lines
            or list(asked.lines)
            or [ReturnLine(sku=sku, quantity=n) for sku, n in sorted(book.bought().items())]
        )
        reason = reason or asked.reason
        return_id = return_id or f"refund:{refund_request_id}"
    if not reason.strip():
        raise CommandRejected("reason", "say why the goods come back")
    return_id = return_id or "R-" + deterministic_id(order_id, "return", _lines(lines))[:8]
    try:
        check_request(book, return_id=return_id, lines=lines, now=now, rules=rules)
    except ReturnRefused as exc:
        raise _refused(exc) from None
    return ReturnRequested(
        **_command(order_id, by, key=f"{return_id}/requested"),
        return_id=return_id,
        lines=lines,
        reason=reason,
        refund_request_id=refund_request_id,
    )


def _step(view: ReturnsView, order_id: str, return_id: str, step: Step) -> Return:
    try:
        return check_step(view.book(order_id), return_id, step)
    except ReturnRefused as exc:
        raise _refused(exc) from None


def approve(
    view: ReturnsView, order_id: str, return_id: str, *, to: str, by: str, note: str | None = None
) -> ReturnApproved:
    if not to.strip() or "@" in to:
        raise CommandRejected("return_location", f"{to!r} is not a valid location")
    _step(view, order_id, return_id, Step.APPROVED)
    return ReturnApproved(
        **_command(order_id, by, key=f"{return_id}/approved"),
        return_id=return_id,
        return_location=to,
        note=note,
    )


def deny(view: ReturnsView, order_id: str, return_id: str, *, reason: str, by: str) -> ReturnDenied:
    if not reason.strip():
        raise CommandRejected("reason", "a denied return says why")
    _step(view, order_id, return_id, Step.DENIED)
    return ReturnDenied(
        **_command(order_id, by, key=f"{return_id}/denied"), return_id=return_id, reason=reason
    )


def receive(
    view: ReturnsView,
    order_id: str,
    return_id: str,
    *,
    inspected: list[InspectedLine],
    by: str,
) -> tuple[ReturnReceived, ReturnInspected]:
    """The goods back at the return location, inspected line by line: resellable units go back
    into stock where each line says, damaged ones are written off."""
    book = view.book(order_id)
    received = [ReturnLine(sku=line.sku, quantity=line.quantity) for line in inspected]
    try:
        ret = check_receipt(book, return_id, received)
        check_inspection(Return(**{**ret.__dict__, "received": tuple(received)}), inspected)
    except ReturnRefused as exc:
        raise _refused(exc) from None
    conditions = {line.condition for line in inspected}
    condition = conditions.pop().upper() if len(conditions) == 1 else "MIXED"
    return (
        ReturnReceived(
            **_command(order_id, by, key=f"{return_id}/received"),
            return_id=return_id,
            lines=received,
            condition=condition,
            return_location=ret.return_location,
        ),
        ReturnInspected(
            **_command(order_id, by, key=f"{return_id}/inspected"),
            return_id=return_id,
            lines=inspected,
        ),
    )


def refund_of(
    view: ReturnsView,
    order_id: str,
    return_id: str,
    *,
    by: str,
    rules: ReturnRules,
    shipping: bool | None = None,
    restocking_fee: int | None = None,
) -> OrderRefunded:
    """The refund of an inspected return (streams.returns.refund says how much)."""
    book = view.book(order_id)
    ret = _step(view, order_id, return_id, Step.REFUNDED)
    if restocking_fee is not None and restocking_fee < 0:
        raise CommandRejected("restocking_fee", f"{restocking_fee} is negative")
    money = refund(book, ret, rules=rules, shipping=shipping, restocking_fee=restocking_fee)
    return OrderRefunded(
        **_command(order_id, by, key=f"{return_id}/refunded"),
        refund_id=f"refund:{return_id}",
        amount=money.amount,
        currency=book.currency,
        reason=ret.reason,
        return_id=return_id,
        lines=list(money.lines),
        shipping_refunded=money.shipping,
        restocking_fee=money.restocking_fee,
    )


# ---------------------------------------------------------------- the return label


def buy_label(
    view: ReturnsView,
    order_id: str,
    return_id: str,
    *,
    carriers: Mapping[str, Carrier],
    config: ShippingConfig,
    by: str,
    now: datetime,
) -> ReturnLabelCreated:
    """A return label: the customer sends, the return location receives, the returned lines
    are the parcel; rate-shopped like a wave, bought with `return_id@location` as the carrier's
    idempotency key (asked again, the carrier answers with the first label)."""
    from connectors.outbound import CallFailed
    from events.lifecycle import OrderStatus
    from oms.shipping import ReadyOrder, asking_again, quotes_for, shipment_request
    from streams.rate_shopping import choose

    ret = _step(view, order_id, return_id, Step.LABELLED)
    location = ret.return_location
    assert location is not None, "an approved return names its location"
    first, placed = view.placed[order_id]
    returned = {line.sku for line in ret.lines}
    parcel = placed.model_copy(update={"lines": [x for x in placed.lines if x.sku in returned]})
    try:
        outbound = shipment_request(
            ReadyOrder(first, parcel, location, OrderStatus.RETURN_REQUESTED, now), config
        )
    except ValueError as exc:
        raise CommandRejected("return_location", str(exc)) from None
    request = outbound.model_copy(
        update={
            "sender": outbound.recipient,
            "recipient": outbound.sender,
            "reference": label_reference(return_id, location),
            "cod_amount": None,
        }
    )
    quotes, failed = quotes_for(request, carriers)
    deadline = now + timedelta(days=config.deliver_within_days)
    choice = choose(request, quotes, config.rules, deliver_by=deadline)
    if choice.chosen is None:
        why = "; ".join(f"{k}: {v}" for k, v in failed.items()) or "no carrier quoted for it"
        raise CommandRejected("carrier", f"nothing may carry the return: {why}")
    try:
        chosen = choice.chosen
        shipment = asking_again(
            f"carrier {chosen.carrier}: the return label of {request.reference}",
            lambda: carriers[chosen.carrier].create(request, chosen.service),
        )
    except CallFailed as exc:
        raise CommandRejected("carrier", f"{choice.chosen.carrier} sold no label: {exc}") from None
    return ReturnLabelCreated(
        **_command(order_id, by, key=f"{return_id}/label"),
        return_id=return_id,
        reference=request.reference,
        carrier=shipment.carrier,
        service=shipment.service,
        tracking_number=shipment.tracking_number,
        return_location=location,
        cost=shipment.price if shipment.price is not None else choice.price,
        cost_currency=shipment.currency or choice.chosen.currency,
    )


# ---------------------------------------------------------------- sending


def send_all(settings: Settings, events: Iterable[Event]) -> None:
    """Publish the commands in order (one key: the agent takes them in order) and wait."""
    from infra.publisher import Publisher

    publisher = Publisher(settings)
    for event in events:
        publisher.publish(topic_for(settings, event), event)
    publisher.flush(30)


def listing(view: ReturnsView, *, order_id: str | None = None) -> list[dict[str, Any]]:
    """Every return on the log (of one order), oldest request first."""
    rows = []
    for book in view.books.values():
        if order_id is not None and book.order_id != order_id:
            continue
        for ret in book.returns.values():
            rows.append(
                {
                    "order_id": book.order_id,
                    "return_id": ret.return_id,
                    "step": ret.step.value,
                    "lines": _lines(ret.lines),
                    "reason": ret.reason,
                    "return_location": ret.return_location or "",
                    "tracking_number": ret.tracking_number or "",
                    "refunded": "" if ret.refunded is None else ret.refunded,
                    "requested_at": ret.requested_at.isoformat(timespec="seconds"),
                }
            )
    return sorted(rows, key=lambda row: row["requested_at"])


# ---------------------------------------------------------------- over HTTP (`oms api`)

Units = Annotated[int, Interval(ge=1, le=1_000_000), BeforeValidator(whole_number)]
Money = Annotated[int, Interval(ge=0, le=10**15), BeforeValidator(whole_number)]


class ReturnLineBody(CommandBody):
    sku: Name
    quantity: Units
    reason: Reason | None = None


class ReturnRequestBody(CommandBody):
    """A return asked for by the customer (at the service desk or a store), or the goods of a
    platform's refund request (`refund_request_id`: its lines unless `lines` are given)."""

    lines: list[ReturnLineBody] = Field(default_factory=list, max_length=4000)
    reason: Reason | None = None
    return_id: Name | None = Field(default=None, description="none: derived from the lines")
    refund_request_id: Name | None = None


class ReturnApproval(CommandBody):
    """The return may come back, to `return_location`."""

    return_location: Name
    note: Note | None = None


class ReturnDenial(CommandBody):
    reason: Reason


class ReturnLabel(CommandBody):
    """Buy the return label from the configured carriers."""


class InspectedLineBody(CommandBody):
    sku: Name
    quantity: Units
    condition: str = Field(pattern="^(resellable|damaged)$")
    restock_location: Name | None = Field(
        default=None, description="resellable units go back into stock here"
    )
    note: Note | None = None


class ReturnReceipt(CommandBody):
    """The goods received, inspected line by line."""

    lines: list[InspectedLineBody] = Field(min_length=1, max_length=4000)


class ReturnRefund(CommandBody):
    """Refund an inspected return; the rules decide shipping and the fee unless given."""

    shipping: bool | None = Field(default=None, description="refund the delivery fee")
    restocking_fee: Money | None = Field(default=None, description="minor units")


def _http_step(
    action: str, view: ReturnsView, at: Mapping[str, str], body: Any, actor: str, **io: Any
) -> list[Event]:
    order_id, return_id = at["order_id"], at["return_id"]
    if action == "approve":
        return [approve(view, order_id, return_id, to=body.return_location, by=actor,
                        note=body.note)]  # fmt: skip
    if action == "deny":
        return [deny(view, order_id, return_id, reason=body.reason, by=actor)]
    if action == "receive":
        inspected = [InspectedLine(**line.model_dump()) for line in body.lines]
        return list(receive(view, order_id, return_id, inspected=inspected, by=actor))
    if action == "refund":
        return [
            refund_of(view, order_id, return_id, by=actor, rules=io["rules"],
                      shipping=body.shipping, restocking_fee=body.restocking_fee)
        ]  # fmt: skip
    if action == "label":
        from oms.shipping import ShippingMisconfigured, carriers_from_settings, load_config

        settings: Settings = io["settings"]
        try:
            config = load_config(settings.shipping_file)
            carriers = carriers_from_settings(settings, config)
        except ShippingMisconfigured as exc:
            raise CommandRejected("carrier", str(exc)) from None
        return [buy_label(view, order_id, return_id, carriers=carriers, config=config,
                          by=actor, now=utc_now())]  # fmt: skip
    raise CommandRejected("action", f"{action!r} is not a return step")


RETURN_STEPS: dict[str, type[CommandBody]] = {
    "approve": ReturnApproval,
    "deny": ReturnDenial,
    "label": ReturnLabel,
    "receive": ReturnReceipt,
    "refund": ReturnRefund,
}
"""`POST /returns/{order_id}/{return_id}/{step}`: each step's body."""


def add_routes(app: web.Application, publisher: AsyncPublisher, settings: Settings) -> None:
    """`POST /orders/{order_id}/returns` (a request), `POST /returns/{order_id}/{return_id}/{step}`
    (the steps of RETURN_STEPS), `GET /orders/{order_id}/returns` and `GET /returns[?order_id=]`.
    A command is 202 once Kafka took it; 400 naming the field (the body dead-lettered); 503
    when Kafka did not take it."""
    from aiohttp import web

    from events.models import DeadLetter
    from infra.http import problem
    from infra.publisher import PublishError
    from oms.access import principal_of
    from oms.operations import MAX_COMMAND_BYTES, read_body

    rules = rules_of(settings)

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
        return problem(400, str(exc), field=exc.field, dead_letter_id=letter.dead_letter_id)

    def command(
        body_type: type[CommandBody],
        build: Callable[[ReturnsView, Mapping[str, str], Any, str], list[Event]],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def accept(request: web.Request) -> web.Response:
            if request.content_type != "application/json":
                return problem(415, "a command is JSON: send Content-Type application/json")
            raw = await read_body(request)
            if len(raw) > MAX_COMMAND_BYTES:
                return problem(413, f"a command has at most {MAX_COMMAND_BYTES:,} bytes")
            try:
                actor = principal_of(request).id
                body = body_type.parse(raw)
                # The log is read (and a label bought) off the event loop.
                view = await asyncio.to_thread(read_view, settings)
                at = dict(request.match_info)
                events = await asyncio.to_thread(build, view, at, body, actor)
            except CommandRejected as exc:
                return await reject(request, raw, exc)
            try:
                for event in events:
                    await publisher.publish(topic_for(settings, event), event)
            except PublishError as exc:
                return problem(503, f"Kafka did not take it: {exc}")
            return web.json_response(
                {"events": [{"event_id": e.event_id, "event_type": e.event_type} for e in events]},
                status=202,
            )

        return accept

    def requested(
        view: ReturnsView, at: Mapping[str, str], body: ReturnRequestBody, actor: str
    ) -> list[Event]:
        lines = [ReturnLine(**line.model_dump()) for line in body.lines]
        return [
            request_return(
                view, at["order_id"], lines=lines, reason=body.reason or "", by=actor,
                now=utc_now(), rules=rules, return_id=body.return_id,
                refund_request_id=body.refund_request_id,
            )
        ]  # fmt: skip

    async def listed(request: web.Request) -> web.Response:
        order_id = request.match_info.get("order_id") or request.query.get("order_id")
        view = await asyncio.to_thread(read_view, settings)
        return web.json_response({"returns": listing(view, order_id=order_id)})

    app.router.add_post("/orders/{order_id}/returns", command(ReturnRequestBody, requested))
    app.router.add_get("/orders/{order_id}/returns", listed)
    app.router.add_get("/returns", listed)
    for action, body_type in RETURN_STEPS.items():

        def step(
            view: ReturnsView, at: Mapping[str, str], body: Any, actor: str, action: str = action
        ) -> list[Event]:
            return _http_step(action, view, at, body, actor, rules=rules, settings=settings)

        app.router.add_post(
            f"/returns/{{order_id}}/{{return_id}}/{action}", command(body_type, step)
        )
