"""Order events as frozen pydantic models. Money is int minor units + ISO-4217 currency; times UTC.

The Avro schemas in schemas/ are generated from these models (`events.avro_schema`), and a test
fails if the committed .avsc files drift from them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

# Namespace for deterministic ids: the same channel order always maps to the same ids.
ORDERSTREAM_NAMESPACE = uuid.UUID("6f0b7c52-3f7e-4b4e-9a57-0a8f2a7f3c11")


def deterministic_id(*parts: str) -> str:
    """A UUID derived from `parts`, so a redelivered input yields the same id (idempotency)."""
    return str(uuid.uuid5(ORDERSTREAM_NAMESPACE, "\x1f".join(parts)))


def utc_now() -> datetime:
    return datetime.now(UTC)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ActorKind(StrEnum):
    SYSTEM = "system"
    CHANNEL = "channel"
    USER = "user"


class Actor(Frozen):
    """Who caused an event: a system component, a sales channel, or a person."""

    kind: ActorKind
    id: str


class OrderMode(StrEnum):
    DELIVERY = "delivery"
    PICKUP = "pickup"
    DINE_IN = "dine_in"
    SHIP = "ship"


class OrderLine(Frozen):
    sku: str
    name: str
    quantity: int
    unit_price: int = Field(description="minor units (fen, cents) of the order's currency")


class Address(Frozen):
    text: str
    city: str | None = None
    postal_code: str | None = None
    country: str | None = None
    latitude: float | None = None
    longitude: float | None = None


class Customer(Frozen):
    name: str | None = None
    phone: str | None = None
    email: str | None = None


class Event(Frozen):
    """The envelope every event carries (DESIGN.md §2); subclasses add the payload."""

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1

    event_id: str
    order_id: str = Field(description="the aggregate id")
    sequence: int = Field(ge=1, description="position of the event in its order's history")
    occurred_at: AwareDatetime
    recorded_at: AwareDatetime
    correlation_id: str
    causation_id: str | None = None
    actor: Actor

    @field_validator("occurred_at", "recorded_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.event_type = cls.__name__


class OrderReceived(Event):
    """A channel's order, normalised by its connector; not yet validated."""

    channel: str
    external_id: str
    mode: OrderMode
    currency: str = Field(description="ISO-4217 code; checked by validation, not here")
    lines: list[OrderLine]
    delivery_fee: int = 0
    packaging_fee: int = 0
    discount: int = 0
    total: int
    customer: Customer
    address: Address | None = None
    requested_at: AwareDatetime | None = None
    notes: str | None = None
    placed_at: AwareDatetime


class OrderAccepted(Event):
    """The order passed validation."""

    channel: str
    external_id: str
    total: int
    currency: str


class RejectionReason(Frozen):
    code: str = Field(description="machine-readable, e.g. TOTAL_MISMATCH")
    field: str | None = None
    message: str


class OrderRejected(Event):
    """The order failed validation; `reasons` says why, in machine-readable codes."""

    channel: str
    external_id: str
    reasons: list[RejectionReason]


ORDER_EVENTS: tuple[type[Event], ...] = (OrderReceived, OrderAccepted, OrderRejected)


class DeadLetter(Frozen):
    """Anything rejected: the original bytes, where they came from and why. Nothing is dropped."""

    schema_version: ClassVar[int] = 1

    dead_letter_id: str
    source: str = Field(description="connector name or `topic` the bytes were read from")
    source_ref: str = Field(description="file:line, topic/partition/offset, or request id")
    reason: str
    raw: bytes
    failed_at: AwareDatetime

    @classmethod
    def of(cls, *, source: str, source_ref: str, reason: str, raw: bytes) -> DeadLetter:
        """A dead letter whose id is derived from where the bytes came from (re-sends dedup)."""
        return cls(
            dead_letter_id=deterministic_id("dead-letter", source, source_ref, reason),
            source=source,
            source_ref=source_ref,
            reason=reason,
            raw=raw,
            failed_at=utc_now(),
        )
