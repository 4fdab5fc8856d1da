"""Restart time after a day of orders: how long a worker takes to have every partition's agent
state back, from the whole log and from snapshots plus their tails; and, beside it, how long
the shared views take to read the same topics, from their start and from their snapshot.

The history (`bench.projection.produce_history`) is orders of which an `in_flight` share is
still waiting for the ledger's answer to a reservation (4 order-log events each; a reservation
per fifth of them on the ledger) and the rest finished (made to order, accepted, made, picked
up and completed: 9 events), spread over the 24 hours before the run, on scratch topics of
the default partition count. What a restart
costs grows with the orders in flight (decoded into memory) more than with the finished ones
(put into the spill file as they are): `--in-flight 1` is a day that never finished anything.
Then every partition is snapshotted as the worker does it (cut, sealed, written), `tail` more
orders arrive, and the states are rebuilt the two ways, in the worker's own code
(`PartitionStates.of`), as a worker assigned them all rebuilds them (`rebuild_at_once`).

The restart runs in a process of its own, as a restarted worker does (nothing in memory; not
after the full rebuild's gigabytes in the same process), and with the shared views read from
their snapshot in their thread beside the partitions, as the worker reads them: the restart
time is until both are back (the worker's /readyz). The partitions alone are measured too.

Target (issue 17): restart time after 1,000,000 orders <= 10 s.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from functools import partial
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from bench.kafka_tools import scratch_topics
from bench.projection import produce_history
from events.models import utc_now
from infra.keystore import MemoryKeys, private_codec
from infra.replay import read_partition
from infra.settings import Settings
from streams.partitions import LedgerPartition, OrderPartition
from streams.reference import load_catalogue, load_rules
from streams.worker.app import PartitionStates, rebuild_at_once
from streams.worker.snapshots import LedgerSnapshots, OrderSnapshots, Sealer, SnapshotStore
from streams.worker.spill import SpillFile
from streams.worker.views import SharedViews

RESTART_TARGET_S = 10.0
DAY = timedelta(hours=24)


async def _settled() -> None:
    return None


def _states(
    settings: Settings, codec: Any, topic: str, new: Any, snapshots: Any
) -> PartitionStates[Any]:
    bootstrap = settings.kafka_bootstrap
    return PartitionStates(
        topic=topic,
        replay=lambda t, p: read_partition(bootstrap, t, p, codec=codec),
        new=new,
        settle=_settled,
        snapshots=snapshots,
        tail=lambda t, p, start, ends: read_partition(
            bootstrap, t, p, codec=codec, start=start, ends=ends
        ),
    )


def _rebuild_all(states: list[PartitionStates[Any]], partitions: int, at_once: int) -> float:
    """Seconds to rebuild every partition of every agent, as a worker does after it was
    assigned them all (`rebuild_at_once`: `OMS_REBUILD_AT_ONCE` at a time)."""
    began = time.perf_counter()

    async def every() -> None:
        failed = await rebuild_at_once(
            [partial(agent.of, partition) for agent in states for partition in range(partitions)],
            at_once=at_once,
        )
        if failed:
            raise failed[0]

    asyncio.run(every())
    return time.perf_counter() - began


def _start_views(settings: Settings, codec: Any, store: SnapshotStore | None) -> SharedViews:
    """A worker's shared views, read in their thread: from the topics' start, or (with
    `store`) from their snapshot on and the topics' tails."""
    views = SharedViews(catalogue=load_catalogue(settings.catalogue_file), codec=codec)
    topics = settings.topics

    def snapshot() -> bytes | memoryview | None:
        found = store.read("views", 0) if store else None
        return found.payload if found else None

    views.start(
        bootstrap=settings.kafka_bootstrap,
        topics=[topics.catalogue, topics.inventory, topics.orders],
        snapshot=snapshot if store else None,
    )
    return views


def _views_ready(settings: Settings, codec: Any) -> tuple[float, SharedViews]:
    """Seconds until a worker's shared views are read from the topics' start."""
    began = time.perf_counter()
    views = _start_views(settings, codec, None)
    views.ready.wait(timeout=3600)
    took = time.perf_counter() - began
    # What the worker's timer has forgotten of the day by now (it runs every 30 s).
    window = timedelta(minutes=load_rules(settings.fraud_rules_file).window_minutes)
    views.forget_the_past(utc_now(), window=window)
    views.stop()
    return took, views


def _agents(
    settings: Settings, codec: Any, spill: Path, store: SnapshotStore | None
) -> list[PartitionStates[Any]]:
    """The order and stock agents' partition states, as a worker makes them (with `store`:
    restored from their snapshots and tails)."""
    sealer = Sealer(codec)

    def new_orders(partition: int) -> OrderPartition:
        return OrderPartition(
            spilled=SpillFile(spill, partition, sealer=sealer),
            max_in_memory=settings.orders_in_memory_per_partition,
        )

    topics = settings.topics
    order_snaps = OrderSnapshots(store, codec) if store else None
    ledger_snaps = LedgerSnapshots(store, codec) if store else None
    return [
        _states(settings, codec, topics.orders, new_orders, order_snaps),
        _states(settings, codec, topics.inventory, lambda _: LedgerPartition(), ledger_snaps),
    ]


def _restart(
    settings: Settings, keys: dict[str, dict[str, bytes]], spill: str, *, views: bool
) -> dict[str, float]:
    """A restarted worker, in a process of its own (a restart starts with nothing in memory):
    every partition of both agents restored from its snapshot and tail (`rebuild_at_once`,
    as `Worker.warm`), and, with `views`, the shared views from theirs in their thread beside
    them, as the worker reads them. Seconds until the partitions are back, until the views
    are, and until both are (the worker is ready: /readyz)."""
    memory = MemoryKeys()
    memory.keys = keys
    codec = private_codec(settings, memory)
    store = SnapshotStore(settings)
    restored = _agents(settings, codec, Path(spill), store)
    began = time.perf_counter()
    reading = _start_views(settings, codec, SnapshotStore(settings)) if views else None
    with store.reusing_buffers():  # as the worker's `warm` restores them
        partitions_s = _rebuild_all(restored, settings.kafka_partitions, settings.rebuild_at_once)
    views_s = 0.0
    if reading is not None:
        reading.ready.wait(timeout=3600)
        views_s = time.perf_counter() - began
        reading.stop()
    figures = {
        "partitions_s": partitions_s,
        "views_s": views_s,
        "ready_s": time.perf_counter() - began,
        "replayed": sum(sum(agent.unsnapped.values()) for agent in restored),
    }
    for agent in restored:
        agent.forget(list(agent.states))
    return figures


def _in_a_new_process(*args: Any, **kwargs: Any) -> dict[str, float]:
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as process:
        return process.submit(_restart, *args, **kwargs).result()


def run(settings: Settings, *, orders: int, tail: int, in_flight: float = 1.0) -> dict[str, Any]:
    partitions = settings.kafka_partitions
    with (
        scratch_topics(settings, "bench-recovery") as scratch,
        TemporaryDirectory(prefix="oms-recovery-") as spill,
    ):
        began = time.perf_counter()
        events = produce_history(scratch, events=orders * 4, finished=1.0 - in_flight, day=DAY)
        produced_s = time.perf_counter() - began
        # Data keys in memory: the history was not sealed as it was written (as a worker's
        # log is), so each of its customers would otherwise get a key on the key topic now.
        keys = MemoryKeys()
        codec = private_codec(scratch, keys)
        store = SnapshotStore(scratch)
        order_snaps, ledger_snaps = OrderSnapshots(store, codec), LedgerSnapshots(store, codec)

        # A day's log, rebuilt from its start: what every restart cost before snapshots.
        full = _agents(scratch, codec, Path(spill), None)
        full_s = _rebuild_all(full, partitions, scratch.rebuild_at_once)
        # The worker's snapshot of every partition, at the log's end.
        began = time.perf_counter()
        written = 0
        for agent, snaps in zip(full, (order_snaps, ledger_snaps), strict=True):
            for partition, state in agent.states.items():
                offset = _end(scratch, agent.topic, partition, codec)
                written += snaps.write(partition, offset, snaps.capture(state)())
        views_s, views = _views_ready(scratch, codec)
        written += store.write("views", 0, 0, views.cut())
        snapshot_s = time.perf_counter() - began - views_s
        del views
        for agent in full:  # the worker stops
            agent.forget(list(agent.states))
        del full
        tail_events = (
            produce_history(scratch, events=tail * 4, finished=1.0 - in_flight) if tail else 0
            # (the tail: orders arriving now)
        )
        # The restart: a new process, as a worker restarted; its partitions alone first, then
        # the worker's restart whole (partitions and views together, sharing the cores).
        alone = _in_a_new_process(scratch, keys.keys, spill, views=False)
        restart = _in_a_new_process(scratch, keys.keys, spill, views=True)
    return {
        "orders": orders,
        "in_flight": in_flight,
        "events": events,
        "partitions": partitions,
        "produce_s": round(produced_s, 1),
        "full_replay_s": round(full_s, 2),
        "snapshot_write_s": round(snapshot_s, 2),
        "snapshot_mib": round(written / 2**20, 1),
        "tail_orders": tail,
        "tail_events": tail_events,
        "replayed_events": restart["replayed"],
        "partitions_alone_s": round(alone["partitions_s"], 2),
        "restart_partitions_s": round(restart["partitions_s"], 2),
        "restart_views_s": round(restart["views_s"], 2),
        "restart_s": round(restart["ready_s"], 2),
        "views_full_s": round(views_s, 2),
        "target_s": RESTART_TARGET_S,
    }


def _end(settings: Settings, topic: str, partition: int, codec: Any) -> int:
    ends: dict[tuple[str, int], int] = {}
    for _ in read_partition(
        settings.kafka_bootstrap, topic, partition, codec=codec, start=1 << 62, ends=ends
    ):
        pass
    return ends[(topic, partition)]


def report(figures: dict[str, Any]) -> list[str]:
    met = figures["restart_s"] <= figures["target_s"]
    return [
        f"history: {figures['orders']:,} orders ({figures['in_flight']:.0%} in flight), "
        f"{figures['events']:,} events on "
        f"{figures['partitions']} partitions (produced in {figures['produce_s']} s)",
        f"rebuild from the whole log: {figures['full_replay_s']} s",
        f"snapshots of every partition: {figures['snapshot_mib']} MiB written in "
        f"{figures['snapshot_write_s']} s",
        f"restart, in a new process, from snapshots + a tail of {figures['tail_orders']:,} "
        f"orders ({figures['replayed_events']:,} events replayed): ready in "
        f"{figures['restart_s']} s (target <= {figures['target_s']:g} s: "
        f"{'met' if met else 'NOT met'}); partitions back in {figures['restart_partitions_s']} "
        f"s and the shared views in {figures['restart_views_s']} s, read side by side as the "
        f"worker reads them",
        f"partitions alone, in a new process: {figures['partitions_alone_s']} s; the shared "
        f"views from the topics' start: {figures['views_full_s']} s",
    ]
