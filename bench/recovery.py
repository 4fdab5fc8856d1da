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

Target (issue 17): restart time after 1,000,000 orders <= 10 s.
"""

from __future__ import annotations

import asyncio
import time
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


def _views_ready(
    settings: Settings, codec: Any, store: SnapshotStore | None = None
) -> tuple[float, SharedViews]:
    """Seconds until a worker's shared views are read: from the topics' start, or (with
    `store`) from their snapshot on and the topics' tails."""
    views = SharedViews(catalogue=load_catalogue(settings.catalogue_file), codec=codec)
    began = time.perf_counter()
    topics = settings.topics

    def snapshot() -> bytes | memoryview | None:
        found = store.read("views", 0) if store else None
        return found.payload if found else None

    views.start(
        bootstrap=settings.kafka_bootstrap,
        topics=[topics.catalogue, topics.inventory, topics.orders],
        snapshot=snapshot if store else None,
    )
    views.ready.wait(timeout=3600)
    took = time.perf_counter() - began
    # What the worker's timer has forgotten of the day by now (it runs every 30 s).
    window = timedelta(minutes=load_rules(settings.fraud_rules_file).window_minutes)
    views.forget_the_past(utc_now(), window=window)
    views.stop()
    return took, views


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
        codec = private_codec(scratch, MemoryKeys())
        store = SnapshotStore(scratch)
        sealer = Sealer(codec)
        order_snaps, ledger_snaps = OrderSnapshots(store, codec), LedgerSnapshots(store, codec)

        def new_orders(partition: int) -> OrderPartition:
            return OrderPartition(
                spilled=SpillFile(Path(spill), partition, sealer=sealer),
                max_in_memory=scratch.orders_in_memory_per_partition,
            )

        def agents(snapshots: bool) -> list[PartitionStates[Any]]:
            topics = scratch.topics
            return [
                _states(
                    scratch, codec, topics.orders, new_orders, order_snaps if snapshots else None
                ),
                _states(
                    scratch,
                    codec,
                    topics.inventory,
                    lambda _: LedgerPartition(),
                    ledger_snaps if snapshots else None,
                ),
            ]

        # A day's log, rebuilt from its start: what every restart cost before snapshots.
        full = agents(snapshots=False)
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
        for agent in full:  # a restarted worker starts with nothing in memory
            agent.forget(list(agent.states))
        tail_events = (
            produce_history(scratch, events=tail * 4, finished=1.0 - in_flight) if tail else 0
            # (the tail: orders arriving now)
        )
        restored = agents(snapshots=True)
        with store.reusing_buffers():  # as the worker's `warm` restores them
            restart_s = _rebuild_all(restored, partitions, scratch.rebuild_at_once)
        replayed = sum(sum(agent.unsnapped.values()) for agent in restored)
        views_restart_s, _ = _views_ready(scratch, codec, SnapshotStore(scratch))
        for agent in restored:
            agent.forget(list(agent.states))
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
        "replayed_events": replayed,
        "restart_s": round(restart_s, 2),
        "views_full_s": round(views_s, 2),
        "views_restart_s": round(views_restart_s, 2),
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
        f"restart from snapshots + a tail of {figures['tail_orders']:,} orders "
        f"({figures['replayed_events']:,} events replayed): {figures['restart_s']} s "
        f"(target <= {figures['target_s']:g} s: {'met' if met else 'NOT met'})",
        f"shared views: {figures['views_full_s']} s from the topics' start, "
        f"{figures['views_restart_s']} s from their snapshot and the tails (the worker reads "
        "them beside its partitions: a restart takes the longer of the two)",
    ]
