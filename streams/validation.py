"""Validation: a pure decision over one `OrderReceived` → `OrderAccepted` or `OrderRejected`.

The output's event id is derived from the input's, so re-processing a redelivered message
produces the identical event, which every consumer downstream recognises as a duplicate.
"""

from __future__ import annotations

from datetime import datetime

from events.models import (
    MILLIONTHS,
    UNITS,
    Actor,
    ActorKind,
    OrderAccepted,
    OrderEvent,
    OrderMode,
    OrderReceived,
    OrderRejected,
    PaymentStatus,
    RejectionReason,
    deterministic_id,
    follow_up,
)
from streams.catalogue import Catalogue

ACTOR = Actor(kind=ActorKind.SYSTEM, id="validation")

# Goods leave the store only paid or cash on delivery; at the counter or the table the
# customer can still pay (pickup, dine-in).
_AT_THE_DOOR = frozenset({PaymentStatus.PAID, PaymentStatus.CASH_ON_DELIVERY})
ACCEPTED_PAYMENT: dict[OrderMode, frozenset[PaymentStatus]] = {
    OrderMode.DELIVERY: _AT_THE_DOOR,
    OrderMode.SHIP: _AT_THE_DOOR,
    OrderMode.PICKUP: frozenset(PaymentStatus),
    OrderMode.DINE_IN: frozenset(PaymentStatus),
}

# Active ISO-4217 codes a channel may plausibly send (kept short on purpose: unknown → rejected).
ISO_CURRENCIES = frozenset(
    "AED ARS AUD BDT BGN BHD BRL CAD CHF CLP CNY COP CZK DKK EGP EUR GBP HKD HUF IDR ILS INR ISK "
    "JOD JPY KES KRW KWD KZT LKR MAD MOP MXN MYR NGN NOK NZD OMR PEN PHP PKR PLN QAR RON RSD RUB "
    "SAR SEK SGD THB TND TRY TWD UAH USD VND ZAR".split()
)


def rejection_reasons(
    order: OrderReceived, catalogue: Catalogue | None = None
) -> list[RejectionReason]:
    """Every reason the order cannot be accepted; empty when it can. With a catalogue, SKUs
    and the store a pickup or dine-in order names must be known (and able to serve it)."""
    reasons: list[RejectionReason] = (
        [] if catalogue is None else catalogue_reasons(order, catalogue)
    )
    if order.currency not in ISO_CURRENCIES:
        reasons.append(
            RejectionReason(
                code="UNKNOWN_CURRENCY",
                field="currency",
                message=f"{order.currency!r} is not an ISO-4217 currency",
            )
        )
    if not order.lines:
        reasons.append(
            RejectionReason(code="NO_LINES", field="lines", message="order has no lines")
        )
    for i, line in enumerate(order.lines):
        if line.quantity <= 0:
            reasons.append(
                RejectionReason(
                    code="NON_POSITIVE_QUANTITY",
                    field=f"lines.{i}.quantity",
                    message=f"quantity of {line.sku!r} is {line.quantity}, must be positive",
                )
            )
        if line.unit not in UNITS:
            reasons.append(
                RejectionReason(
                    code="UNKNOWN_UNIT",
                    field=f"lines.{i}.unit",
                    message=f"unit {line.unit!r} of {line.sku!r} is not one of {', '.join(UNITS)}",
                )
            )
        measured = line.quantity_millionths
        if measured is not None and (measured <= 0 or line.quantity != -(-measured // MILLIONTHS)):
            reasons.append(
                RejectionReason(
                    code="MEASURE_MISMATCH",
                    field=f"lines.{i}.quantity_millionths",
                    message=f"{line.sku!r} measures {measured} millionths of {line.unit}; "
                    f"quantity {line.quantity} must be that rounded up to whole units",
                )
            )
        if line.unit_price < 0 or (line.gross is not None and line.gross < 0):
            reasons.append(
                RejectionReason(
                    code="NEGATIVE_PRICE",
                    field=f"lines.{i}.unit_price",
                    message=f"unit price of {line.sku!r} is negative",
                )
            )
    for name in ("delivery_fee", "packaging_fee", "discount", "tax", "tip"):
        if getattr(order, name) < 0:
            reasons.append(
                RejectionReason(
                    code="NEGATIVE_AMOUNT", field=name, message=f"{name} must not be negative"
                )
            )
    expected = (
        sum(line.amount for line in order.lines)
        + order.delivery_fee
        + order.packaging_fee
        + order.tax
        + order.tip
        - order.discount
        + order.rounding
    )
    if expected != order.total:
        parts = (
            "lines + fees + tax"
            + (" + tip" if order.tip else "")
            + " - discount"
            + (" + rounding" if order.rounding else "")
        )
        reasons.append(
            RejectionReason(
                code="TOTAL_MISMATCH",
                field="total",
                message=f"{parts} = {expected}, but total is {order.total}",
            )
        )
    if order.payment_status not in ACCEPTED_PAYMENT[order.mode]:
        allowed = ", ".join(sorted(p.value for p in ACCEPTED_PAYMENT[order.mode]))
        reasons.append(
            RejectionReason(
                code="PAYMENT_NOT_ACCEPTED",
                field="payment_status",
                message=f"a {order.mode.value} order that is {order.payment_status.value} is "
                f"not fulfilled (accepted: {allowed})",
            )
        )
    cipher = order.platform_ciphertext  # held encrypted by the platform: held all the same
    if (
        not order.customer.phone
        and not (cipher and (cipher.phone or cipher.open_id))
        and order.mode in (OrderMode.DELIVERY, OrderMode.PICKUP)
    ):
        reasons.append(
            RejectionReason(
                code="MISSING_PHONE",
                field="customer.phone",
                message=f"a {order.mode.value} order needs a phone",
            )
        )
    if order.mode in (OrderMode.DELIVERY, OrderMode.SHIP):
        if (order.address is None or not order.address.text.strip()) and not (
            cipher and (cipher.address or cipher.open_id)
        ):
            reasons.append(
                RejectionReason(
                    code="MISSING_ADDRESS",
                    field="address",
                    message=f"a {order.mode.value} order needs an address",
                )
            )
        if not order.customer.name and not (cipher and (cipher.name or cipher.open_id)):
            reasons.append(
                RejectionReason(
                    code="MISSING_NAME",
                    field="customer.name",
                    message=f"a {order.mode.value} order needs a name",
                )
            )
    return reasons


def catalogue_reasons(order: OrderReceived, catalogue: Catalogue) -> list[RejectionReason]:
    reasons = [
        RejectionReason(
            code="UNKNOWN_SKU",
            field=f"lines.{i}.sku",
            message=f"{line.sku!r} is not in the product catalogue",
        )
        for i, line in enumerate(order.lines)
        if line.sku not in catalogue.products
    ]
    reasons += [
        RejectionReason(
            code="UNIT_MISMATCH",
            field=f"lines.{i}.unit",
            message=f"{line.sku!r} is sold in {product.unit}, the line counts {line.unit}",
        )
        for i, line in enumerate(order.lines)
        if (product := catalogue.products.get(line.sku)) is not None
        # (its stock ledger counts in the product's unit: a line in another cannot draw on it)
        and product.unit != line.unit
    ]
    if order.mode in (OrderMode.PICKUP, OrderMode.DINE_IN):
        location = catalogue.location_for(order.location_hint)
        if order.location_hint is None:
            reasons.append(
                RejectionReason(
                    code="MISSING_LOCATION",
                    field="location_hint",
                    message=f"a {order.mode.value} order must name its store",
                )
            )
        elif location is None:
            reasons.append(
                RejectionReason(
                    code="UNKNOWN_LOCATION",
                    field="location_hint",
                    message=f"{order.location_hint!r} is not in the location registry",
                )
            )
        elif order.mode not in location.capabilities:
            reasons.append(
                RejectionReason(
                    code="LOCATION_CANNOT_SERVE",
                    field="location_hint",
                    message=f"{location.id} does not do {order.mode.value}",
                )
            )
    return reasons


def verdict(
    order: OrderReceived,
    *,
    cause: str,
    sequence: int,
    now: datetime,
    catalogue: Catalogue | None = None,
) -> OrderEvent:
    """`OrderAccepted` or `OrderRejected` for `order`, caused by the event with id `cause` (the
    one that brought it to validation: its receipt or a revision); the id follows from it, so
    re-processing a redelivered input yields the identical verdict."""
    envelope = follow_up(order, sequence=sequence, causation_id=cause, actor=ACTOR, now=now)
    reasons = rejection_reasons(order, catalogue)
    if reasons:
        return OrderRejected(
            event_id=deterministic_id(cause, "OrderRejected"),
            reasons=reasons,
            **envelope,
        )
    return OrderAccepted(
        event_id=deterministic_id(cause, "OrderAccepted"),
        total=order.total,
        currency=order.currency,
        **envelope,
    )


def decide(order: OrderReceived, *, now: datetime) -> list[OrderEvent]:
    """The received order itself (into the order log) followed by the validation verdict."""
    return [order, verdict(order, cause=order.event_id, sequence=order.sequence + 1, now=now)]
