"""Fraud screening: a pure score over one `OrderReceived`, its customer history and the
catalogue; at or above the threshold the order is held (`OrderHeld`) for a reviewer.

Each rule that fires adds its points and a `FraudSignal` saying the numbers, so a reviewer sees
why. The hold's event id follows from the event that caused it, so re-screening a redelivered
order yields the identical `OrderHeld`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StrictInt, ValidationError

from events.models import (
    Actor,
    ActorKind,
    FraudSignal,
    Frozen,
    OrderHeld,
    OrderMode,
    OrderReceived,
    deterministic_id,
    follow_up,
)
from streams.catalogue import Catalogue, distance_m
from streams.customers import CustomerHistory, customer_key, normalise_address, normalise_phone

ACTOR = Actor(kind=ActorKind.SYSTEM, id="fraud")

_Points = Annotated[StrictInt, Field(ge=0)]
_Limit = Annotated[StrictInt, Field(ge=0)]
_Phone = Annotated[str, AfterValidator(normalise_phone)]
_AddressText = Annotated[str, AfterValidator(normalise_address)]


class FraudRulesError(ValueError):
    """A rules file that cannot be used; the message names the file and the field."""

    def __init__(self, path: Path, field: str | None, message: str) -> None:
        super().__init__(f"{path}: {field}: {message}" if field else f"{path}: {message}")
        self.path = path
        self.field = field


class FraudRules(Frozen):
    """Limits and points of each rule; a rule with 0 points is off. Money in minor units.

    Defaults: a blocklist hit holds on its own; velocity on one phone and one address together
    (the usual shape of a burst) holds; any one other rule alone does not."""

    threshold: Annotated[StrictInt, Field(ge=1)] = 60
    window_minutes: Annotated[StrictInt, Field(ge=1)] = 60

    velocity_phone_limit: _Limit = Field(
        default=3, description="more orders than this from one phone within the window"
    )
    velocity_phone_points: _Points = 35
    velocity_address_limit: _Limit = 3
    velocity_address_points: _Points = 25
    velocity_device_limit: _Limit = 3
    velocity_device_points: _Points = 25

    amount_outlier_factor: float = Field(
        default=5.0, gt=0, description="total more than this times the customer's mean"
    )
    amount_outlier_min_orders: Annotated[StrictInt, Field(ge=1)] = 2
    amount_outlier_points: _Points = 30

    far_from_stores_m: _Limit = Field(
        default=30_000, description="farther than this from every location serving the mode"
    )
    far_from_stores_modes: frozenset[OrderMode] = Field(
        default=frozenset({OrderMode.DELIVERY, OrderMode.PICKUP, OrderMode.DINE_IN}),
        description="shipping goes anywhere, so it is not checked by default",
    )
    far_from_stores_points: _Points = 20

    blocked_phones: frozenset[_Phone] = frozenset()
    blocked_phone_points: _Points = 100
    blocked_addresses: frozenset[_AddressText] = frozenset()
    blocked_address_points: _Points = 100

    first_order_high_value: _Limit = Field(
        default=50_000, description="a new customer's total at or above this, minor units"
    )
    first_order_high_value_points: _Points = 25


def parse_rules(document: Any, *, source: Path) -> FraudRules:
    """The rules in a JSON object of `FraudRules` fields (missing ones keep their default).
    Errors name `source` and the field."""
    if not isinstance(document, dict):
        raise FraudRulesError(source, None, "expected a JSON object of rule fields")
    try:
        return FraudRules.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise FraudRulesError(source, where or None, first["msg"]) from exc


@dataclass(frozen=True)
class Screening:
    """The outcome of screening one order: its score, the signals behind it, and the verdict."""

    score: int
    signals: list[FraudSignal]
    held: bool


def screen(
    order: OrderReceived,
    *,
    history: CustomerHistory,
    catalogue: Catalogue,
    rules: FraudRules,
    now: datetime,
) -> Screening:
    """Score `order` against its history (which it must not count in: it is excluded by id).

    The velocity window ends when the order was placed (or `now`, if a channel's clock put it
    in the future), so re-screening it later gives the same answer."""
    at = min(order.placed_at, now)
    context = _Context(
        order=order,
        history=history,
        catalogue=catalogue,
        rules=rules,
        since=at - timedelta(minutes=rules.window_minutes),
        until=at,
    )
    found = [rule(context) for rule in _RULES]
    signals = [signal for signal in found if signal is not None and signal.points > 0]
    score = sum(signal.points for signal in signals)
    return Screening(score=score, signals=signals, held=score >= rules.threshold)


def hold(
    order: OrderReceived,
    screening: Screening,
    *,
    threshold: int,
    sequence: int,
    causation_id: str,
    now: datetime,
) -> OrderHeld:
    """The `OrderHeld` for a held screening, caused by `causation_id` (the event that brought
    the order to screening); its id follows from that event, so re-processing is recognised."""
    return OrderHeld(
        event_id=deterministic_id(causation_id, "OrderHeld"),
        **follow_up(order, sequence=sequence, causation_id=causation_id, actor=ACTOR, now=now),
        risk_score=screening.score,
        threshold=threshold,
        signals=screening.signals,
    )


# ---------------------------------------------------------------- rules


@dataclass(frozen=True)
class _Context:
    order: OrderReceived
    history: CustomerHistory
    catalogue: Catalogue
    rules: FraudRules
    since: datetime
    until: datetime

    def orders_from(self, **key: str) -> int:
        """Orders with this phone/address/device in the window, the screened one included."""
        previous = self.history.recent(
            since=self.since, until=self.until, excluding=self.order.order_id, **key
        )
        return previous + 1


def _velocity(c: _Context, *, kind: str, value: str | None, what: str) -> FraudSignal | None:
    """More orders with this phone / address / device in the window than the rules allow."""
    if not value:
        return None
    count = c.orders_from(**{kind: value})
    limit: int = getattr(c.rules, f"velocity_{kind}_limit")
    if count <= limit:
        return None
    return FraudSignal(
        rule=f"VELOCITY_{kind.upper()}",
        points=getattr(c.rules, f"velocity_{kind}_points"),
        detail=f"{count} orders {what} within {c.rules.window_minutes} min (more than {limit})",
    )


def _velocity_phone(c: _Context) -> FraudSignal | None:
    phone = c.order.customer.phone
    # A virtual number (隐私号) is the platform's relay, shared by many buyers: no velocity.
    virtual = bool(c.order.customer.phone_extension)
    usable = phone if phone and normalise_phone(phone) and not virtual else None
    return _velocity(c, kind="phone", value=usable, what="from this phone")


def _velocity_address(c: _Context) -> FraudSignal | None:
    address = c.order.address
    usable = address.text if address is not None and normalise_address(address.text) else None
    return _velocity(c, kind="address", value=usable, what="to this address")


def _velocity_device(c: _Context) -> FraudSignal | None:
    device = (c.order.device_id or "").strip()
    return _velocity(c, kind="device", value=device, what=f"from device {device}")


def _amount_outlier(c: _Context) -> FraudSignal | None:
    key = customer_key(c.order)
    norm = c.history.norm(key, excluding=c.order.order_id) if key else None
    factor = c.rules.amount_outlier_factor
    # A mean of 0 (fully discounted orders) has no meaningful multiple.
    if norm is None or norm.orders < c.rules.amount_outlier_min_orders or norm.mean_total <= 0:
        return None
    if c.order.total <= factor * norm.mean_total:
        return None
    return FraudSignal(
        rule="AMOUNT_OUTLIER",
        points=c.rules.amount_outlier_points,
        detail=f"total {c.order.total} is {c.order.total / norm.mean_total:.1f}x the "
        f"customer's mean {norm.mean_total} over {norm.orders} orders (more than {factor:g}x)",
    )


def _far_from_stores(c: _Context) -> FraudSignal | None:
    address, mode = c.order.address, c.order.mode
    if mode not in c.rules.far_from_stores_modes or address is None:
        return None
    if address.latitude is None or address.longitude is None:
        return None
    lat, lon = address.latitude, address.longitude
    # Paused locations count: a pause is temporary, the address is no less plausible.
    distances = [
        (distance_m(lat, lon, loc.latitude, loc.longitude), loc.id)
        for loc in c.catalogue.locations.values()
        if mode in loc.capabilities
    ]
    if not distances:
        return None  # nothing serves the mode: routing's problem, not evidence of fraud
    nearest, location = min(distances)
    limit = c.rules.far_from_stores_m
    if nearest <= limit:
        return None
    return FraudSignal(
        rule="FAR_FROM_STORES",
        points=c.rules.far_from_stores_points,
        detail=f"address is {nearest} m from the nearest {mode.value} location {location} "
        f"(more than {limit} m)",
    )


def _blocked_phone(c: _Context) -> FraudSignal | None:
    phone = normalise_phone(c.order.customer.phone or "")
    if not phone or phone not in c.rules.blocked_phones or c.order.customer.phone_extension:
        return None
    return FraudSignal(
        rule="BLOCKED_PHONE",
        points=c.rules.blocked_phone_points,
        detail=f"phone {phone} is on the blocklist",
    )


def _blocked_address(c: _Context) -> FraudSignal | None:
    text = normalise_address(c.order.address.text) if c.order.address else ""
    if not text or text not in c.rules.blocked_addresses:
        return None
    return FraudSignal(
        rule="BLOCKED_ADDRESS",
        points=c.rules.blocked_address_points,
        detail=f"address {text!r} is on the blocklist",
    )


def _first_order_high_value(c: _Context) -> FraudSignal | None:
    key = customer_key(c.order)
    # No id and no phone: nobody we know, so as new as a customer gets.
    tier = c.history.tier(key, excluding=c.order.order_id) if key else "new"
    limit = c.rules.first_order_high_value
    if tier != "new" or c.order.total < limit:
        return None
    return FraudSignal(
        rule="FIRST_ORDER_HIGH_VALUE",
        points=c.rules.first_order_high_value_points,
        detail=f"first order of this customer totals {c.order.total} (at least {limit})",
    )


_RULES: tuple[Callable[[_Context], FraudSignal | None], ...] = (
    _velocity_phone,
    _velocity_address,
    _velocity_device,
    _amount_outlier,
    _far_from_stores,
    _blocked_phone,
    _blocked_address,
    _first_order_high_value,
)
