"""Backpressure at the door: a partition whose orders wait for the ledger stops taking new
orders from intake until they drain (`Worker.admit`, `partitions.held_back`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP

from events.codec import AvroCodec
from infra.settings import Settings
from streams.partitions import OrderPartition, held_back
from streams.reference import load_catalogue
from streams.worker import faust_compat
from streams.worker.app import Worker
from streams.worker.views import SharedViews
from tests.streams.test_orders import answer, context, teapots
from tests.streams.worker.test_app import FakeSink


@pytest.fixture
def consumer() -> Iterator[Any]:
    """The patched Faust consumer, never started (no broker: its bookkeeping only)."""
    app = faust_compat.App("admission-check", broker="kafka://localhost:1", web_enabled=False)
    consumer = app.consumer
    yield consumer
    loop = getattr(getattr(consumer, "_thread", None), "thread_loop", None)
    if loop is not None and not loop.is_closed():
        loop.close()


def test_a_partition_is_held_back_at_its_limit_until_half_of_it_drained() -> None:
    assert held_back({0: 9, 1: 10, 2: 11}, set(), limit=10) == {1, 2}
    # Held: stays held above half the limit, however it got there.
    assert held_back({0: 9, 1: 6, 2: 5}, {1, 2}, limit=10) == {1}
    assert held_back({0: 9, 1: 5}, {1}, limit=10) == set()
    # A partition no longer here (revoked) is not held.
    assert held_back({0: 1}, {7}, limit=10) == set()


def test_a_paused_partition_stays_paused_when_faust_s_buffer_drains(consumer: Any) -> None:
    """Faust's flow control puts a partition whose stream buffer has room again back among
    the fetched ones; the patched consumer leaves a paused one out."""
    a, b = TP("intake", 0), TP("intake", 1)
    consumer._set_active_tps({a, b})
    faust_compat.hold_back(consumer, "intake", paused={0, 5}, resumed=set(), assigned={0, 1})
    assert consumer._get_active_partitions() == {b}
    consumer.on_buffer_full(a)
    consumer.on_buffer_drop(a)
    assert consumer._get_active_partitions() == {b}
    faust_compat.hold_back(consumer, "intake", paused=set(), resumed={0, 5}, assigned={0, 1})
    assert consumer._get_active_partitions() == {a, b}  # 5 is not ours: never fetched


def test_the_worker_holds_back_intake_while_its_orders_wait_for_the_ledger(
    tmp_path: Path, consumer: Any
) -> None:
    settings = Settings(home=tmp_path, kafka_partitions=2, orders_in_flight=12)  # 6 a partition
    codec = AvroCodec()
    views = SharedViews(catalogue=load_catalogue(), codec=codec)
    worker = Worker(settings, replay=lambda t, p: [], views=views, sink=FakeSink())  # type: ignore[arg-type]
    intake = settings.topics.intake
    worker.assigned = {(intake, 0), (intake, 1), (settings.topics.order_commands, 0)}
    consumer._set_active_tps({TP(intake, 0), TP(intake, 1)})
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
    assert consumer._get_active_partitions() == {TP(intake, 1)}
    for reserve in reserves[:2]:
        waiting.handle(answer(reserve, ok=True), ctx)  # 4 still waiting: above half
    worker.admit(consumer)
    assert consumer._get_active_partitions() == {TP(intake, 1)}
    waiting.handle(answer(reserves[2], ok=True), ctx)  # 3: half the limit, let in again
    worker.admit(consumer)
    assert worker.held_back == set()
    assert consumer._get_active_partitions() == {TP(intake, 0), TP(intake, 1)}
