"""What OrderStream tells a customer and what came of it: the values of the notifier
(docs/architecture.md, "Customer notifications").

A `Notice` is decided from one event of the order log (`streams.notify`) and sent by the
notifier (`oms notify run`) through a channel (e-mail; SMS has templates but no provider yet).
Its `idempotency_key` is derived from the causing event's id, the message kind and the
channel, so an event read twice (a restart, a replay) names the same message: one message per
event id. A notice carries no personal data: the address it goes to is opened from the order
log when it is sent, and never written here.

A `NotificationRecord` is one line of the notifications topic, keyed by that key: `intent` is
written and acknowledged by Kafka before the message is handed to the channel; `sent`,
`failed` or `skipped` after it. Internal records (JSON, like the outbox's), not events of the
published Avro contract.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from events.models import Frozen, UtcDatetime, deterministic_id


class MessageKind(StrEnum):
    CONFIRMED = "confirmed"  # the store took the order on (with its estimated ready time)
    ETA_CHANGED = "eta_changed"  # the estimate moved after the customer was told one
    READY_FOR_PICKUP = "ready_for_pickup"  # a pickup order is ready at the store
    OUT_FOR_DELIVERY = "out_for_delivery"  # a courier left the store with it
    SHIPPED = "shipped"  # a parcel was handed to a carrier: the tracking link
    DELIVERED = "delivered"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"


class MessageChannel(StrEnum):
    EMAIL = "email"
    SMS = "sms"  # Aliyun or Twilio (connectors/sms.py)
    WECHAT = "wechat"  # a mini-program subscribe message (connectors/wechat_notify.py)


class Notice(Frozen):
    """One message to one customer, with everything its template shows except their name."""

    idempotency_key: str
    kind: MessageKind
    channel: MessageChannel
    locale: str = Field(description="zh-CN or en: which templates render it")
    cause_event_id: str
    cause_type: str
    caused_at: UtcDatetime = Field(description="when the causing event occurred")
    order_id: str
    order_channel: str = Field(description="the sales channel the order came through")
    external_id: str = Field(
        description="the order's number on its channel: what the customer knows"
    )
    customer_key: str | None = Field(
        default=None, description="the customer's pseudonymous key (events/privacy.py)"
    )
    location: str | None = None
    eta: UtcDatetime | None = Field(default=None, description="estimated ready time")
    previous_eta: UtcDatetime | None = None
    courier: str | None = Field(default=None, description="the courier's name, when known")
    carrier: str | None = None
    tracking_number: str | None = None
    tracking_url: str | None = None
    amount: int | None = Field(default=None, description="minor units (a refund)")
    currency: str | None = None
    reason: str | None = None


def notice_key(*, kind: MessageKind, channel: MessageChannel, cause_event_id: str) -> str:
    """The idempotency key of the message `kind` on `channel` caused by one event."""
    return deterministic_id("notification", channel.value, kind.value, cause_event_id)


class NotificationStatus(StrEnum):
    INTENT = "intent"  # about to be handed to the channel
    SENT = "sent"  # the channel (the SMTP relay) took it
    FAILED = "failed"  # refused for good, or out of attempts: dead-lettered
    SKIPPED = "skipped"  # not to be sent: opted out, forgotten, no provider, rate limited
    # After `sent`, where the provider reports on the handset (SMS: Aliyun, Twilio).
    DELIVERED = "delivered"  # the provider says it reached the phone
    UNDELIVERED = "undelivered"  # the provider says it did not (number off, blocked, ...)

    @property
    def settled(self) -> bool:
        return self is not NotificationStatus.INTENT


class NotificationRecord(Frozen):
    notice: Notice
    status: NotificationStatus
    attempts: int = 0
    detail: str = Field(default="", description="the channel's answer, or why not sent")
    message_id: str | None = Field(
        default=None, description="the e-mail's Message-ID (the same on every try)"
    )
    provider_id: str | None = Field(
        default=None, description="the SMS provider's id for it (Aliyun BizId, Twilio SID)"
    )
    sent_at: UtcDatetime | None = Field(
        default=None, description="when the provider took it (kept on a delivery report)"
    )
    at: UtcDatetime

    @property
    def key(self) -> str:
        return self.notice.idempotency_key

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, raw: bytes) -> NotificationRecord:
        return cls.model_validate_json(raw)


def notification_record(
    notice: Notice,
    status: NotificationStatus,
    *,
    at: datetime,
    attempts: int = 0,
    detail: str = "",
    message_id: str | None = None,
    provider_id: str | None = None,
    sent_at: datetime | None = None,
) -> NotificationRecord:
    return NotificationRecord(
        notice=notice,
        status=status,
        attempts=attempts,
        detail=detail,
        message_id=message_id,
        provider_id=provider_id,
        sent_at=sent_at,
        at=at,
    )
