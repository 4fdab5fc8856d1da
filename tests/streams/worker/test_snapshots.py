"""Snapshots on the real broker: a worker that writes them, is killed with SIGKILL and
restarts from them replays only the tail, and loses nothing; and a state restored from a
snapshot plus its tail equals the state a full replay gives, partition by partition."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from events.codec import AvroCodec
from events.models import Customer, Event
from infra.keystore import MasterKey, MemoryKeys, private_codec
from infra.publisher import Publisher
from infra.replay import read_partition
from infra.settings import Settings
from streams.partitions import KeptInMemory, LedgerPartition, OrderPartition
from streams.reference import load_catalogue
from streams.worker.app import PartitionStates
from streams.worker.snapshots import (
    CHUNK,
    SCAN_WINDOW,
    LedgerSnapshots,
    OrderSnapshots,
    Sealer,
    SnapshotStore,
)
from streams.worker.spill import image_rows
from streams.worker.views import SharedViews
from tests.factories import received
from tests.streams.test_invariants import (
    check_ledger,
    check_orders,
    dish_order,
    log_size,
    receive_stock,
    ship_order,
    start_worker,
    stop,
    wait_until_settled,
)
from tests.streams.test_invariants import scarce as scarce  # noqa: F401 - the fixture

pytestmark = [pytest.mark.integration, pytest.mark.fault]


def partitions_of(settings: Settings, topic: str) -> list[int]:
    probe = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "probe"})
    try:
        return sorted(probe.list_topics(topic, timeout=10).topics[topic].partitions)
    finally:
        probe.close()


def rebuilt(
    settings: Settings, topic: str, partition: int, *, snapshots: Any, new: Any
) -> tuple[Any, int]:
    """A partition's state rebuilt as the worker does (from a snapshot and its tail when
    `snapshots` is given), and the offset the replay started from."""
    codec = snapshots.sealer.codec if snapshots else private_codec(settings)
    states = PartitionStates(
        topic=topic,
        replay=lambda t, p: read_partition(settings.kafka_bootstrap, t, p, codec=codec),
        new=new,
        settle=_nothing,
        snapshots=snapshots,
        tail=lambda t, p, start, ends: read_partition(
            settings.kafka_bootstrap, t, p, codec=codec, start=start, ends=ends
        ),
    )
    state = asyncio.run(states.of(partition))
    replayed = states.unsnapped[partition]
    return state, replayed


async def _nothing() -> None:
    return None


def orders_of(state: OrderPartition, ids: set[str]) -> dict[str, Any]:
    return {order_id: state.state_of(order_id) for order_id in sorted(ids)}


def test_a_worker_killed_restarts_from_its_snapshots_and_ends_as_a_full_replay_would(
    scarce: Settings,  # noqa: F811
    tmp_path: Path,
) -> None:
    # Few orders in memory: most are spilled, and the snapshots carry the spill files.
    settings = scarce.model_copy(
        update={"snapshot_every": 300, "expiry_check_s": 2.0, "orders_in_memory": 300}
    )
    orders = 2000
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    try:
        receive_stock(settings, {"WH-A": 400, "WH-B": 400, "WH-C": 200})  # 1,000 wanted
        publisher = Publisher(settings)

        def publish() -> None:
            for n in range(orders):
                publisher.intake(ship_order(n, run="snap") if n % 2 else dish_order(n, run="snap"))
            publisher.flush()

        sending = threading.Thread(target=publish)
        sending.start()
        expected = 4 * orders + orders // 2
        deadline = time.monotonic() + 180
        while log_size(settings) < expected // 2:
            assert time.monotonic() < deadline, "the worker made no progress"
            assert worker.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        assert "snapshot of" in log.read_text(), "no snapshot was written before the kill"
        while "snapshot of the views" not in log.read_text():
            assert time.monotonic() < deadline, "the views were not snapshotted"
            time.sleep(0.1)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        assert log_size(settings) < expected, "the worker finished before it could be killed"
        sending.join()
        before = log.stat().st_size
        worker = start_worker(settings, log)
        by_order = wait_until_settled(settings, orders, timeout_s=300, worker=worker, log=log)
    finally:
        stop(worker)
    restarted = log.read_text()[before:]
    assert "from a snapshot at offset" in restarted, restarted[-3000:]
    assert "views restored from a snapshot" in restarted, restarted[-3000:]

    # Nothing lost, nothing twice, nothing oversold: as without snapshots.
    assert len(by_order) == orders
    check_orders(by_order)
    levels = check_ledger(settings)
    assert sum(level.reserved for level in levels.values()) == orders // 2
    assert Counter(events[-1].event_type for events in by_order.values()) == {
        "OrderPrioritised": orders
    }

    # Each partition: its snapshot and the tail give exactly what the whole log gives.
    codec = private_codec(settings)
    store = SnapshotStore(settings)
    ids = set(by_order)
    restored_from_snapshot = 0
    for partition in partitions_of(settings, settings.topics.orders):
        full, _ = rebuilt(
            settings,
            settings.topics.orders,
            partition,
            snapshots=None,
            new=lambda _: OrderPartition(spilled=KeptInMemory()),
        )
        snap, replayed = rebuilt(
            settings,
            settings.topics.orders,
            partition,
            snapshots=OrderSnapshots(store, codec),
            new=lambda _: OrderPartition(spilled=KeptInMemory()),
        )
        mine = {i for i in ids if full.state_of(i) is not None}
        assert mine, f"partition {partition} holds no order"
        assert orders_of(snap, ids) == orders_of(full, ids)
        restored_from_snapshot += replayed < sum(1 for _ in _log(settings, partition))
    assert restored_from_snapshot, "no partition was rebuilt from a snapshot"
    carried = 0
    for partition in partitions_of(settings, settings.topics.orders):
        found = store.read("orders", partition)
        image = OrderSnapshots(store, codec).opened(found.payload)["spill"] if found else None
        carried += len(image_rows(image)) if image else 0
    assert carried, "no snapshot carried a spill file's orders"
    for partition in partitions_of(settings, settings.topics.inventory):
        full_ledger, _ = rebuilt(
            settings,
            settings.topics.inventory,
            partition,
            snapshots=None,
            new=lambda _: LedgerPartition(),
        )
        snap_ledger, _ = rebuilt(
            settings,
            settings.topics.inventory,
            partition,
            snapshots=LedgerSnapshots(store, codec),
            new=lambda _: LedgerPartition(),
        )
        assert snap_ledger.levels == full_ledger.levels
        commands = [command_id for command_id, _ in full_ledger.cut()[1]]
        assert [command_id for command_id, _ in snap_ledger.cut()[1]] == commands
        assert [snap_ledger.recent(c) for c in commands] == [
            full_ledger.recent(c) for c in commands
        ]

    # The shared views: from their snapshot and the topics' tails as from the topics' start.
    restored, scratch = views_of(settings, snapshot=store), views_of(settings, snapshot=None)
    assert restored.positions and restored.stock == scratch.stock
    assert restored.tickets == scratch.tickets
    assert restored.history.size() == scratch.history.size()
    assert {k: set(v) for k, v in restored.routed.items()} == {
        k: set(v) for k, v in scratch.routed.items()
    }


def views_of(settings: Settings, *, snapshot: SnapshotStore | None) -> SharedViews:
    views = SharedViews(
        catalogue=load_catalogue(settings.catalogue_file), codec=private_codec(settings)
    )
    found = snapshot.read("views", 0) if snapshot else None
    assert snapshot is None or found is not None, "no snapshot of the views"
    topics = settings.topics
    views.start(
        bootstrap=settings.kafka_bootstrap,
        topics=[topics.catalogue, topics.inventory, topics.orders],
        snapshot=(lambda: found.payload) if found else None,
    )
    assert views.ready.wait(timeout=60), "the views did not catch up"
    views.stop()
    return views


def _log(settings: Settings, partition: int) -> list[Event]:
    codec = private_codec(settings)
    return list(
        read_partition(settings.kafka_bootstrap, settings.topics.orders, partition, codec=codec)
    )


def test_a_snapshot_sealed_under_another_master_key_or_damaged_is_not_used(
    isolated_settings: Settings,
) -> None:
    settings = isolated_settings
    codec = private_codec(settings, MemoryKeys())
    store = SnapshotStore(settings)
    payload = Sealer(codec).dumps({"levels": {}, "recent": []})
    store.write("inventory", 0, 7, payload)
    found = SnapshotStore(settings).read("inventory", 0)
    assert found is not None and found.offset == 7 and found.payload == payload

    stranger = SnapshotStore(settings, master=MasterKey(b"\x01" * 32))
    assert stranger.read("inventory", 0) is None  # does not open: ignored, full replay
    store.write("inventory", 0, 9, payload)
    newest = store.read("inventory", 0)
    assert newest is not None and newest.offset == 9
    # A newer manifest whose chunk is gone: ignored too (never a partial state).
    manifest = {**_manifest(settings), "id": "0123456789abcdef", "offset": 11, "chunks": 2}
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    producer.produce(settings.topics.snapshots, json.dumps(manifest).encode(), b"inventory/0", 0)
    producer.flush(10)
    assert store.read("inventory", 0) is None


def _manifest(settings: Settings) -> dict[str, Any]:
    """The newest inventory manifest of partition 0 as it is on the topic."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": "probe",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(settings.topics.snapshots, 0, OFFSET_BEGINNING)])
    found: dict[str, Any] = {}
    for message in consumer.consume(num_messages=100, timeout=5):
        if message.error() is None and message.key() == b"inventory/0":
            found = json.loads(message.value())
    consumer.close()
    assert found, "no manifest on the topic"
    return found


def test_a_read_looks_at_the_newest_snapshot_not_at_every_one_before_it(
    isolated_settings: Settings,
) -> None:
    """Kafka never compacts the active segment, so a partition of the snapshot topic holds
    every snapshot written since it rolled: a read goes back from the end only as far as the
    newest snapshot of its name (another name's older one is still found, further back)."""
    settings = isolated_settings
    store = SnapshotStore(settings)
    chunked = os.urandom(2 * CHUNK)  # incompressible: 3 chunks a snapshot
    store.write("inventory", 0, 5, b"the ledger")
    for offset in range(12):
        store.write("orders", 0, 100 + offset, chunked + bytes([offset]))
    reader = SnapshotStore(settings)
    newest = reader.read("orders", 0)
    assert newest is not None and newest.offset == 111 and newest.payload[-1:] == b"\x0b"
    one_snapshot = 3 + 1 + 3  # its chunks, its manifest, the tombstones of the one before
    assert reader.scanned <= SCAN_WINDOW, reader.scanned
    assert reader.scanned >= one_snapshot
    ledger = reader.read("inventory", 0)
    assert ledger is not None and ledger.offset == 5 and ledger.payload == b"the ledger"
    assert reader.scanned > SCAN_WINDOW  # it had to go back past the orders' snapshots


def test_the_collector_does_not_run_while_the_views_restore_their_snapshot(
    isolated_settings: Settings,
) -> None:
    """The views' snapshot unpickles a million customers at a million orders; the collections
    that set off each walked everything alive again, the partitions' rebuilds beside it too.
    The collector is paused until the views are read, and what they hold is frozen after."""
    settings = isolated_settings
    source = SharedViews(catalogue=load_catalogue(settings.catalogue_file), codec=AvroCodec())
    for n in range(20_000):
        phone = f"+86138{n:08d}"
        source.note(received(event_id=f"e-{n}", order_id=f"o-{n}",
                             customer=Customer(name="王伟", phone=phone)))  # fmt: skip
    blob = source.cut()
    views = SharedViews(catalogue=load_catalogue(settings.catalogue_file), codec=AvroCodec())
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        reading = threading.current_thread().name == "oms-views" and not views.ready.is_set()
        if phase == "start" and reading:
            collections.append(info["generation"])

    frozen_before = gc.get_freeze_count()
    gc.callbacks.append(count)
    try:
        topics = settings.topics
        views.start(
            bootstrap=settings.kafka_bootstrap,
            topics=[topics.catalogue, topics.inventory, topics.orders],
            snapshot=lambda: blob,
        )
        assert views.ready.wait(timeout=60), "the views did not catch up"
        views.stop()
        assert views.history.size() == source.history.size() >= 20_000
        assert gc.isenabled(), "the collector was left off"
        assert gc.get_freeze_count() > frozen_before, "what the views read was not frozen"
    finally:
        gc.callbacks.remove(count)
        gc.unfreeze()
    assert collections == [], f"collections while the views were read: {collections}"
