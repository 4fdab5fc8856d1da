"""Outbound webhooks: who is told of the order log's events, and what came of each delivery
(docs/architecture.md, "Outbound webhooks").

A `Subscription` is one line of the subscriptions topic, keyed by its id (compacted: the newest
record is the subscription; a tombstone removes it). Its `start` says where its deliveries
begin: set by `add` (the log's end then) and by `replay`. A `DeliveryRecord` is one line of
the delivery log, keyed by the delivery's webhook id (compacted: the newest record of a
delivery is its state).

Internal records (JSON, like the outbox's), not events of the published Avro contract. A
subscription's signing secret is kept wrapped under the master key (AES-GCM, bound to the
subscription's id), never in clear on the topic.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cache
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from events.models import Frozen, OrderEvent, UtcDatetime


@cache
def order_event_types() -> frozenset[str]:
    """The event types of the order log: what a subscription may ask for."""
    found: set[str] = set()
    pending: list[type[OrderEvent]] = [OrderEvent]
    while pending:
        kind = pending.pop()
        pending.extend(kind.__subclasses__())
        if kind is not OrderEvent:
            found.add(kind.event_type)
    return frozenset(found)


class Start(Frozen):
    """Where a subscription's deliveries begin: the next offset of every partition. `mark` is
    new with every `add` and `replay`; the sender commits its progress under it, so it moves to
    a start once, not again at its next restart."""

    mark: str = Field(min_length=1)
    offsets: dict[int, int]


class Subscription(Frozen):
    id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    url: str = Field(max_length=2000)
    event_types: list[str] = Field(default_factory=list, description="empty: every type")
    stores: list[str] = Field(default_factory=list, description="empty: every store")
    channels: list[str] = Field(default_factory=list, description="empty: every channel")
    sealed_secret: str = Field(
        description="the whsec_ secret, wrapped under the master key (oms/webhooks.py)"
    )
    enabled: bool = True
    disabled_reason: str | None = None
    start: Start
    changed_at: UtcDatetime

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "no user:password@ in the URL (deliveries are signed; a token may go "
                "in its path or query)"
            )
        return url

    @field_validator("event_types")
    @classmethod
    def _known_types(cls, event_types: list[str]) -> list[str]:
        unknown = sorted(set(event_types) - order_event_types())
        if unknown:
            raise ValueError(f"not an event of the order log: {', '.join(unknown)}")
        return event_types

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, raw: bytes) -> Subscription:
        return cls.model_validate_json(raw)


class DeliveryStatus(StrEnum):
    DELIVERED = "delivered"  # the endpoint answered 2xx
    RETRYING = "retrying"  # an attempt failed; tried again after a backoff
    FAILED = "failed"  # out of time (OMS_WEBHOOK_RETRY_FOR_S): dead-lettered, passed over


class DeliveryRecord(Frozen):
    webhook_id: str = Field(description="the idempotency id, derived from subscription + event")
    subscription_id: str
    event_id: str
    event_type: str
    order_id: str
    partition: int
    offset: int
    status: DeliveryStatus
    attempts: int
    http_status: int | None = Field(default=None, description="none: no answer (refused, timeout)")
    detail: str = ""
    at: UtcDatetime

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, raw: bytes) -> DeliveryRecord:
        return cls.model_validate_json(raw)
