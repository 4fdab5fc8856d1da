from __future__ import annotations

from datetime import UTC, datetime

import pytest
from confluent_kafka import Producer

from events.codec import AvroCodec
from events.models import DeadLetter
from oms.publisher import Publisher
from oms.settings import Settings
from projections.projector import Position, Projector, apply
from projections.queries import event_count, status_counts
from projections.store import ClickHouseStore
from streams.validation import decide
from tests.conftest import read_topic
from tests.factories import received

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
HERE = Position("oms.orders.v1", 0, 10)


def test_fold_builds_the_order_row_and_applies_the_verdict() -> None:
    order = received()
    accepted = decide(order, now=NOW)[1]
    row = apply(None, order, HERE)
    assert row is not None
    assert (row["status"], row["total"], row["item_count"], row["version"]) == (
        "received",
        6100,
        2,
        1,
    )
    after = apply(row, accepted, Position("oms.orders.v1", 0, 11))
    assert after is not None
    assert (after["status"], after["version"], after["_offset"], after["customer_name"]) == (
        "accepted",
        2,
        11,
        "王伟",
    )


def test_fold_ignores_an_event_it_already_applied() -> None:
    order = received()
    verdict = decide(order, now=NOW)[1]
    row = apply(apply(None, order, HERE), verdict, HERE)
    assert apply(row, order, HERE) is None
    assert apply(row, verdict, HERE) is None


def test_rejection_reasons_land_on_the_row() -> None:
    order = received(total=1)
    row = apply(apply(None, order, HERE), decide(order, now=NOW)[1], HERE)
    assert row is not None
    assert row["status"] == "rejected"
    assert row["rejection_codes"] == ["TOTAL_MISMATCH"]


def publish_orders(settings: Settings, count: int, *, prefix: str = "p") -> int:
    """Orders and their verdicts on the order log, as the worker writes them; returns the sum
    of the accepted orders' totals."""
    publisher = Publisher(settings)
    accepted_total = 0
    for n in range(count):
        order = received(
            event_id=f"{prefix}-e{n}",
            order_id=f"{prefix}-o{n}",
            external_id=f"{prefix}-{n}",
            total=6100 if n % 5 else 1,
        )
        for event in decide(order, now=NOW):
            publisher.publish(settings.topics.orders, event)
        accepted_total += order.total if n % 5 else 0
    assert publisher.flush().acknowledged[settings.topics.orders] == 2 * count
    return accepted_total


@pytest.mark.integration
def test_projector_writes_each_order_once_and_resumes_without_double_counting(
    isolated_settings: Settings, store: ClickHouseStore
) -> None:
    settings = isolated_settings
    publish_orders(settings, 50)
    projector = Projector(settings=settings, store=store, batch_size=30, batch_seconds=0.3)
    projector.run(until=lambda _: event_count(store) >= 100)
    assert status_counts(store) == {"accepted": 40, "rejected": 10}

    publish_orders(settings, 10, prefix="q")
    again = Projector(settings=settings, store=store, batch_size=30, batch_seconds=0.3)
    again.run(until=lambda _: event_count(store) >= 120)
    assert status_counts(store) == {"accepted": 48, "rejected": 12}
    physical = store.query(
        f"SELECT count(), uniqExact(event_id) FROM {store.database}.order_events"
    )
    assert physical == [(120, 120)]


@pytest.mark.integration
def test_corrupt_message_on_the_order_log_is_dead_lettered_and_skipped(
    isolated_settings: Settings, store: ClickHouseStore
) -> None:
    settings = isolated_settings
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    producer.produce(settings.topics.orders, key=b"x", value=b"\x00\x00\x00\x00\x01\xff\xff")
    producer.flush(10)
    publish_orders(settings, 3)
    projector = Projector(settings=settings, store=store, batch_seconds=0.3)
    projector.run(until=lambda _: event_count(store) >= 6)
    (message,) = read_topic(settings, settings.topics.dlq, expect=1)
    letter = AvroCodec().decode(message.value())
    assert isinstance(letter, DeadLetter)
    assert letter.raw == b"\x00\x00\x00\x00\x01\xff\xff"
    assert letter.source == settings.topics.orders
    assert "corrupt Avro body" in letter.reason
    assert status_counts(store) == {"accepted": 2, "rejected": 1}
