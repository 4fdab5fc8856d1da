"""Which messages a customer gets: a pure decision per event of the order log (no I/O; the
clock is passed in), folded over the log by `oms notify run` (oms/notify.py).

`decide` says which message an event causes (`RULES`, one function per event type):
- `OrderAcceptedByStore`: confirmed, with the estimated ready time (the store's, else the
  `OrderPrioritised` one); a second acceptance (another store) is an ETA change;
- `OrderPrioritised`: ETA changed, once the customer was told an estimate and this one moves
  from it by `ETA_MOVE` or more;
- `OrderReady`: ready for pickup (pickup orders);
- `OrderPickedUp` by a courier: out for delivery (delivery orders). A platform rider's
  `CourierStatusUpdated` picked_up is followed by this event (streams/orders.py), so it causes
  no message of its own;
- `ShipmentCreated`: shipped, with the carrier, the number and the tracking link;
- `OrderDelivered`: delivered (delivery and shipped orders);
- `OrderCancelled`: cancelled, with the reason;
- `OrderRefunded`: refund issued, with the amount.

A message goes on each channel the customer takes (e-mail unless they chose otherwise) that
their order gives an address for; a customer whose personal data was forgotten gets a message
with no address, which the notifier records as skipped.

`schedule` says when: never for an opted-out customer (recorded skipped); not at all once its
event is older than the policy's max age; in quiet hours it waits for their end, except the two
messages that are only worth anything now (ready for pickup, out for delivery: the customer
ordered at that hour and waits for them); over the per-customer rate limit an ETA change is
dropped (the next message carries the news) and any other message waits for a free slot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, tzinfo
from enum import StrEnum

from events.models import (
    Event,
    OrderAcceptedByStore,
    OrderCancelled,
    OrderDelivered,
    OrderEvent,
    OrderMode,
    OrderModified,
    OrderPickedUp,
    OrderPrioritised,
    OrderReady,
    OrderReceived,
    OrderRefunded,
    ShipmentCreated,
)
from events.notifications import MessageChannel, MessageKind, Notice, notice_key
from events.privacy import erased

LOCALES = ("zh-CN", "en")
ETA_MOVE = timedelta(minutes=10)  # a smaller move of the estimate is not worth a message
URGENT = frozenset({MessageKind.READY_FOR_PICKUP, MessageKind.OUT_FOR_DELIVERY})
DROPPABLE = frozenset({MessageKind.ETA_CHANGED})  # over the rate limit: dropped, not held


@dataclass(frozen=True)
class Contact:
    """Where a customer is reached: opened from the order log, held in memory only."""

    name: str | None = None
    email: str | None = None
    phone: str | None = None  # E.164; None for a platform's relay number (隐私号)
    openid: str | None = None  # the customer's WeChat openid (orders from the mini-program)

    def address(self, channel: MessageChannel) -> str | None:
        return {
            MessageChannel.EMAIL: self.email,
            MessageChannel.SMS: self.phone,
            MessageChannel.WECHAT: self.openid,
        }[channel]


@dataclass(frozen=True)
class Preferences:
    """A customer's choices (`oms notify opt-out`, `opt-in`), by customer key."""

    opted_out: bool = False
    locale: str | None = None
    channels: tuple[MessageChannel, ...] | None = None  # None: the operator's (NotifyState)


@dataclass
class OrderView:
    """What an order's messages need from its history."""

    channel: str
    external_id: str
    mode: OrderMode | None = None
    customer_key: str | None = None
    contact: Contact | None = None  # None: the customer was forgotten (or named nobody)
    forgotten: bool = False
    location: str | None = None
    eta: datetime | None = None  # the newest estimate
    eta_told: datetime | None = None  # the estimate the customer was last told
    confirmed: bool = False
    last_at: datetime | None = None  # the newest event's time (old views are pruned)


@dataclass
class NotifyState:
    """The fold the decisions read: orders in flight and the customers' preferences."""

    locale: str = "zh-CN"
    tracking_url: str = "https://t.17track.net/en#nums={tracking_number}"
    channels: tuple[MessageChannel, ...] = (MessageChannel.EMAIL,)  # unless a customer chose
    preferences: Mapping[str, Preferences] = field(default_factory=dict)
    orders: dict[str, OrderView] = field(default_factory=dict)


@dataclass(frozen=True)
class Addressed:
    """A decided message and where it goes (no contact: the customer was forgotten)."""

    notice: Notice
    contact: Contact | None


@dataclass(frozen=True)
class Told:
    """A rule's answer: the kind of message and what it shows beyond the order."""

    kind: MessageKind
    details: Mapping[str, object] = field(default_factory=dict)


Rule = Callable[[OrderEvent, OrderView, NotifyState], Told | None]


def _eta_news(view: OrderView, new: datetime | None) -> Told | None:
    """An ETA change when the customer was told an estimate and this one moved from it."""
    if new is None or not view.confirmed:
        return None
    if view.eta_told is not None and abs(new - view.eta_told) < ETA_MOVE:
        return None
    told = Told(MessageKind.ETA_CHANGED, {"eta": new, "previous_eta": view.eta_told})
    view.eta_told = new
    return told


def _accepted(event: OrderEvent, view: OrderView, state: NotifyState) -> Told | None:
    assert isinstance(event, OrderAcceptedByStore)
    view.location = event.location
    eta = event.estimated_ready_at or view.eta
    view.eta = eta
    if view.confirmed:  # taken on again (another store, after a decline): the time moved
        return _eta_news(view, eta)
    view.confirmed, view.eta_told = True, eta
    return Told(MessageKind.CONFIRMED, {"eta": eta})


def _prioritised(event: OrderEvent, view: OrderView, state: NotifyState) -> Told | None:
    assert isinstance(event, OrderPrioritised)
    if event.estimated_ready_at is None:
        return None
    view.eta = event.estimated_ready_at
    return _eta_news(view, event.estimated_ready_at)


def _ready(event: OrderEvent, view: OrderView, state: NotifyState) -> Told | None:
    assert isinstance(event, OrderReady)
    if view.mode is not OrderMode.PICKUP:
        return None
    return Told(MessageKind.READY_FOR_PICKUP, {"location": event.location})


def _picked_up(event: OrderEvent, view: OrderView, state: NotifyState) -> Told | None:
    assert isinstance(event, OrderPickedUp)
    if view.mode is not OrderMode.DELIVERY or event.picked_up_by == "customer":
        return None
    courier = None if event.picked_up_by == "courier" else event.picked_up_by
    return Told(MessageKind.OUT_FOR_DELIVERY, {"courier": courier})


def _shipped(event: OrderEvent, view: OrderView, state: NotifyState) -> Told | None:
    assert isinstance(event, ShipmentCreated)
    link = tracking_url(state.tracking_url, carrier=event.carrier, number=event.tracking_number)
    return Told(
        MessageKind.SHIPPED,
        {"carrier": event.carrier, "tracking_number": event.tracking_number, "tracking_url": link},
    )


def _delivered(event: OrderEvent, view: OrderView, state: NotifyState) -> Told | None:
    if view.mode not in (OrderMode.DELIVERY, OrderMode.SHIP):
        return None
    return Told(MessageKind.DELIVERED)


def _cancelled(event: OrderEvent, view: OrderView, state: NotifyState) -> Told | None:
    assert isinstance(event, OrderCancelled)
    return Told(MessageKind.CANCELLED, {"reason": event.reason})


def _refunded(event: OrderEvent, view: OrderView, state: NotifyState) -> Told | None:
    assert isinstance(event, OrderRefunded)
    return Told(MessageKind.REFUNDED, {"amount": event.amount, "currency": event.currency})


# Event type → the message it causes. One row per event a customer hears of.
RULES: dict[type[OrderEvent], Rule] = {
    OrderAcceptedByStore: _accepted,
    OrderPrioritised: _prioritised,
    OrderReady: _ready,
    OrderPickedUp: _picked_up,
    ShipmentCreated: _shipped,
    OrderDelivered: _delivered,
    OrderCancelled: _cancelled,
    OrderRefunded: _refunded,
}


def tracking_url(pattern: str, *, carrier: str, number: str) -> str:
    """The operator's tracking link with the carrier and number filled in, percent-encoded
    (RFC 3986: all but the unreserved characters)."""
    return pattern.format(carrier=_percent(carrier), tracking_number=_percent(number))


def _percent(text: str) -> str:
    return "".join(
        ch
        if ch.isascii() and (ch.isalnum() or ch in "-._~")
        else "".join(f"%{byte:02X}" for byte in ch.encode())
        for ch in text
    )


def decide(state: NotifyState, event: Event) -> list[Addressed]:
    """The messages `event` causes; the fold in `state` is moved past it (in place)."""
    if not isinstance(event, OrderEvent):
        return []
    view = state.orders.get(event.order_id)
    if isinstance(event, OrderReceived):
        view = state.orders[event.order_id] = OrderView(event.channel, event.external_id)
        view.mode = event.mode
    if view is None:
        return []  # an order received before the fold began (or pruned): no address for it
    view.last_at = event.occurred_at
    if isinstance(event, OrderReceived | OrderModified):
        _take_customer(view, event)
    rule = RULES.get(type(event))
    told = rule(event, view, state) if rule else None
    if told is None:
        return []
    preferences = state.preferences.get(view.customer_key or "", Preferences())
    locale = preferences.locale if preferences.locale in LOCALES else state.locale
    messages = []
    for channel in preferences.channels or state.channels:
        contact = None if view.forgotten else view.contact
        if contact is not None and not contact.address(channel):
            continue  # no address on this channel: nothing to send, nothing to record
        if contact is None and not view.forgotten:
            continue
        notice = Notice.model_validate(
            {
                "idempotency_key": notice_key(
                    kind=told.kind, channel=channel, cause_event_id=event.event_id
                ),
                "kind": told.kind,
                "channel": channel,
                "locale": locale,
                "cause_event_id": event.event_id,
                "cause_type": event.event_type,
                "caused_at": event.occurred_at,
                "order_id": event.order_id,
                "order_channel": view.channel,
                "external_id": view.external_id,
                "customer_key": view.customer_key,
                "location": view.location,
            }
            | dict(told.details)
        )
        messages.append(Addressed(notice, contact))
    return messages


def _take_customer(view: OrderView, event: OrderReceived | OrderModified) -> None:
    """The customer's key and contact from a receipt or a revision naming them; a sealed event
    that did not open means the customer was forgotten."""
    customer = event.customer
    if customer is None:
        return
    if customer.key:
        view.customer_key = customer.key
    if erased(event):
        view.contact, view.forgotten = None, True
        return
    view.contact = Contact(
        name=customer.name,
        email=customer.email,
        phone=e164(customer.phone) if not customer.phone_extension else None,
        openid=customer.id if event.channel == "wechat" else None,
    )


def e164(phone: str | None) -> str | None:
    """A customer's phone as SMS providers take it: +country code, digits; a mainland mobile
    written without one (13800000000) is +86. None when it is not a phone number."""
    if not phone:
        return None
    digits = "".join(ch for ch in phone if ch.isdigit())
    if phone.strip().startswith("+"):
        return f"+{digits}" if 7 <= len(digits) <= 15 else None
    if len(digits) == 11 and digits.startswith("1"):
        return f"+86{digits}"
    return None


def forget(state: NotifyState, customer_keys: Iterable[str]) -> int:
    """Drops the contacts of customers whose keys were forgotten; how many orders had one."""
    gone = set(customer_keys)
    hit = 0
    for view in state.orders.values():
        if view.customer_key in gone and not view.forgotten:
            view.contact, view.forgotten = None, True
            hit += 1
    return hit


def prune(state: NotifyState, *, before: datetime) -> int:
    """Drops the orders whose newest event is older than `before` (the fold stays bounded)."""
    old = [k for k, v in state.orders.items() if v.last_at is not None and v.last_at < before]
    for order_id in old:
        del state.orders[order_id]
    return len(old)


# ---------------------------------------------------------------- when


@dataclass(frozen=True)
class QuietHours:
    """Local hours [start, end) in which messages wait; may run past midnight."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> QuietHours | None:
        """`22:00-08:00`; None for an empty text. ValueError for anything else."""
        if not text.strip():
            return None
        first, sep, second = text.strip().partition("-")
        if not sep:
            raise ValueError(f"quiet hours {text!r} are not HH:MM-HH:MM")
        start, end = time.fromisoformat(first.strip()), time.fromisoformat(second.strip())
        if start == end:
            raise ValueError(f"quiet hours {text!r} are empty")
        return cls(start, end)

    def contains(self, moment: time) -> bool:
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def ends_after(self, now: datetime, zone: tzinfo) -> datetime | None:
        """When the quiet hours `now` falls in end (in `now`'s zone); None when not in them."""
        local = now.astimezone(zone)
        if not self.contains(local.timetz().replace(tzinfo=None)):
            return None
        end = datetime.combine(local.date(), self.end, tzinfo=zone)
        if end <= local:
            end += timedelta(days=1)
        return end.astimezone(now.tzinfo)


@dataclass(frozen=True)
class Policy:
    quiet_hours: QuietHours | None
    zone: tzinfo
    rate_limit: int
    rate_window: timedelta
    max_age: timedelta


class Action(StrEnum):
    SEND = "send"
    DEFER = "defer"  # held until `until`, then scheduled again
    SKIP = "skip"  # recorded skipped, never sent
    EXPIRE = "expire"  # too old: neither sent nor recorded


@dataclass(frozen=True)
class Verdict:
    action: Action
    until: datetime | None = None
    reason: str = ""


def schedule(
    notice: Notice,
    *,
    preferences: Preferences,
    recent: Sequence[datetime],
    policy: Policy,
    now: datetime,
) -> Verdict:
    """What to do with `notice` now; `recent` holds when the customer's messages were sent."""
    if preferences.opted_out:
        return Verdict(Action.SKIP, reason="the customer opted out")
    if now - notice.caused_at > policy.max_age:
        return Verdict(Action.EXPIRE, reason=f"its event is {now - notice.caused_at} old")
    if notice.kind not in URGENT and policy.quiet_hours is not None:
        until = policy.quiet_hours.ends_after(now, policy.zone)
        if until is not None:
            return Verdict(Action.DEFER, until=until, reason="quiet hours")
    in_window = sorted(t for t in recent if now - t < policy.rate_window)
    if len(in_window) >= policy.rate_limit:
        if notice.kind in DROPPABLE:
            return Verdict(Action.SKIP, reason="rate limited")
        # The slot the oldest of the last `rate_limit` sends frees.
        until = in_window[-policy.rate_limit] + policy.rate_window
        return Verdict(Action.DEFER, until=until, reason="rate limited")
    return Verdict(Action.SEND)
