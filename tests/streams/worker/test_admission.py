"""Backpressure at the door: a partition whose orders wait for the ledger stops taking new
orders from intake until they drain (`Worker.admit`, `partitions.held_back`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import TopicPartition

from events.codec import AvroCodec
from infra.settings import Settings
from streams.partitions import OrderPartition, held_back
from streams.reference import load_catalogue
from streams.worker import faust_compat
from streams.worker.app import Worker
from streams.worker.views import SharedViews
from tests.streams.test_orders import answer, context, teapots
from tests.streams.worker.test_app import FakeSink


class FakeKafka:
    """aiokafka's consumer as `faust_compat.hold_back` uses it: assignment, pause, resume."""

    def __init__(self, assigned: set[Any]) -> None:
        self.assigned, self.paused = assigned, set[Any]()

    def assignment(self) -> set[Any]:
        return set(self.assigned)

    def pause(self, *tps: Any) -> None:
        assert set(tps) <= self.assigned, "aiokafka refuses to pause what it is not assigned"
        self.paused |= set(tps)

    def resume(self, *tps: Any) -> None:
        self.paused -= set(tps)


class RunNow:
    """The consumer thread's loop, running what it is handed at once."""

    def call_soon_threadsafe(self, fn: Any) -> None:
        fn()


class FakeFaustConsumer:
    def __init__(self, kafka: FakeKafka) -> None:
        self._thread = type("Thread", (), {"_consumer": kafka, "thread_loop": RunNow()})()


@pytest.fixture
def kafka() -> FakeKafka:
    return FakeKafka({TopicPartition("oms.intake.v1", p) for p in (0, 1)})


def test_a_partition_is_held_back_at_its_limit_until_half_of_it_drained() -> None:
    assert held_back({0: 9, 1: 10, 2: 11}, set(), limit=10) == {1, 2}
    # Held: stays held above half the limit, however it got there.
    assert held_back({0: 9, 1: 6, 2: 5}, {1, 2}, limit=10) == {1}
    assert held_back({0: 9, 1: 5}, {1}, limit=10) == set()
    # A partition no longer here (revoked) is not held.
    assert held_back({0: 1}, {7}, limit=10) == set()


def test_holding_back_pauses_in_aiokafka_only_what_it_is_assigned(kafka: FakeKafka) -> None:
    consumer = FakeFaustConsumer(kafka)
    topic = "oms.intake.v1"
    faust_compat.hold_back(consumer, topic, paused={0, 5}, resumed=set(), assigned={0, 1, 5})
    assert kafka.paused == {TopicPartition(topic, 0)}  # 5: not aiokafka's (a rebalance)
    faust_compat.hold_back(consumer, topic, paused=set(), resumed={0}, assigned={0, 1})
    assert kafka.paused == set()
    # Before Faust's consumer thread has started there is nothing to pause, and no error.
    faust_compat.hold_back(object(), topic, paused={0}, resumed=set(), assigned={0})


def test_the_worker_holds_back_intake_while_its_orders_wait_for_the_ledger(
    tmp_path: Path, kafka: FakeKafka
) -> None:
    settings = Settings(home=tmp_path, kafka_partitions=2, orders_in_flight=12)  # 6 a partition
    codec = AvroCodec()
    views = SharedViews(catalogue=load_catalogue(), codec=codec)
    worker = Worker(settings, replay=lambda t, p: [], views=views, sink=FakeSink())  # type: ignore[arg-type]
    intake = settings.topics.intake
    worker.assigned = {(intake, 0), (intake, 1), (settings.topics.order_commands, 0)}
    consumer = FakeFaustConsumer(kafka)
    waiting, quiet = OrderPartition(), OrderPartition()
    worker.order_states.states.update({0: waiting, 1: quiet})
    ctx = context({("KETTLE-IRON", "WH-BJ"): 100})
    reserves = []
    for n in range(6):
        step = waiting.handle(
            teapots(order_id=f"o-{n}", event_id=f"e-{n}", external_id=f"{n}"), ctx
        )
        reserves += step.commands
    assert waiting.in_flight == 6 and quiet.in_flight == 0

    worker.admit(consumer)
    assert worker.held_back == {0}
    assert kafka.paused == {TopicPartition(intake, 0)}
    for reserve in reserves[:2]:
        waiting.handle(answer(reserve, ok=True), ctx)  # 4 still waiting: above half
    worker.admit(consumer)
    assert kafka.paused == {TopicPartition(intake, 0)}
    waiting.handle(answer(reserves[2], ok=True), ctx)  # 3: half the limit, let in again
    worker.admit(consumer)
    assert worker.held_back == set()
    assert kafka.paused == set()


def test_orders_that_never_get_an_answer_do_not_close_the_door_for_good(
    tmp_path: Path, kafka: FakeKafka
) -> None:
    """A request the ledger never answers (dead-lettered) leaves its order waiting for good; a
    held partition whose orders in flight do not move is let in again, and those orders stop
    counting."""
    from streams.worker.app import STALLED_AFTER_S

    settings = Settings(home=tmp_path, kafka_partitions=2, orders_in_flight=12)  # 6 a partition
    views = SharedViews(catalogue=load_catalogue(), codec=AvroCodec())
    worker = Worker(settings, replay=lambda t, p: [], views=views, sink=FakeSink())  # type: ignore[arg-type]
    intake = settings.topics.intake
    worker.assigned = {(intake, 0)}
    consumer = FakeFaustConsumer(kafka)
    clock = [1000.0]
    worker.clock = lambda: clock[0]
    stuck = OrderPartition()
    worker.order_states.states[0] = stuck
    ctx = context({("KETTLE-IRON", "WH-BJ"): 100})

    def order(n: int) -> list[Any]:
        event = teapots(order_id=f"o-{n}", event_id=f"e-{n}", external_id=f"{n}")
        return list(stuck.handle(event, ctx).commands)

    for n in range(6):
        order(n)  # never answered
    worker.admit(consumer)
    assert worker.held_back == {0}
    clock[0] += STALLED_AFTER_S / 2
    worker.admit(consumer)
    assert worker.held_back == {0}  # not yet: answers may still come
    clock[0] += STALLED_AFTER_S
    worker.admit(consumer)
    assert worker.held_back == set()  # no progress in STALLED_AFTER_S: let in
    assert kafka.paused == set()
    new = [order(n) for n in range(6, 11)]  # 11 waiting, 6 of them stuck: 5 count
    worker.admit(consumer)
    assert worker.held_back == set()
    new.append(order(11))  # 6 count: held again, by the orders that can move
    worker.admit(consumer)
    assert worker.held_back == {0}
    for commands in new[:3]:
        stuck.handle(answer(commands[0], ok=True), ctx)
    worker.admit(consumer)
    assert worker.held_back == set()  # half of what counts answered: in again
