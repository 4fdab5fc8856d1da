"""What OrderStream tells a platform (Meituan, Ele.me, Square, WooCommerce) and what came of it:
the values of the outbox (docs/architecture.md, "The outbox"; docs/connectors.md, "Telling the
platforms").

A `PlatformCall` is decided from one event of the order log, the stock ledger or the catalogue
(`streams.outbox`) and made by the platform's client (`connectors.outbound`,
`connectors.outbound_shops`). Its `idempotency_key` is derived from the causing event's id, the
platform and the kind of call, so an event read twice (a restart, a redelivery) names the same
call: one call per event id.

An `OutboxRecord` is one line of the outbox topic, keyed by that key (compacted: the newest
record of a call is its state). `intent` is written and acknowledged by Kafka before the call
is made; `sent`, `failed`, `skipped` or `expired` after it. These are internal records (JSON,
like the learned prep-time models), not events of the published Avro contract.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from events.models import Frozen, UtcDatetime, deterministic_id


class CallKind(StrEnum):
    CONFIRM = "confirm"  # the store took the order on
    CANCEL = "cancel"  # the order will not be made (rejected, cancelled by us)
    READY = "ready"  # 出餐: the meal is ready for the rider
    DELIVERING = "delivering"  # the merchant's own rider left with it (self-delivery)
    DELIVERED = "delivered"  # the merchant's own rider delivered it (self-delivery)
    COMPLETE = "complete"  # (shops) handed to the customer or delivered: fulfilled
    SOLD_OUT = "sold_out"  # available to promise reached 0: off the shelf
    BACK_ON_SHELF = "back_on_shelf"  # available again after a sold-out
    CLOSE = "close"  # the store paused: busy / resting on the platform
    OPEN = "open"  # the store resumed


ORDER_KINDS = frozenset(
    {
        CallKind.CONFIRM,
        CallKind.CANCEL,
        CallKind.READY,
        CallKind.DELIVERING,
        CallKind.DELIVERED,
        CallKind.COMPLETE,
    }
)


class PlatformCall(Frozen):
    """One call to one platform, with everything its client needs to make it."""

    idempotency_key: str
    platform: str = Field(description="meituan, eleme, square or woocommerce: the channel name")
    kind: CallKind
    cause_event_id: str
    cause_type: str
    caused_at: UtcDatetime = Field(description="when the causing event occurred")
    order_id: str | None = None
    platform_order_id: str | None = Field(
        default=None, description="the order's id on the platform (the event's external_id)"
    )
    location: str | None = Field(default=None, description="our location id")
    shop_id: str | None = Field(default=None, description="the platform's id for the store")
    sku: str | None = Field(
        default=None, description="our sku: the merchant's own dish code on the platform"
    )
    reason_code: str | None = Field(
        default=None, description="the platform's own code (ours for a platform with none)"
    )
    reason: str | None = None


def call_key(*, platform: str, kind: CallKind, cause_event_id: str) -> str:
    """The idempotency key of the call `kind` to `platform` caused by one event."""
    return deterministic_id("platform-call", platform, kind.value, cause_event_id)


class OutboxStatus(StrEnum):
    INTENT = "intent"  # about to be made: an intent without an outcome is reconciled
    SENT = "sent"  # the platform said yes (or was found to be in that state already)
    FAILED = "failed"  # refused for good, or out of attempts: dead-lettered
    SKIPPED = "skipped"  # nothing to tell any more (the platform is already past it)
    EXPIRED = "expired"  # its cause is older than OMS_OUTBOX_MAX_AGE_S: not made

    @property
    def settled(self) -> bool:
        return self is not OutboxStatus.INTENT


class OutboxRecord(Frozen):
    call: PlatformCall
    status: OutboxStatus
    attempts: int = 0
    detail: str = Field(default="", description="the platform's answer, or why not made")
    at: UtcDatetime
    by: str | None = Field(default=None, description="who asked for a retry (`oms outbox retry`)")

    @property
    def key(self) -> str:
        return self.call.idempotency_key

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, raw: bytes) -> OutboxRecord:
        return cls.model_validate_json(raw)


def record(
    call: PlatformCall,
    status: OutboxStatus,
    *,
    at: datetime,
    attempts: int = 0,
    detail: str = "",
    by: str | None = None,
) -> OutboxRecord:
    return OutboxRecord(call=call, status=status, attempts=attempts, detail=detail, at=at, by=by)
