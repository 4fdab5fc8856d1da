"""The invariants of docs/architecture.md on the real broker: scarce stock, a worker killed
with SIGKILL, redelivery.

The checks read the topics themselves (the order log and the stock ledger), not a read model.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from events.codec import AvroCodec
from events.models import (
    Actor,
    ActorKind,
    Address,
    Customer,
    OrderEvent,
    OrderLine,
    OrderMode,
    OrderReceived,
    StockEvent,
    deterministic_id,
    stock_key,
    utc_now,
)
from infra.publisher import Publisher
from infra.replay import read_partition
from infra.settings import Settings
from oms import operations
from streams import inventory
from streams.reference import load_catalogue
from tests.conftest import settings_env

pytestmark = [pytest.mark.integration, pytest.mark.fault]
CODEC = AvroCodec()
WAREHOUSES = {"WH-A": (31.23, 121.47), "WH-B": (39.90, 116.40), "WH-C": (23.13, 113.26)}
TERMINAL = {"OrderPrioritised", "OrderRejected", "OrderHeld"}


def write_catalogue(path: Path) -> Path:
    """Three warehouses that ship, one stocked product, and the demo's dishes."""
    demo = json.loads((Path(__file__).parents[2] / "streams/reference/demo.json").read_text())
    demo["locations"] += [
        {"id": name, "name": name, "kind": "warehouse", "latitude": lat, "longitude": lon,
         "capabilities": ["ship"], "cost_per_order": 500, "cost_per_km": 1}
        for name, (lat, lon) in WAREHOUSES.items()
    ]  # fmt: skip
    demo["products"].append({"sku": "WIDGET", "name": "Widget", "unit_price": 1000})
    for location in demo["locations"]:
        location["capacity_per_slot"] = 0  # thousands of orders in one slot: no capacity limit
    path.write_text(json.dumps(demo, ensure_ascii=False))
    return path


@pytest.fixture
def scarce(isolated_settings: Settings, tmp_path: Path) -> Settings:
    return isolated_settings.model_copy(
        update={"catalogue_file": write_catalogue(tmp_path / "catalogue.json")}
    )


def start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "oms.cli", "worker", "--loglevel", "info"],
            env=settings_env(settings) | {"OMS_CATALOGUE_FILE": str(settings.catalogue_file)},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


@pytest.fixture
def worker(scarce: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = start_worker(scarce, tmp_path / "worker.log")
    yield process
    stop(process)


def read_all(settings: Settings, topic: str) -> list[Any]:
    from confluent_kafka import Consumer

    probe = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "probe"})
    try:
        partitions = sorted(probe.list_topics(topic, timeout=10).topics[topic].partitions)
    finally:
        probe.close()
    bootstrap = settings.kafka_bootstrap
    return [event for p in partitions
            for event in read_partition(bootstrap, topic, p, codec=CODEC)]  # fmt: skip


def log_size(settings: Settings) -> int:
    """Events on the order log so far (the sum of its partitions' end offsets)."""
    from confluent_kafka import Consumer, TopicPartition

    probe = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "probe"})
    try:
        topic = settings.topics.orders
        partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in partitions)  # fmt: skip
    finally:
        probe.close()


def order_log(settings: Settings) -> dict[str, list[OrderEvent]]:
    by_order: dict[str, list[OrderEvent]] = defaultdict(list)
    for event in read_all(settings, settings.topics.orders):
        by_order[event.order_id].append(event)
    return by_order


def wait_until_settled(
    settings: Settings, count: int, *, timeout_s: float, worker: subprocess.Popen[bytes],
    log: Path,
) -> dict[str, list[OrderEvent]]:  # fmt: skip
    """Until every one of `count` orders has reached a resting state on the log."""
    deadline = time.monotonic() + timeout_s
    while True:
        by_order = order_log(settings)
        settled = sum(1 for events in by_order.values() if events[-1].event_type in TERMINAL)
        if settled >= count:
            return by_order
        assert worker.poll() is None, log.read_text()[-3000:]
        last = Counter(events[-1].event_type for events in by_order.values())
        assert time.monotonic() < deadline, f"{settled} of {count} orders settled: {last}"
        time.sleep(1)


def ship_order(n: int, *, run: str, quantity: int = 1) -> OrderReceived:
    """A stocked-goods order with its own customer (no fraud velocity between them)."""
    now = utc_now()
    lat, lon = random.Random(n).choice(list(WAREHOUSES.values()))
    return OrderReceived(
        event_id=deterministic_id(run, "received", str(n)), order_id=f"{run}-{n:05d}",
        sequence=1, occurred_at=now, recorded_at=now, correlation_id=f"{run}-{n}",
        actor=Actor(kind=ActorKind.CHANNEL, id="webshop"), channel="webshop",
        external_id=f"{run}-{n}", mode=OrderMode.SHIP, currency="CNY",
        lines=[OrderLine(sku="WIDGET", name="Widget", quantity=quantity, unit_price=1000)],
        total=1000 * quantity, payment_status="paid",
        customer=Customer(name=f"客户{n}", phone=f"+86139{n:08d}"),
        address=Address(text=f"{n} Test Rd", latitude=lat + 0.01, longitude=lon + 0.01),
        placed_at=now - timedelta(seconds=1),
    )  # fmt: skip


def dish_order(n: int, *, run: str) -> OrderReceived:
    """A made-to-order delivery from one of the five stores (no stock involved)."""
    order = ship_order(n, run=run)
    store = load_catalogue().locations[f"S0{n % 5 + 1}"]
    near = Address(text=f"{n} 南京东路", latitude=store.latitude + 0.005,
                   longitude=store.longitude)  # fmt: skip
    return order.model_copy(update={
        "mode": OrderMode.DELIVERY, "location_hint": store.id, "delivery_fee": 500,
        "lines": [OrderLine(sku="NOODLE-BEEF", name="红烧牛肉面", quantity=1, unit_price=3250)],
        "total": 3750, "address": near,
    })  # fmt: skip


def receive_stock(settings: Settings, units: dict[str, int]) -> None:
    for location, quantity in units.items():
        operations.send(
            settings, operations.stock_receive("WIDGET", location, quantity=quantity, actor="test")
        )
    deadline = time.monotonic() + 60
    while sum(1 for e in read_all(settings, settings.topics.inventory)
              if e.event_type == "StockReceived") < len(units):  # fmt: skip
        assert time.monotonic() < deadline, "the inventory agent did not take the stock in"
        time.sleep(0.3)
    time.sleep(1.0)  # the worker's stock view reads the ledger too


def check_ledger(settings: Settings) -> dict[str, inventory.StockLevel]:
    """Fold every key's ledger, checking the stock invariants after each event."""
    levels: dict[str, inventory.StockLevel] = {}
    reserved_ids: Counter[str] = Counter()
    for event in read_all(settings, settings.topics.inventory):
        assert isinstance(event, StockEvent)
        key = stock_key(event.sku, event.location)
        level = levels.get(key) or inventory.empty(event.sku, event.location)
        assert event.sequence == level.sequence + 1, f"{key}: ledger out of sequence"
        level = inventory.apply(level, event)
        assert level.available_to_promise >= 0, f"{key}: ATP went negative"
        assert level.reserved <= level.on_hand - level.safety_stock, key
        assert level.on_hand == level.received - level.committed + level.adjusted, key
        if event.event_type == "StockReserved":
            reserved_ids[event.reservation_id] += 1  # type: ignore[attr-defined]
        levels[key] = level
    assert not [rid for rid, n in reserved_ids.items() if n > 1], "a unit reserved twice"
    return levels


def check_orders(by_order: dict[str, list[OrderEvent]]) -> None:
    for order_id, events in by_order.items():
        ids = [e.event_id for e in events]
        assert len(ids) == len(set(ids)), f"{order_id}: an event written twice"
        assert [e.sequence for e in events] == list(range(1, len(events) + 1)), order_id
        assert events[0].event_type == "OrderReceived", order_id


def test_200_orders_for_50_units_over_3_locations_reserve_exactly_50(
    scarce: Settings, worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    receive_stock(scarce, {"WH-A": 20, "WH-B": 20, "WH-C": 10})
    publisher = Publisher(scarce)
    for n in range(200):
        publisher.intake(ship_order(n, run="scarce"))
    publisher.flush()

    by_order = wait_until_settled(scarce, 200, timeout_s=120, worker=worker,
                                  log=tmp_path / "worker.log")  # fmt: skip
    check_orders(by_order)
    outcomes = Counter(events[-1].event_type for events in by_order.values())
    assert outcomes == {"OrderPrioritised": 50, "OrderRejected": 150}
    for events in by_order.values():
        last = events[-1]
        if last.event_type == "OrderRejected":
            assert last.reasons[0].code == "OUT_OF_STOCK"  # type: ignore[attr-defined]
            assert last.reasons[0].message
        else:
            assert any(e.event_type == "OrderReserved" for e in events)
    levels = check_ledger(scarce)
    assert {key: level.reserved for key, level in levels.items()} == {
        "WIDGET@WH-A": 20, "WIDGET@WH-B": 20, "WIDGET@WH-C": 10}  # fmt: skip
    assert all(level.available_to_promise == 0 for level in levels.values())


def test_worker_killed_mid_run_loses_no_order_and_reserves_no_unit_twice(
    scarce: Settings, tmp_path: Path
) -> None:
    orders = 5000
    log = tmp_path / "worker.log"
    worker = start_worker(scarce, log)
    try:
        receive_stock(scarce, {"WH-A": 1000, "WH-B": 1000, "WH-C": 600})  # 2,500 wanted
        publisher = Publisher(scarce)

        def publish() -> None:
            for n in range(orders):
                publisher.intake(ship_order(n, run="kill") if n % 2 else dish_order(n, run="kill"))
            publisher.flush()

        # The orders go out while the worker runs and is watched: a worker faster than the
        # publisher would otherwise be done before the first look.
        sending = threading.Thread(target=publish)
        sending.start()
        deadline = time.monotonic() + 120
        expected = 4 * orders + orders // 2  # ship orders also get OrderReserved
        while log_size(scarce) < expected // 3:
            assert time.monotonic() < deadline, "the worker made no progress"
            assert worker.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        assert log_size(scarce) < expected, "the worker finished before it could be killed"
        sending.join()

        worker = start_worker(scarce, log)
        by_order = wait_until_settled(scarce, orders, timeout_s=300, worker=worker, log=log)
    finally:
        stop(worker)

    assert len(by_order) == orders, "an order is missing from the order log"
    check_orders(by_order)
    levels = check_ledger(scarce)
    # What the ledger holds is exactly what the orders say they hold.
    held: Counter[str] = Counter()
    for events in by_order.values():
        if events[-1].event_type == "OrderPrioritised":
            reserved = [e for e in events if e.event_type == "OrderReserved"]
            for line in getattr(reserved[-1], "lines", []) if reserved else []:
                held[stock_key(line.sku, line.location)] += line.quantity
    assert {k: v.reserved for k, v in levels.items() if v.reserved} == dict(held)
    outcomes = Counter(
        getattr(events[-1], "reasons", [None])[0] or events[-1].event_type
        for events in by_order.values()
    )
    assert outcomes == {"OrderPrioritised": orders}
    assert sum(held.values()) == orders // 2


def test_a_backlog_drains_with_intake_held_back_and_nothing_oversold(
    scarce: Settings, tmp_path: Path
) -> None:
    """A peak (or a restart) finds thousands of orders waiting on intake. With a tight
    OMS_ORDERS_IN_FLIGHT the worker holds intake back while the ledger answers (on the real
    broker, through Faust's pause), and the backlog still drains: every order settles, none
    twice, the ledger holds exactly what the orders hold."""
    settings = scarce.model_copy(update={"orders_in_flight": 12})
    orders = 1500
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    try:
        receive_stock(settings, {"WH-A": 400, "WH-B": 400, "WH-C": 200})  # 1,000 of 1,500
        publisher = Publisher(settings)
        for n in range(orders):  # in well under a second: the worker takes ~10 s
            publisher.intake(ship_order(n, run="backlog"))
        publisher.flush()
        by_order = wait_until_settled(settings, orders, timeout_s=180, worker=worker, log=log)
    finally:
        stop(worker)
    assert "intake held back on partitions" in log.read_text()  # the door did close
    assert len(by_order) == orders
    check_orders(by_order)
    outcomes = Counter(events[-1].event_type for events in by_order.values())
    assert outcomes == {"OrderPrioritised": 1000, "OrderRejected": 500}
    levels = check_ledger(settings)
    assert {key: level.reserved for key, level in levels.items()} == {
        "WIDGET@WH-A": 400, "WIDGET@WH-B": 400, "WIDGET@WH-C": 200}  # fmt: skip
