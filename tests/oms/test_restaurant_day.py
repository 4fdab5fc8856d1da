"""A restaurant day on the real broker (issue 12 item 9): a thousand orders from four channels
(Meituan, Ele.me, the WeChat mini-program, the phone) at five stores, dine-in, pickup and
delivery, some with stocked goods, are taken through simulated kitchens with random
preparation times (oms/kitchen.py) while the platforms are told through the outbox (`oms
outbox run`, against the local fake platforms that check signatures). Mid-day the worker and
the outbox sender are each killed with SIGKILL and started again. Afterwards every order has
ended completed; each store step is on its log once, in sequence; every reservation is
committed by its hand-off, none left held; and each platform was told of each of its orders'
transitions (confirmed, ready) once, none missing, and nothing of the other channels'."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from connectors.simulator import DISHES, NAMES
from events.codec import AvroCodec
from events.models import Address, Customer, OrderLine, OrderMode, utc_now
from infra.kafka import consumer_config
from infra.publisher import Publisher
from infra.settings import Settings
from oms import operations
from oms.kitchen import KitchenSimulator
from streams.reference import load_catalogue
from tests.conftest import settings_env
from tests.connectors.fake_platforms import FakePlatforms, fake_platforms, platform_env
from tests.factories import received

pytestmark = pytest.mark.integration

ORDERS = 1000
STORES = ["S01", "S02", "S03", "S04", "S05"]
STEPS = ("OrderAcceptedByStore", "OrderPreparing", "OrderReady", "OrderPickedUp",
         "OrderCompleted")  # fmt: skip


def read_all(settings: Settings, topic: str, at_least: int) -> list[bytes]:
    """Every message on `topic`: at least `at_least`, then until a second passes with none."""
    consumer = Consumer(consumer_config(settings.kafka_bootstrap, group_id=f"r-{uuid.uuid4()}",
                                        **{"auto.offset.reset": "earliest"}))  # fmt: skip
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline, quiet = time.monotonic() + 60, 0
    try:
        while time.monotonic() < deadline and (len(values) < at_least or quiet < 2):
            batch = [m for m in consumer.consume(1000, timeout=0.5) if m.error() is None]
            values += [m.value() for m in batch]
            quiet = 0 if batch else quiet + 1
    finally:
        consumer.close()
    assert len(values) >= at_least, f"{len(values)} of at least {at_least} on {topic}"
    return values


def with_platform_shops(settings: Settings, tmp_path: Path) -> Settings:
    """The demo catalogue with each store listed on Meituan (its own code) and on Ele.me (a
    shop id), so the outbox tells both platforms of a dish that sells out."""
    catalogue = load_catalogue()
    document = {
        "products": [p.model_dump(mode="json") for p in catalogue.products.values()],
        "locations": [
            place.model_dump(mode="json")
            | {"aliases": [*place.aliases, f"meituan:{place.id}", f"eleme:9{n:04d}"]}
            for n, place in enumerate(catalogue.locations.values())
        ],
    }
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps(document, ensure_ascii=False))
    return settings.model_copy(update={"catalogue_file": path})


def start(settings: Settings, command: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    environment = settings_env(settings) | {"OMS_CATALOGUE_FILE": str(settings.catalogue_file)}
    with log.open("ab") as output:
        return subprocess.Popen([sys.executable, "-m", "oms.cli", *command.split()],
                                env=environment | env, stdout=output,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def kill_and_restart(running: list[subprocess.Popen[bytes]], again: Any) -> None:
    """SIGKILL the newest process of the list (no word, no flush) and start another."""
    os.killpg(running[-1].pid, signal.SIGKILL)
    assert running[-1].wait() == -signal.SIGKILL
    time.sleep(1)
    running.append(again())


@pytest.fixture
def platforms() -> Iterator[FakePlatforms]:
    with fake_platforms() as fake:
        yield fake


@pytest.fixture
def shops(isolated_settings: Settings, tmp_path: Path) -> Settings:
    return with_platform_shops(isolated_settings, tmp_path)


@pytest.fixture
def processes(
    shops: Settings, platforms: FakePlatforms, tmp_path: Path
) -> Iterator[dict[str, list[subprocess.Popen[bytes]]]]:
    running = {
        "worker": [start(shops, "worker", tmp_path / "worker.log")],
        "outbox": [start(shops, "outbox run", tmp_path / "outbox.log", **platform_env(platforms))],
    }
    yield running
    for process in (p for group in running.values() for p in group):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


def day(rng: random.Random) -> list[Any]:
    """The day's orders: made-to-order dishes, and at S01 now and then a stocked mug."""
    places = load_catalogue().locations
    orders = []
    for n in range(ORDERS):
        store = rng.choice(STORES)
        mode = rng.choice([OrderMode.DINE_IN, OrderMode.PICKUP, OrderMode.DELIVERY])
        dishes = rng.sample(DISHES, rng.randint(1, 3))
        lines = [OrderLine(sku=sku, name=name, quantity=rng.randint(1, 2), unit_price=price)
                 for sku, name, price in dishes]  # fmt: skip
        if store == "S01" and mode is OrderMode.PICKUP and rng.random() < 0.5:
            lines.append(OrderLine(sku="MUG-CERAMIC", name="手绘陶瓷杯", quantity=1,
                                   unit_price=6800))  # fmt: skip
        fee = 500 if mode is OrderMode.DELIVERY else 0
        place = places[store]
        near = Address(text=f"{rng.choice(['南京东路', '淮海中路'])} {n}号",
                       latitude=place.latitude + rng.uniform(-0.01, 0.01),
                       longitude=place.longitude + rng.uniform(-0.01, 0.01))  # fmt: skip
        orders.append(received(
            event_id=f"e-day-{n}", order_id=f"o-day-{n}", external_id=f"day-{n}",
            channel=rng.choice(["meituan", "eleme", "wechat", "phone"]), mode=mode,
            location_hint=store, lines=lines, delivery_fee=fee,
            total=sum(line.amount for line in lines) + fee,
            address=near if mode is OrderMode.DELIVERY else None, placed_at=utc_now(),
            customer=Customer(name=rng.choice(NAMES), phone=f"+86139{n:08d}"),
        ))  # fmt: skip
    return orders


def test_a_restaurant_day_drains_and_tells_the_platforms_across_killed_processes(
    shops: Settings,
    platforms: FakePlatforms,
    processes: dict[str, list[subprocess.Popen[bytes]]],
    tmp_path: Path,
) -> None:
    settings = shops
    rng = random.Random(12)
    orders = day(rng)
    mugs = sum(1 for o in orders for line in o.lines if line.sku == "MUG-CERAMIC")
    operations.send(settings, operations.stock_receive("MUG-CERAMIC", "S01", quantity=mugs,
                                                       actor="test"))  # fmt: skip
    # The mugs are in the ledger before the first order comes (else it is rightly out of stock:
    # the receipt and the orders are on different topics, taken by different agents).
    read_all(settings, settings.topics.inventory, 1)
    kitchens = KitchenSimulator(settings, seed=3, retry_s=3.0)
    ended = ("completed", "cancelled", "rejected")

    def drained(simulator: KitchenSimulator) -> bool:
        states = [simulator.tickets.get(o.order_id) for o in orders]
        return all(t is not None and t.status in ended for t in states)

    failure: list[BaseException] = []

    def play() -> None:
        try:
            kitchens.run(until=drained, timeout_s=600)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failure.append(exc)

    player = threading.Thread(target=play)
    player.start()
    publisher = Publisher(settings)
    worker_log = tmp_path / "worker.log"
    for n, order in enumerate(orders):
        publisher.intake(order)
        if n % 10 == 9:
            publisher.flush()
            time.sleep(0.1)
        if n == ORDERS // 2:  # mid-day: the worker dies without a word, and comes back
            kill_and_restart(processes["worker"], lambda: start(settings, "worker", worker_log))
        if n == 2 * ORDERS // 3:  # and so does the outbox sender, calls in flight
            assert len(platforms.calls) > 0, (tmp_path / "outbox.log").read_text()[-3000:]
            kill_and_restart(processes["outbox"],
                             lambda: start(settings, "outbox run", tmp_path / "outbox.log",
                                           **platform_env(platforms)))  # fmt: skip
    publisher.flush()
    player.join()
    assert not failure, f"{failure[0]}\n{worker_log.read_text()[-3000:]}"

    codec = AvroCodec()
    log = [codec.decode(v) for v in read_all(settings, settings.topics.orders, ORDERS * 9)]
    by_order: dict[str, list[Any]] = defaultdict(list)
    for event in log:
        by_order[event.order_id].append(event)
    ends = Counter(kitchens.tickets[o.order_id].status for o in orders)
    assert ends == {"completed": ORDERS}, ends
    for order in orders:
        events = by_order[order.order_id]
        assert [e.sequence for e in events] == list(range(1, len(events) + 1)), order.order_id
        kinds = Counter(e.event_type for e in events)
        assert all(kinds[step] == 1 for step in STEPS), (order.order_id, kinds)
        delivered = 1 if order.mode is OrderMode.DELIVERY else 0
        assert kinds["OrderDelivered"] == delivered, (order.order_id, kinds)
        assert [e.event_type for e in events][-1] == "OrderCompleted"

    ledger = [codec.decode(v) for v in read_all(settings, settings.topics.inventory, 1)]
    held: Counter[str] = Counter()
    for event in ledger:
        if event.event_type == "StockReserved":
            held[event.reservation_id] += event.quantity
        elif event.event_type in ("StockReleased", "StockCommitted"):
            held[event.reservation_id] -= event.quantity
    committed = [e for e in ledger if e.event_type == "StockCommitted"]
    assert sum(e.quantity for e in committed) == mugs > 0
    assert {rid: n for rid, n in held.items() if n} == {}  # nothing left reserved

    # The platforms: each Meituan and Ele.me order confirmed and reported ready, once each.
    ours = {o.external_id: o.channel for o in orders if o.channel in ("meituan", "eleme")}
    wanted = Counter({(channel, what, external_id): 1 for external_id, channel in ours.items()
                      for what in ("confirm", "ready")})  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not told_enough(platforms, wanted):
        time.sleep(0.5)
    told = order_calls(platforms)
    assert set(told) == set(wanted), (set(wanted) - set(told), set(told) - set(wanted))
    # Meituan publishes no query of 出餐: the one call in flight at the kill may be made again
    # (docs/connectors.md); every other call was made exactly once.
    twice = {call: n for call, n in told.items() if n > 1}
    assert len(twice) <= 1, twice
    assert all(call[:2] == ("meituan", "ready") and n == 2 for call, n in twice.items()), twice
    assert platforms.rejected == []


ACTIONS = {
    "order/confirm": "confirm", "eleme.order.confirmOrderLite": "confirm",
    "order/preparationMealComplete": "ready", "eleme.order.setOrderPrepared": "ready",
}  # fmt: skip


def order_calls(platforms: FakePlatforms) -> Counter[tuple[str, str, str]]:
    """The calls about orders the fake platforms took, by platform, kind and order."""
    return Counter(
        (call.platform, ACTIONS.get(call.action, call.action), call.target)
        for call in list(platforms.calls)
        if call.action in ACTIONS or "order" in call.action
    )


def told_enough(platforms: FakePlatforms, wanted: Counter[tuple[str, str, str]]) -> bool:
    return set(order_calls(platforms)) >= set(wanted)
