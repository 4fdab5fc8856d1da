"""Which staff hear of what: a pure decision per event of the order log and the stock ledger
(no I/O; the clock's reading is passed in), folded over those logs by `oms alerts run`.

- `OrderPrioritised` (an order reached its store) → the store's sinks: its WeCom group robot,
  its kitchen printer, its managers' phones. The ticket shows channel, order number, mode,
  table, due time and the lines as the order's last `OrderReceived`/`OrderModified` left
  them — never the customer (those fields are sealed on the log, and a ticket needs none).
- `OrderHeld` → the reviewers' sinks: risk score, threshold and the rules that fired.
- `LowStockAlerted` → the buyers of its location (`buyers.locations`), else all buyers.
- `ShipmentStatusUpdated` with status `exception` or `returned_to_sender` → the sinks of the
  location the parcel shipped from (its `ShipmentCreated`'s `location`): order number,
  carrier, tracking number, what the carrier said and where.

The fold keeps the orders in flight only: an order leaves it once it is past every alert
(picked up, delivered, completed, cancelled, rejected, ...: `PAST_ALERTS`; a shipped order
stays until it is delivered, for its carrier's exceptions), and the oldest
beyond `max_orders` are dropped, so memory stays bounded however long the log is. An event
that occurred before `since` (the alerter's start less its window) updates the fold but
alerts nobody: a restarted alerter does not print yesterday's orders again.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from events.lifecycle import OrderStatus, next_status
from events.models import (
    Event,
    LowStockAlerted,
    OrderEvent,
    OrderHeld,
    OrderLine,
    OrderMode,
    OrderModified,
    OrderPrioritised,
    OrderReceived,
    ShipmentCreated,
    ShipmentStatusUpdated,
    measure_text,
)
from events.shipping import TrackingStatus
from events.staff_alerts import AlertKind, SinkKind, StaffAlert, TicketLine, alert_key

PHONE = r"^\+[1-9]\d{6,14}$"  # E.164
MAX_ORDERS = 100_000
# A carrier's statuses that need a person: the parcel is stuck, or coming back.
SHIPMENT_TROUBLE = frozenset(
    {TrackingStatus.EXCEPTION.value, TrackingStatus.RETURNED_TO_SENDER.value}
)
# Past these an order reaches no store again, waits for no reviewer and has no parcel on its
# way: no alert needs it. (The lifecycle's own TERMINAL is only `refunded`: a platform's
# notices may follow every status.) `shipped` is not among them: a carrier's exception may
# come until the delivery.
PAST_ALERTS = frozenset(
    {
        OrderStatus.REJECTED,
        OrderStatus.CANCELLED,
        OrderStatus.PICKED_UP,
        OrderStatus.DELIVERED,
        OrderStatus.COMPLETED,
        OrderStatus.RETURN_REQUESTED,
        OrderStatus.RETURNED,
        OrderStatus.REFUNDED,
    }
)


# ---------------------------------------------------------------- configuration


class Audience(BaseModel):
    """Where one group of staff is told: a WeCom group robot (its webhook key) and phones."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    wecom: SecretStr | None = Field(default=None, description="the group robot's webhook key")
    mention: list[str] = Field(
        default_factory=list,
        description="mobiles the robot @-mentions (then a text message, not markdown)",
    )
    sms: list[str] = Field(default_factory=list, description="phones (E.164) sent an SMS")

    @field_validator("sms", "mention")
    @classmethod
    def _phones(cls, phones: list[str]) -> list[str]:
        for phone in phones:
            if phone != "@all" and not re.fullmatch(PHONE, phone):
                raise ValueError(f"not an E.164 phone number: {phone[:4]}…")
        return phones


class StoreSinks(Audience):
    """A store without a kitchen screen: its robot, its receipt printer, its managers."""

    printer: str | None = Field(
        default=None, description="host:port of an ESC/POS printer's raw port (9100)"
    )

    @field_validator("printer")
    @classmethod
    def _address(cls, address: str | None) -> str | None:
        if address is None:
            return None
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{address!r} is not host:port (e.g. 10.0.0.5:9100)")
        return address


class Buyers(Audience):
    locations: dict[str, Audience] = Field(
        default_factory=dict, description="a location's own buyers, instead of these"
    )


class StaffAlertsConfig(BaseModel):
    """The operator's staff alerts file (OMS_STAFF_ALERTS_FILE), as a decision reads it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    stores: dict[str, StoreSinks] = Field(default_factory=dict)
    reviewers: Audience = Field(default_factory=Audience)
    buyers: Buyers = Field(default_factory=Buyers)

    def sinks(self) -> dict[str, Sink]:
        """Every configured sink by its name (the name alerts and records carry)."""
        found: dict[str, Sink] = {}
        for location, store in self.stores.items():
            found |= _audience_sinks(f"stores.{location}", store)
            if store.printer:
                name = f"stores.{location}.printer"
                found[name] = Sink(
                    name=name,
                    audience=f"stores.{location}",
                    kind=SinkKind.PRINTER,
                    target=store.printer,
                )
        found |= _audience_sinks("reviewers", self.reviewers)
        found |= _audience_sinks("buyers", self.buyers)
        for location, buyers in self.buyers.locations.items():
            found |= _audience_sinks(f"buyers.locations.{location}", buyers)
        return found


@dataclass(frozen=True)
class Sink:
    """One configured sink: a robot (target: its key, a secret), a printer, a phone."""

    name: str
    audience: str  # stores.S03, reviewers, buyers, buyers.locations.S03
    kind: SinkKind
    target: str = field(repr=False)
    mention: tuple[str, ...] = ()


def _audience_sinks(prefix: str, audience: Audience) -> dict[str, Sink]:
    found: dict[str, Sink] = {}
    if audience.wecom is not None:
        name = f"{prefix}.wecom"
        key = audience.wecom.get_secret_value()
        found[name] = Sink(
            name=name,
            audience=prefix,
            kind=SinkKind.WECOM,
            target=key,
            mention=(*audience.mention,),
        )
    for phone in audience.sms:
        # Named by a digest of the number: a name that stays when the list is reordered, and
        # no phone number on the records.
        name = f"{prefix}.sms.{hashlib.sha256(phone.encode()).hexdigest()[:12]}"
        found[name] = Sink(name=name, audience=prefix, kind=SinkKind.SMS, target=phone)
    return found


# ---------------------------------------------------------------- the fold


@dataclass
class OrderTicket:
    """What a ticket of one order in flight shows, as its log left it."""

    channel: str
    external_id: str
    status: OrderStatus | None = None
    mode: OrderMode | None = None
    table: str | None = None
    requested_at: datetime | None = None
    lines: tuple[TicketLine, ...] = ()
    shipped_from: dict[str, str] = field(default_factory=dict)  # carrier:tracking → location


@dataclass
class AlertState:
    orders: dict[str, OrderTicket] = field(default_factory=dict)
    max_orders: int = MAX_ORDERS


def ticket_line(line: OrderLine) -> TicketLine:
    quantity = (
        f"{measure_text(line.quantity_millionths)}{line.unit}"
        if line.quantity_millionths is not None
        else f"{line.quantity}" + ("" if line.unit == "each" else line.unit)
    )
    return TicketLine(name=line.name or line.sku, quantity=quantity, options=list(line.options))


def fold(state: AlertState, event: OrderEvent) -> OrderTicket:
    """The order's ticket after `event`; an order past every alert (`PAST_ALERTS`) leaves
    the fold (the returned ticket is still its last)."""
    ticket = state.orders.pop(event.order_id, None) or OrderTicket(
        channel=event.channel, external_id=event.external_id
    )
    if isinstance(event, OrderReceived | OrderModified):
        ticket.lines = tuple(ticket_line(line) for line in event.lines)
        ticket.mode = event.mode or ticket.mode
        ticket.table = event.table or ticket.table
        ticket.requested_at = event.requested_at or ticket.requested_at
    if isinstance(event, ShipmentCreated):
        ticket.shipped_from[f"{event.carrier}:{event.tracking_number}"] = event.location or ""
        ticket.lines = ()  # no store is told of the order again: its parcels are what is left
    ticket.status = next_status(ticket.status, type(event))
    if ticket.status not in PAST_ALERTS:
        state.orders[event.order_id] = ticket  # re-inserted: the newest stay, the oldest go
        while len(state.orders) > state.max_orders:
            del state.orders[next(iter(state.orders))]
    return ticket


# ---------------------------------------------------------------- the decision


def decide(
    state: AlertState, event: Event, *, config: StaffAlertsConfig, since: datetime
) -> list[StaffAlert]:
    """The alerts `event` causes (folding it first); none for an event before `since`."""
    ticket = fold(state, event) if isinstance(event, OrderEvent) else None
    if event.occurred_at < since:
        return []
    if isinstance(event, OrderPrioritised) and ticket is not None:
        store = config.stores.get(event.location)
        if store is None:
            return []  # a store with a kitchen screen, or none configured: nothing to tell
        order = {
            "order_id": event.order_id,
            "location": event.location,
            "channel": ticket.channel,
            "external_id": ticket.external_id,
            "mode": ticket.mode,
            "table": ticket.table,
            "due_at": event.promised_at or ticket.requested_at or event.estimated_ready_at,
            "lines": list(ticket.lines),
        }
        return _to(config, f"stores.{event.location}", AlertKind.NEW_ORDER, event, order)
    if isinstance(event, OrderHeld):
        held = {
            "order_id": event.order_id,
            "channel": event.channel,
            "external_id": event.external_id,
            "mode": ticket.mode if ticket else None,
            "risk_score": event.risk_score,
            "threshold": event.threshold,
            "signals": [f"{s.rule} +{s.points}: {s.detail}" for s in event.signals],
        }
        return _to(config, "reviewers", AlertKind.HELD, event, held)
    if isinstance(event, LowStockAlerted):
        prefix = (
            f"buyers.locations.{event.location}"
            if event.location in config.buyers.locations
            else "buyers"
        )
        low = {
            "location": event.location,
            "sku": event.sku,
            "available": event.available,
            "threshold": event.threshold,
            "reorder_quantity": event.reorder_quantity,
        }
        return _to(config, prefix, AlertKind.LOW_STOCK, event, low)
    if isinstance(event, ShipmentStatusUpdated) and event.status in SHIPMENT_TROUBLE:
        shipped_from = (ticket.shipped_from if ticket else {}).get(
            f"{event.carrier}:{event.tracking_number}"
        )
        if not shipped_from or shipped_from not in config.stores:
            return []  # a parcel not on the log we read, or a location nobody listens at
        trouble = {
            "order_id": event.order_id,
            "location": shipped_from,
            "channel": event.channel,
            "external_id": event.external_id,
            "carrier": event.carrier,
            "tracking_number": event.tracking_number,
            "shipment_status": event.status,
            "carrier_status": event.carrier_status,
            "description": event.description,
            "place": event.place,
        }
        return _to(config, f"stores.{shipped_from}", AlertKind.SHIPMENT_EXCEPTION, event, trouble)
    return []


def _to(
    config: StaffAlertsConfig,
    prefix: str,
    kind: AlertKind,
    event: Event,
    shown: Mapping[str, object],
) -> list[StaffAlert]:
    """One alert per sink of the audience `prefix` (a printer is a store's: its new orders and
    its parcels in trouble)."""
    return [
        StaffAlert.model_validate(
            {
                "key": alert_key(cause_event_id=event.event_id, sink=sink.name),
                "kind": kind,
                "sink": sink.name,
                "sink_kind": sink.kind,
                "cause_event_id": event.event_id,
                "caused_at": event.occurred_at,
                **shown,
            }
        )
        for sink in config.sinks().values()
        if sink.audience == prefix
    ]
