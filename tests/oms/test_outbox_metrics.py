"""The outbox sender's metrics and health on the real broker: the backlog gauge counts the
intents the outbox holds without an outcome (as read at start, and as calls settle), and the
sender is ready once it has read its topic."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from confluent_kafka import Producer
from prometheus_client import REGISTRY

from events.models import utc_now
from events.platform_calls import CallKind, OutboxStatus, PlatformCall, call_key, record
from infra.kafka import producer_config
from infra.settings import Settings
from oms.outbox import OutboxSender, write_acknowledged


class FakeMeituan:
    """A platform client that says every call is done already (a fake: no platform here)."""

    name = "meituan"

    def already_done(self, call: PlatformCall, *, now: datetime) -> bool:
        return True

    def send(self, call: PlatformCall, *, now: datetime) -> str:
        raise AssertionError("a call found done is not made again")


def backlog() -> float:
    return REGISTRY.get_sample_value("oms_outbox_backlog", {"platform": "meituan"}) or 0.0


def test_the_backlog_is_the_intents_without_an_outcome_and_falls_as_they_settle(
    isolated_settings: Settings,
) -> None:
    settings = isolated_settings
    now = utc_now()
    calls = [
        PlatformCall(
            idempotency_key=call_key(platform="meituan", kind=CallKind.CONFIRM, cause_event_id=e),
            platform="meituan",
            kind=CallKind.CONFIRM,
            cause_event_id=e,
            cause_type="OrderAcceptedByStore",
            caused_at=now,
            order_id=f"o-{e}",
            platform_order_id=f"mt-{e}",
        )  # fmt: skip
        for e in ("e-1", "e-2", "e-3")
    ]
    producer = Producer(producer_config(settings.kafka_bootstrap))
    for call in calls[:2]:  # a crash left these two between intent and outcome
        intent = record(call, OutboxStatus.INTENT, at=now)
        assert (
            write_acknowledged(producer, settings.topics.outbox, intent.key, intent.encode())
            is None
        )
    done = record(calls[2], OutboxStatus.SENT, at=now)
    assert write_acknowledged(producer, settings.topics.outbox, done.key, done.encode()) is None

    before = backlog()
    sender = OutboxSender(settings, {"meituan": FakeMeituan()})
    assert sender.health.why_not_ready() == "reading the outbox"
    seen: list[Any] = []

    def first_look(running: OutboxSender) -> bool:
        seen.append((backlog(), running.health.why_not_ready()))
        return True  # stop: one look, before any input

    sender.run(until=first_look)
    assert seen == [(before + 2, None)]  # read at start; ready once it goes through the logs
    assert sender.health.why_not_ready() == "stopped"
    settled = sender.make(calls[0])  # asked of the platform: found done, recorded sent
    assert settled.status is OutboxStatus.SENT and backlog() == before + 1
