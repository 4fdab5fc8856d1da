from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Producer

from events.codec import AvroCodec
from events.models import (
    Actor,
    ActorKind,
    DeadLetter,
    ExpiryBatchAdded,
    ExpiryBatchExpired,
    FulfilmentGroup,
    LineQuantity,
    LowStockAlerted,
    OrderCancelled,
    OrderEvent,
    OrderLine,
    OrderModified,
    OrderPrioritised,
    OrderRouted,
    SafetyStockSet,
    StockAdjusted,
    StockCommitted,
    StockCounted,
    StockEvent,
    StockReceived,
    StockReleased,
    StockReservationRefused,
    StockReserved,
)
from events.privacy import for_analysts
from infra.keystore import KafkaKeys, MemoryKeys
from infra.publisher import Publisher
from infra.settings import Settings
from projections import orders, stock
from projections.orders import Position
from projections.projector import Projector
from projections.queries import event_count, status_counts, verdict_counts
from projections.store import ClickHouseStore
from streams import inventory
from streams.validation import decide
from tests.conftest import read_topic
from tests.factories import received

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
HERE = Position("oms.orders.v1", 0, 10)
SYSTEM = Actor(kind=ActorKind.SYSTEM, id="oms")


def follow(model: type[OrderEvent], sequence: int, minutes: int, **fields: object) -> OrderEvent:
    at = NOW + timedelta(minutes=minutes)
    return model.model_validate(
        dict(
            event_id=f"e-{sequence}",
            sequence=sequence,
            occurred_at=at,
            recorded_at=at,
            correlation_id="o-1",
            actor=SYSTEM,
            order_id="o-1",
            channel="webshop",
            external_id="1001",
            **fields,
        )
    )


def fold_all(events: list[OrderEvent]) -> list[orders.OrderChange]:
    state = None
    changes = []
    for n, event in enumerate(events):
        change = orders.fold(state, event, Position("oms.orders.v1", 0, n))
        assert change is not None
        changes.append(change)
        state = change.row
    return changes


def test_fold_builds_the_order_row_and_applies_the_verdict() -> None:
    order = received()
    first, after = fold_all(decide(order, now=NOW))
    assert (first.row["status"], first.row["total"], first.row["item_count"]) == (
        "received",
        6100,
        2,
    )
    assert (after.row["status"], after.row["version"], after.row["_offset"]) == ("accepted", 2, 1)
    assert (after.row["customer_name"], after.row["is_sale"]) == ("王伟", 1)
    assert after.row["customer_key"] == "+8613800000000"


def test_fold_ignores_an_event_it_already_applied() -> None:
    order = received()
    verdict = decide(order, now=NOW)[1]
    row = fold_all([order, verdict])[-1].row
    assert orders.fold(row, order, HERE) is None
    assert orders.fold(row, verdict, HERE) is None


def test_rejection_reasons_land_on_the_row_and_the_lines_are_no_sale() -> None:
    order = received(total=1)
    first, change = fold_all(decide(order, now=NOW))
    assert change.row["status"] == "rejected"
    assert change.row["rejection_codes"] == ["TOTAL_MISMATCH"]
    assert [line[14] for line in first.lines] == [0]  # is_sale, from the start
    assert change.lines == []  # nothing about the lines changed


def test_routing_places_each_line_and_a_revision_voids_the_line_it_removed() -> None:
    two_lines = [
        OrderLine(sku="A", name="a", quantity=1, unit_price=100),
        OrderLine(sku="B", name="b", quantity=2, unit_price=50),
    ]
    order = received(lines=two_lines, total=700)
    routed = follow(
        OrderRouted,
        3,
        5,
        location="S1",
        reasons=[],
        groups=[
            FulfilmentGroup(location="S1", lines=[LineQuantity(sku="A", quantity=1)]),
            FulfilmentGroup(location="S2", lines=[LineQuantity(sku="B", quantity=2)]),
        ],
    )
    revised = follow(OrderModified, 4, 6, revision=2, lines=two_lines[:1], total=600)
    changes = fold_all([*decide(order, now=NOW), routed, revised])
    assert [(line[2], line[9]) for line in changes[2].lines] == [("A", "S1"), ("B", "S2")]
    assert [(line[2], line[4], line[14]) for line in changes[3].lines] == [
        ("A", 1, 1),
        ("B", 0, 0),
    ]


def test_stages_close_with_the_seconds_spent_and_an_end_status_opens_none() -> None:
    order = received()
    prioritised = follow(OrderPrioritised, 3, 10, location="S1", score=70)
    cancelled = follow(OrderCancelled, 4, 25, cancelled_by="customer", reason_code="X", reason="x")
    changes = fold_all([*decide(order, now=NOW), prioritised, cancelled])
    closing = changes[3].stages
    assert [(s[2], s[5], s[6]) for s in closing] == [("prioritised", 900, "cancelled")]
    assert changes[3].row["is_sale"] == 0 and changes[3].row["cancelled"] == 1


@pytest.mark.parametrize("given_at", [False, True], ids=["at-derived", "at-as-projector-passes"])
def test_an_order_counts_and_waits_from_its_arrival_not_from_when_the_channel_placed_it(
    given_at: bool,
) -> None:
    placed, arrived = NOW - timedelta(days=9, hours=2), NOW - timedelta(seconds=5)
    order = received(occurred_at=placed, placed_at=placed, recorded_at=arrived)
    events = decide(order, now=NOW)  # accepted at NOW
    state = None
    changes = []
    for n, event in enumerate(events):
        at = orders.seconds(event.occurred_at) if given_at else None
        change = orders.fold(state, event, Position("oms.orders.v1", 0, n), at)
        assert change is not None
        changes.append(change)
        state = change.row
    received_change, accepted_change = changes
    assert received_change.activity.minute == datetime(2026, 11, 25, 8, 59)
    assert [(s[2], s[3]) for s in received_change.stages] == [
        ("received", datetime(2026, 11, 25, 8, 59, 55))
    ]
    assert [(s[2], s[5]) for s in accepted_change.stages if s[4] is not None] == [("received", 5)]
    assert accepted_change.row["placed_at"] == datetime(2026, 11, 16, 7, 0)


def test_stock_fold_moves_levels_as_the_inventory_agents_ledger_does() -> None:
    def at(model: type[StockEvent], **fields: object) -> StockEvent:
        n = len(ledger) + 1
        return model.model_validate(
            dict(
                event_id=f"s-{n}",
                sequence=n,
                occurred_at=NOW,
                recorded_at=NOW,
                correlation_id="x",
                actor=SYSTEM,
                sku="TEA",
                location="W1",
                **fields,
            )
        )

    ledger: list[StockEvent] = []
    steps: list[tuple[type[StockEvent], dict[str, Any]]] = [
        (SafetyStockSet, {"quantity": 5}),
        (StockReceived, {"quantity": 40}),
        (ExpiryBatchAdded, {"batch_id": "b1", "quantity": 10, "expires_on": date(2026, 12, 1)}),
        (StockReserved, {"order_id": "o1", "reservation_id": "r1", "quantity": 3}),
        (StockCommitted, {"order_id": "o1", "reservation_id": "r1", "quantity": 3}),
        (StockReserved, {"order_id": "o2", "reservation_id": "r2", "quantity": 2}),
        (
            StockReleased,
            {"order_id": "o2", "reservation_id": "r2", "quantity": 2, "reason": "CANCELLED"},
        ),
        (
            StockReservationRefused,
            {
                "order_id": "o3",
                "reservation_id": "r3",
                "requested": 99,
                "available": 37,
                "reason": "INSUFFICIENT_STOCK",
            },
        ),
        (StockAdjusted, {"delta": -1, "reason": "DAMAGED"}),
        (StockCounted, {"counted": 45}),
        (ExpiryBatchExpired, {"batch_id": "b1", "quantity": 4}),
        (StockReserved, {"order_id": "o4", "reservation_id": "r4", "quantity": 6}),
        (LowStockAlerted, {"available": 30, "threshold": 30, "reorder_quantity": 50}),
    ]
    for model, fields in steps:
        ledger.append(at(model, **fields))
    level = None
    agent = inventory.empty("TEA", "W1")
    for n, event in enumerate(ledger):
        change = stock.fold(level, event, Position("oms.inventory.v1", 0, n))
        assert change is not None
        level, agent = change.level, inventory.apply(agent, event)
        assert (level["on_hand"], level["reserved"], level["safety_stock"], level["available"]) == (
            agent.on_hand,
            agent.reserved,
            agent.safety_stock,
            agent.available_to_promise,
        ), event.event_type
    assert level is not None and (level["on_hand"], level["available"]) == (41, 30)
    assert stock.fold(level, ledger[3], HERE) is None  # already applied


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
    again.run(until=lambda _: again.lag() == 0)
    assert status_counts(store) == {"accepted": 48, "rejected": 12}
    assert verdict_counts(store, order_ids=["p-o1", "p-o5", "q-o1"]) == {
        "accepted": 2,
        "rejected": 1,
    }
    db = store.database
    assert store.query(f"SELECT count(), uniqExact(event_id) FROM {db}.order_events") == [
        (120, 120)
    ]
    assert store.query(f"SELECT sum(is_sale), sum(quantity) FROM {db}.order_lines FINAL") == [
        (48, 120)
    ]


@pytest.mark.integration
def test_corrupt_message_is_dead_lettered_once_and_skipped(
    isolated_settings: Settings, store: ClickHouseStore
) -> None:
    settings = isolated_settings
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    producer.produce(settings.topics.orders, key=b"x", value=b"\x00\x00\x00\x00\x01\xff\xff")
    producer.produce(settings.topics.inventory, key=b"y", value=b"not avro")
    producer.flush(10)
    publish_orders(settings, 3)
    projector = Projector(settings=settings, store=store, batch_seconds=0.3)
    projector.run(until=lambda _: projector.lag() == 0)
    letters = [
        AvroCodec().decode(m.value()) for m in read_topic(settings, settings.topics.dlq, expect=2)
    ]
    assert all(isinstance(letter, DeadLetter) for letter in letters)
    by_source = {letter.source: letter for letter in letters if isinstance(letter, DeadLetter)}
    assert by_source[settings.topics.orders].raw == b"\x00\x00\x00\x00\x01\xff\xff"
    assert "corrupt Avro body" in by_source[settings.topics.orders].reason
    assert status_counts(store) == {"accepted": 2, "rejected": 1}
    assert store.query(f"SELECT count() FROM {store.database}.dead_letters") == [(2,)]


@pytest.mark.integration
def test_an_event_the_fold_raises_on_is_dead_lettered_and_the_rest_projected(
    isolated_settings: Settings, store: ClickHouseStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fold bug (or an event no check foresaw) must not stop the projection: that event is
    dead-lettered with what failed, every other one is projected (the Python fold; the native
    fold has no failure of its own per event: it is total over what bounds.py lets through)."""
    settings = isolated_settings
    publish_orders(settings, 3)
    real = orders.fold

    def raises_for_p_o1(state: Any, event: Any, *args: Any) -> Any:
        if event.order_id == "p-o1":
            raise ArithmeticError("a fold bug")
        return real(state, event, *args)

    monkeypatch.setattr(orders, "fold", raises_for_p_o1)
    projector = Projector(settings=settings, store=store, batch_seconds=0.3, native=False)
    projector.run(until=lambda _: projector.lag() == 0)
    letters = [
        AvroCodec().decode(m.value()) for m in read_topic(settings, settings.topics.dlq, expect=2)
    ]
    # What the fold had: the analysts' view of each event (masked; projections/privacy.py).
    keys = KafkaKeys(settings)
    assert {letter.raw for letter in letters if isinstance(letter, DeadLetter)} == {
        AvroCodec().encode(for_analysts(e, keys))
        for e in decide(
            received(event_id="p-e1", order_id="p-o1", external_id="p-1", total=6100), now=NOW
        )
    }
    assert all("ArithmeticError: a fold bug" in letter.reason for letter in letters)  # type: ignore[union-attr]
    assert status_counts(store) == {"accepted": 1, "rejected": 1}  # p-o0 (total 1), p-o2
    assert store.query(f"SELECT count() FROM {store.database}.dead_letters") == [(2,)]


class FakeConsumer:
    """A fake Kafka consumer (unit tests only): one message every 10 ms."""

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        import time

        time.sleep(min(timeout, 0.01))
        return [FakeMessage()]

    def close(self) -> None:
        return None


class FakeMessage:
    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return b""


def _polling_projector() -> Any:
    from projections.projector import Projector

    projector = Projector(settings=Settings(), store=object(), batch_seconds=0.1,  # type: ignore[arg-type]
                          lease=False, native=False, keys=MemoryKeys())  # fmt: skip
    projector._consumer.close()
    projector._consumer = FakeConsumer()  # type: ignore[assignment]
    return projector


def test_a_batch_ends_after_batch_seconds_when_no_write_is_in_flight() -> None:
    import time

    projector = _polling_projector()
    started = time.monotonic()
    batch = [message for chunk in projector.poll() for message in chunk]
    assert time.monotonic() - started < 0.3
    assert 1 <= len(batch) <= 15


def test_a_batch_keeps_filling_while_the_one_before_is_being_written() -> None:
    import threading
    import time
    from concurrent.futures import Future

    projector = _polling_projector()
    writing: Future[Any] = Future()
    projector._pending = writing
    threading.Timer(0.5, writing.set_result, args=(None,)).start()
    started = time.monotonic()
    batch = [message for chunk in projector.poll() for message in chunk]
    assert writing.done()  # it ended only once the write had
    assert time.monotonic() - started >= 0.5
    assert len(batch) > 15  # what arrived meanwhile, in this one batch
