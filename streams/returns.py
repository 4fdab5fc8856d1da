"""Returns and refunds as pure decisions (docs/carriers.md, "Returns"): no I/O, no clock; the
order's return state and `now` are passed in.

A return goes requested → approved (or denied) → label bought (optional) → received →
inspected → refunded. `fold` reads an order's log into its `OrderReturns`; the checks
(`check_request`, `check_step`, `check_receipt`, `check_inspection`) raise `ReturnRefused`
naming the field, before anything is sent; `refund` works out the money and `restock` the
stock commands an inspection leads to (sent by the order agent once it logged the inspection).

What always holds (the property tests prove it):
- a SKU is never returned, over all of an order's returns not denied, more than was bought;
- a refund is never more than the order's lines and delivery fee were paid, less what was
  refunded before; the restocking fee never makes it negative. Money is integer minor units.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from events.models import (
    InspectedLine,
    OrderDelivered,
    OrderEvent,
    OrderLine,
    OrderModified,
    OrderReceived,
    OrderRefunded,
    RefundedLine,
    ReturnApproved,
    ReturnDenied,
    ReturnInspected,
    ReturnLabelCreated,
    ReturnLine,
    ReturnReceived,
    ReturnRequested,
    StockReceived,
    deterministic_id,
)


class ReturnRefused(ValueError):
    """A return step that may not happen; `field` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class Step(StrEnum):
    REQUESTED = "requested"
    APPROVED = "approved"
    DENIED = "denied"
    LABELLED = "labelled"
    RECEIVED = "received"
    INSPECTED = "inspected"
    REFUNDED = "refunded"


# Which step may follow which. A label is optional (a customer may bring the goods to a store).
NEXT: dict[Step, frozenset[Step]] = {
    Step.REQUESTED: frozenset({Step.APPROVED, Step.DENIED}),
    Step.APPROVED: frozenset({Step.LABELLED, Step.RECEIVED}),
    Step.LABELLED: frozenset({Step.RECEIVED}),
    Step.RECEIVED: frozenset({Step.INSPECTED}),
    Step.INSPECTED: frozenset({Step.REFUNDED}),
    Step.DENIED: frozenset(),
    Step.REFUNDED: frozenset(),
}
CONDITIONS = ("resellable", "damaged")
# Reasons that are the seller's fault: no restocking fee, and the delivery fee comes back.
SELLER_FAULT = frozenset({"damaged", "defective", "wrong_item", "not_as_described", "late"})


@dataclass(frozen=True)
class Return:
    return_id: str
    step: Step
    lines: tuple[ReturnLine, ...]
    reason: str
    requested_at: datetime
    return_location: str | None = None
    tracking_number: str | None = None
    received: tuple[ReturnLine, ...] = ()
    inspected: tuple[InspectedLine, ...] = ()
    refunded: int | None = None

    @property
    def open(self) -> bool:
        return self.step not in (Step.DENIED, Step.REFUNDED)


@dataclass(frozen=True)
class OrderReturns:
    """What a return decision needs of one order: what was bought and paid, when it was
    delivered, its returns, and what was refunded already."""

    order_id: str
    channel: str
    external_id: str
    correlation_id: str
    currency: str
    lines: tuple[OrderLine, ...]
    delivery_fee: int
    total: int
    delivered_at: datetime | None = None
    returns: Mapping[str, Return] = field(default_factory=dict)
    refunded: int = 0

    def claimed(self, *, leaving_out: str | None = None) -> dict[str, int]:
        """Units per SKU in returns not denied (received units once received)."""
        units: dict[str, int] = {}
        for ret in self.returns.values():
            if ret.step is Step.DENIED or ret.return_id == leaving_out:
                continue
            for line in ret.received or ret.lines:
                units[line.sku] = units.get(line.sku, 0) + line.quantity
        return units

    def bought(self) -> dict[str, int]:
        units: dict[str, int] = {}
        for line in self.lines:
            units[line.sku] = units.get(line.sku, 0) + line.quantity
        return units


@dataclass(frozen=True)
class ReturnRules:
    """The shop's return policy."""

    window_days: int = 30  # after delivery
    restocking_fee_bps: int = 0  # of the goods refunded, for a return that is not our fault


# ---------------------------------------------------------------- fold


def apply(book: OrderReturns | None, event: OrderEvent) -> OrderReturns | None:
    """The order's returns after one event of its log (None until its receipt)."""
    if isinstance(event, OrderReceived):
        return OrderReturns(
            order_id=event.order_id,
            channel=event.channel,
            external_id=event.external_id,
            correlation_id=event.correlation_id,
            currency=event.currency,
            lines=tuple(event.lines),
            delivery_fee=event.delivery_fee,
            total=event.total,
        )
    if book is None:
        return None
    match event:
        case OrderModified():
            return replace(
                book,
                lines=tuple(event.lines),
                delivery_fee=event.delivery_fee,
                total=event.total,
                currency=event.currency or book.currency,
            )
        case OrderDelivered():
            return replace(book, delivered_at=event.occurred_at)
        case ReturnRequested():
            opened = Return(
                return_id=event.return_id,
                step=Step.REQUESTED,
                lines=tuple(event.lines),
                reason=event.reason,
                requested_at=event.occurred_at,
            )
            return replace(book, returns={**book.returns, event.return_id: opened})
        case OrderRefunded():
            after = replace(book, refunded=book.refunded + event.amount)
            if event.return_id is None or event.return_id not in book.returns:
                return after
            return _moved(after, event.return_id, step=Step.REFUNDED, refunded=event.amount)
        case ReturnApproved():
            return _moved(
                book, event.return_id, step=Step.APPROVED, return_location=event.return_location
            )
        case ReturnDenied():
            return _moved(book, event.return_id, step=Step.DENIED)
        case ReturnLabelCreated():
            return _moved(
                book, event.return_id, step=Step.LABELLED, tracking_number=event.tracking_number
            )
        case ReturnReceived():
            return _moved(book, event.return_id, step=Step.RECEIVED, received=tuple(event.lines))
        case ReturnInspected():
            return _moved(book, event.return_id, step=Step.INSPECTED, inspected=tuple(event.lines))
    return book


def _moved(book: OrderReturns, return_id: str, **changes: object) -> OrderReturns:
    ret = book.returns.get(return_id)
    if ret is None:
        return book
    return replace(book, returns={**book.returns, return_id: replace(ret, **changes)})  # type: ignore[arg-type]


def fold(events: Iterable[OrderEvent]) -> dict[str, OrderReturns]:
    """Every order's returns, from the order log (any orders, in log order per order)."""
    books: dict[str, OrderReturns] = {}
    for event in events:
        after = apply(books.get(event.order_id), event)
        if after is not None:
            books[event.order_id] = after
    return books


# ---------------------------------------------------------------- checks


def check_request(
    book: OrderReturns,
    *,
    return_id: str,
    lines: list[ReturnLine],
    now: datetime,
    rules: ReturnRules,
) -> None:
    """A new return: each SKU bought, quantities positive, and with the order's other returns
    (not denied) no more than was bought; within the window after delivery."""
    if not return_id.strip():
        raise ReturnRefused("return_id", "must not be empty")
    if return_id in book.returns:
        raise ReturnRefused("return_id", f"{return_id} is already a return of this order")
    if not lines:
        raise ReturnRefused("lines", "a return names at least one line")
    if book.delivered_at is not None and now - book.delivered_at > timedelta(
        days=rules.window_days
    ):
        raise ReturnRefused(
            "order_id", f"delivered more than {rules.window_days} days ago: too late to return"
        )
    bought, claimed = book.bought(), book.claimed()
    asked: dict[str, int] = {}
    for line in lines:
        if line.quantity < 1:
            raise ReturnRefused("lines", f"{line.sku}: {line.quantity} is not a quantity")
        if line.sku not in bought:
            raise ReturnRefused("lines", f"{line.sku} was not bought on this order")
        asked[line.sku] = asked.get(line.sku, 0) + line.quantity
    for sku, units in asked.items():
        left = bought[sku] - claimed.get(sku, 0)
        if units > left:
            raise ReturnRefused(
                "lines",
                f"{sku}: {units} asked, {bought[sku]} bought and {claimed.get(sku, 0)} "
                f"returned or on their way already",
            )


def check_step(book: OrderReturns, return_id: str, step: Step) -> Return:
    """The return, when `step` may follow where it stands."""
    ret = book.returns.get(return_id)
    if ret is None:
        raise ReturnRefused("return_id", f"order {book.order_id} has no return {return_id}")
    if step not in NEXT[ret.step]:
        raise ReturnRefused(
            "return_id", f"return {return_id} is {ret.step.value}: it cannot be {step.value} now"
        )
    return ret


def check_receipt(book: OrderReturns, return_id: str, lines: list[ReturnLine]) -> Return:
    """What came back: no more of a SKU than the return asked for."""
    ret = check_step(book, return_id, Step.RECEIVED)
    asked: dict[str, int] = {}
    for line in ret.lines:
        asked[line.sku] = asked.get(line.sku, 0) + line.quantity
    got: dict[str, int] = {}
    for line in lines:
        if line.quantity < 1:
            raise ReturnRefused("lines", f"{line.sku}: {line.quantity} is not a quantity")
        got[line.sku] = got.get(line.sku, 0) + line.quantity
    for sku, units in got.items():
        if units > asked.get(sku, 0):
            raise ReturnRefused(
                "lines", f"{sku}: {units} received, the return asked for {asked.get(sku, 0)}"
            )
    if not got:
        raise ReturnRefused("lines", "nothing received")
    return ret


def check_inspection(ret: Return, lines: list[InspectedLine]) -> None:
    """Every unit received inspected once; a resellable line has a place to go back to."""
    for line in lines:
        if line.condition not in CONDITIONS:
            raise ReturnRefused("condition", f"{line.condition!r} is not one of {CONDITIONS}")
        if line.quantity < 1:
            raise ReturnRefused("lines", f"{line.sku}: {line.quantity} is not a quantity")
        if line.condition == "resellable" and not (line.restock_location or "").strip():
            raise ReturnRefused("restock_location", f"{line.sku}: resellable, but restocked where?")
        if line.condition == "damaged" and line.restock_location:
            raise ReturnRefused("restock_location", f"{line.sku}: damaged units are written off")
    received = _units(ret.received)
    inspected = _units(lines)
    if inspected != received:
        raise ReturnRefused(
            "lines", f"inspected {_text(inspected)}, but received {_text(received)}"
        )


def _units(lines: Iterable[ReturnLine | InspectedLine]) -> dict[str, int]:
    units: dict[str, int] = {}
    for line in lines:
        units[line.sku] = units.get(line.sku, 0) + line.quantity
    return units


def _text(units: Mapping[str, int]) -> str:
    return ", ".join(f"{sku} × {n}" for sku, n in sorted(units.items())) or "nothing"


# ---------------------------------------------------------------- money


def paid_for(line: OrderLine) -> int:
    """What the customer paid for a whole line, as the order states it: its `total`, else its
    gross less its discount (plus its tax when the prices exclude it)."""
    if line.total is not None:
        return max(line.total, 0)
    paid = line.amount - line.discount + (0 if line.prices_include_tax else line.tax)
    return max(paid, 0)


@dataclass(frozen=True)
class Refund:
    lines: tuple[RefundedLine, ...]
    shipping: int
    restocking_fee: int
    amount: int


def refund(
    book: OrderReturns,
    ret: Return,
    *,
    rules: ReturnRules,
    shipping: bool | None = None,
    restocking_fee: int | None = None,
) -> Refund:
    """What a received return refunds: the received units' share of what their lines were
    paid (rounded down), the delivery fee when `shipping` (None: when the whole order came
    back or the reason is the seller's fault), less the restocking fee (None: the rules', and
    none for the seller's fault); never more than was paid and not yet refunded."""
    lines: list[RefundedLine] = []
    for sku, units in sorted(_units(ret.received).items()):
        bought = [line for line in book.lines if line.sku == sku]
        quantity = sum(line.quantity for line in bought)
        paid = sum(paid_for(line) for line in bought)
        amount = paid * min(units, quantity) // quantity if quantity > 0 else 0
        lines.append(RefundedLine(sku=sku, quantity=units, amount=amount))
    goods = sum(line.amount for line in lines)
    fault = _seller_fault(ret)
    if shipping is None:
        everything = _units(ret.received) == book.bought() and not book.refunded
        shipping = everything or fault
    shipping_back = max(book.delivery_fee, 0) if shipping else 0
    if restocking_fee is None:
        restocking_fee = 0 if fault else goods * max(rules.restocking_fee_bps, 0) // 10_000
    fee = min(max(restocking_fee, 0), goods)
    paid_total = sum(paid_for(line) for line in book.lines) + max(book.delivery_fee, 0)
    left = max(min(paid_total, book.total) - book.refunded, 0)
    amount = min(goods + shipping_back - fee, left)
    return Refund(lines=tuple(lines), shipping=shipping_back, restocking_fee=fee, amount=amount)


def _seller_fault(ret: Return) -> bool:
    reasons = {ret.reason.strip().lower()} | {
        (line.reason or "").strip().lower() for line in ret.lines
    }
    return bool(reasons & SELLER_FAULT)


# ---------------------------------------------------------------- stock


def restock(inspected: ReturnInspected, *, now: datetime) -> list[StockReceived]:
    """The ledger commands an inspection leads to: resellable units received back at their
    restock location (reference `return:RETURN_ID`); damaged ones nothing. Ids derive from the
    return, the SKU and the location, so a repeat is taken once by the ledger."""
    units: dict[tuple[str, str], int] = {}
    for line in inspected.lines:
        if line.condition == "resellable" and line.restock_location:
            key = (line.sku, line.restock_location)
            units[key] = units.get(key, 0) + line.quantity
    return [
        StockReceived(
            event_id=deterministic_id("return-restock", inspected.return_id, sku, location),
            sequence=1,
            occurred_at=now,
            recorded_at=now,
            correlation_id=inspected.correlation_id,
            causation_id=inspected.event_id,
            actor=inspected.actor,
            sku=sku,
            location=location,
            quantity=quantity,
            reference=f"return:{inspected.return_id}",
        )
        for (sku, location), quantity in sorted(units.items())
    ]


def written_off(inspected: ReturnInspected) -> dict[str, int]:
    """The damaged units per SKU: recorded on the inspection, no stock."""
    return _units(line for line in inspected.lines if line.condition == "damaged")


def label_reference(return_id: str, location: str) -> str:
    """The return label's idempotency key at the carrier."""
    return f"{return_id}@{location}"
