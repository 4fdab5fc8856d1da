"""Partition states rebuilt after an assignment (no broker): once however many ask, never kept
when forgotten mid-way, and a few at a time, so a restart's partitions come back together."""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from infra.settings import Settings
from streams.partitions import OrderPartition
from streams.reference import load_catalogue
from streams.worker.app import PartitionStates, Worker, rebuild_at_once
from streams.worker.views import SharedViews
from tests.factories import received
from tests.streams.worker.test_app import CODEC, FakeSink


class Log:
    """A partition's order log, read back as the worker reads it; `gate`, while clear, holds
    every rebuild before it reads."""

    def __init__(self) -> None:
        self.events: dict[int, list[Any]] = {}
        self.reads: Counter[int] = Counter()
        self.gate = asyncio.Event()
        self.gate.set()

    def replay(self, _topic: str, partition: int) -> list[Any]:
        self.reads[partition] += 1
        return list(self.events.get(partition, []))

    async def settle(self) -> None:
        await self.gate.wait()


def states_of(log: Log) -> PartitionStates[OrderPartition]:
    return PartitionStates(
        topic="oms.orders.v1",
        replay=log.replay,
        new=lambda _: OrderPartition(),
        settle=log.settle,
    )


async def test_a_partition_asked_for_by_two_at_once_is_rebuilt_once() -> None:
    log = Log()
    log.events[3] = [received()]
    states = states_of(log)
    log.gate.clear()
    first, second = asyncio.ensure_future(states.of(3)), asyncio.ensure_future(states.of(3))
    await asyncio.sleep(0.01)
    log.gate.set()
    a, b = await asyncio.gather(first, second)
    assert a is b and set(a.orders) == {"o-1"}
    assert log.reads[3] == 1


async def test_a_rebuild_begun_before_the_partition_was_forgotten_is_not_kept() -> None:
    """A rebalance took the partition away and gave it back while it was being rebuilt:
    another worker may have written it meanwhile, so the state read before is not kept."""
    log = Log()
    log.events[0] = [received()]
    states = states_of(log)
    log.gate.clear()
    early = asyncio.ensure_future(states.of(0))
    await asyncio.sleep(0.01)
    states.forget([0])
    log.events[0].append(received(event_id="e-2", order_id="o-2"))  # written elsewhere
    log.gate.set()
    await early
    assert 0 not in states.states, "a state rebuilt before the forget was kept"
    now = await states.of(0)
    assert set(now.orders) == {"o-1", "o-2"}
    assert log.reads[0] == 2


async def test_rebuilds_run_a_few_at_a_time_and_one_failing_stops_none_of_the_others() -> None:
    running = most = 0
    done: list[int] = []

    async def rebuild(n: int) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        if n == 3:
            raise RuntimeError("the broker went away")
        done.append(n)

    def job(n: int) -> Any:
        return lambda: rebuild(n)

    failed = await rebuild_at_once([job(n) for n in range(8)], at_once=2)
    assert most == 2
    assert sorted(done) == [0, 1, 2, 4, 5, 6, 7]
    assert [str(e) for e in failed] == ["the broker went away"]


async def test_an_assignment_rebuilds_every_assigned_partition_before_any_input(
    tmp_path: Path,
) -> None:
    log = Log()
    for partition in range(4):
        log.events[partition] = [
            received(event_id=f"e-{partition}", order_id=f"o-{partition}", external_id="1")
        ]
    views = SharedViews(catalogue=load_catalogue(), codec=CODEC)
    views.ready.set()
    worker = Worker(Settings(home=tmp_path), replay=log.replay, views=views, sink=FakeSink())  # type: ignore[arg-type]
    topics = worker.topics
    worker.assigned = {(topics.intake, p) for p in range(3)} | {(topics.stock_commands, 1)}
    await worker.warm()
    assert set(worker.order_states.states) == {0, 1, 2}
    assert set(worker.stock_states.states) == {1}
    assert set(worker.order_states.states[2].orders) == {"o-2"}
    assert worker.rebuilding == 0 and worker.why_not_ready() is None


async def test_an_assignment_rebuilds_as_many_at_a_time_as_the_setting_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.worker import app as module

    asked: list[tuple[int, int]] = []
    real = module.rebuild_at_once

    async def counting(rebuilds: Any, at_once: int) -> list[BaseException]:
        rebuilds = list(rebuilds)
        asked.append((len(rebuilds), at_once))
        return await real(rebuilds, at_once)

    monkeypatch.setattr(module, "rebuild_at_once", counting)
    views = SharedViews(catalogue=load_catalogue(), codec=CODEC)
    views.ready.set()
    settings = Settings(home=tmp_path, rebuild_at_once=1)
    worker = Worker(settings, replay=Log().replay, views=views, sink=FakeSink())  # type: ignore[arg-type]
    worker.assigned = {(worker.topics.intake, p) for p in range(3)}
    await worker.warm()
    assert asked == [(3, 1)] and set(worker.order_states.states) == {0, 1, 2}


async def test_the_collector_does_not_run_while_a_partition_is_rebuilt() -> None:
    """A restart builds millions of objects that hold no cycles; the collections they set off
    each walked all of them again (~40 % of a restart after 1,000,000 orders). The collector
    is paused while a state is built, and what was built is frozen out of its sight after."""
    log = Log()
    log.events[0] = [received(event_id=f"e-{n}", order_id=f"o-{n}") for n in range(3000)]
    states = states_of(log)
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    frozen_before = gc.get_freeze_count()
    gc.callbacks.append(count)
    try:
        rebuilt = await states.of(0)
        during = list(collections)
        assert len(rebuilt.orders) + len(rebuilt.spilled) == 3000  # type: ignore[arg-type]
        assert gc.isenabled(), "the collector was left off"
        assert gc.get_freeze_count() > frozen_before, "the state built was not frozen"
        gc.collect(0)
        assert collections, "no collection is seen at all: the test sees nothing"
    finally:
        gc.callbacks.remove(count)
        gc.unfreeze()
    assert during == [], f"collections while the partition was rebuilt: {during}"
