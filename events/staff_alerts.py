"""What OrderStream tells a store's staff, its reviewers and its buyers, and what came of it:
the values of `oms alerts run` (docs/architecture.md, "Staff alerts").

A `StaffAlert` is decided from one event (`streams.staff_alerts`) for one sink the operator
configured: a WeCom group robot, a kitchen printer or one phone. It carries what the message
shows and no customer's personal data, and names its sink by its place in the configuration
(`stores.S03.printer`), never by the robot's key. Its `key` is derived from the causing
event's id and the sink, so an event read twice names the same alert: one alert per (event,
sink).

An `AlertRecord` is one line of the staff alerts topic, keyed by that key (compacted: the
newest record of an alert is its state): `intent`, acknowledged by Kafka before the alert is
sent, then `sent`, `failed` or `skipped`. Internal records (JSON, like the outbox), not events
of the published Avro contract.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from events.models import Frozen, OrderMode, UtcDatetime, deterministic_id


class AlertKind(StrEnum):
    NEW_ORDER = "new_order"  # an order reached a store (OrderPrioritised)
    HELD = "held"  # an order waits for a reviewer (OrderHeld)
    LOW_STOCK = "low_stock"  # a sku's stock fell to its reorder point (LowStockAlerted)
    # a carrier reports a parcel in trouble or on its way back (ShipmentStatusUpdated with
    # status exception or returned_to_sender)
    SHIPMENT_EXCEPTION = "shipment_exception"


class SinkKind(StrEnum):
    WECOM = "wecom"  # a WeCom (企业微信) group robot
    PRINTER = "printer"  # an ESC/POS receipt printer, raw TCP
    SMS = "sms"  # one phone, through the configured SMS provider


class TicketLine(Frozen):
    name: str = Field(description="the dish's name, else its sku")
    quantity: str = Field(description="a count, or a measure such as 1.5kg")
    options: list[str] = Field(default_factory=list)


class StaffAlert(Frozen):
    """One message to one sink, with everything its adapter needs to render it."""

    key: str
    kind: AlertKind
    sink: str = Field(description="the sink's place in the configuration, e.g. stores.S03.wecom")
    sink_kind: SinkKind
    cause_event_id: str
    caused_at: UtcDatetime
    location: str | None = None
    # a new or held order
    order_id: str | None = None
    channel: str | None = None
    external_id: str | None = None
    mode: OrderMode | None = None
    table: str | None = None
    due_at: UtcDatetime | None = Field(default=None, description="promised or requested time")
    lines: list[TicketLine] = Field(default_factory=list)
    # a held order
    risk_score: int | None = None
    threshold: int | None = None
    signals: list[str] = Field(default_factory=list)
    # low stock
    sku: str | None = None
    available: int | None = None
    reorder_quantity: int | None = None
    # a shipment in trouble (the order's channel and number above; `location` it shipped from)
    carrier: str | None = None
    tracking_number: str | None = None
    shipment_status: str | None = Field(
        default=None, description="normalised: exception or returned_to_sender"
    )
    carrier_status: str | None = Field(default=None, description="the carrier's own code or word")
    description: str | None = Field(default=None, description="what the carrier said")
    place: str | None = Field(default=None, description="where, as the carrier said")


def alert_key(*, cause_event_id: str, sink: str) -> str:
    """The idempotency key of the alert `sink` gets for one event."""
    return deterministic_id("staff-alert", cause_event_id, sink)


class AlertStatus(StrEnum):
    INTENT = "intent"  # about to be sent: an intent without outcome may have gone out
    SENT = "sent"
    FAILED = "failed"  # refused for good, or out of attempts: dead-lettered
    SKIPPED = "skipped"  # its sink is no longer configured

    @property
    def settled(self) -> bool:
        return self is not AlertStatus.INTENT


class AlertRecord(Frozen):
    alert: StaffAlert
    status: AlertStatus
    attempts: int = 0
    detail: str = Field(default="", description="the sink's answer, or why not sent")
    at: UtcDatetime

    @property
    def key(self) -> str:
        return self.alert.key

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, raw: bytes) -> AlertRecord:
        return cls.model_validate_json(raw)


def alert_record(
    alert: StaffAlert, status: AlertStatus, *, at: datetime, attempts: int = 0, detail: str = ""
) -> AlertRecord:
    return AlertRecord(alert=alert, status=status, attempts=attempts, detail=detail, at=at)
