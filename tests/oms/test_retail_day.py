"""A retail day on the real broker (issue 13 item 8): web-shop, Tmall and JD orders to ship, to
addresses around Shanghai and Beijing, go through the real worker (validation, routing to the
nearer warehouse, reservation), warehouse packers (oms/kitchen.py, up to ready), a shipping
wave at each warehouse (rate shopping across the local fakes of SF Express and JD Logistics,
labels, the PDF) and the tracker (carriers polled) to delivered. Afterwards: every order
delivered, each shipped once from its warehouse; the stock ledger exact (every reservation
committed by its shipment, none left held; what left each warehouse is what its orders
bought); 5 % of the orders come back, are restocked at their warehouse and refunded, and the
ledger and ClickHouse say so exactly."""

from __future__ import annotations

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
from pydantic import SecretStr

from connectors.carriers.base import Carrier
from connectors.carriers.jd_logistics import JdLogistics
from connectors.carriers.sf_express import SfExpress
from events.codec import AvroCodec
from events.models import (
    Actor,
    ActorKind,
    Address,
    Customer,
    Event,
    InspectedLine,
    OrderLine,
    OrderMode,
    ReturnLine,
    utc_now,
)
from events.shipping import Party
from infra.kafka import consumer_config
from infra.publisher import Publisher
from infra.settings import Settings
from oms import operations, returns
from oms.kitchen import KitchenSimulator
from oms.shipping import ShippingConfig, run_wave
from oms.tracking import Tracker
from projections.projector import Projector
from projections.schema import migrate
from projections.store import ClickHouseStore
from tests.conftest import settings_env
from tests.connectors.carriers.fake_jdl import (
    ACCESS_TOKEN,
    APP_KEY,
    APP_SECRET,
    CUSTOMER_CODE,
    FakeJdl,
    fake_jdl,
)
from tests.connectors.carriers.fake_sf import CHECK_WORD, MONTHLY_CARD, PARTNER_ID, FakeSf, fake_sf
from tests.factories import received

pytestmark = pytest.mark.integration

ORDERS = 120
RETURNED = ORDERS // 20  # 5 %
WAREHOUSES = {"WH-SH": (31.23, 121.47, "上海市"), "WH-BJ": (39.90, 116.40, "北京市")}
GOODS = [
    ("TEA-LONGJING-250", "龙井茶 250g", 8800),
    ("MUG-CERAMIC", "手绘陶瓷杯", 6800),
    ("KETTLE-IRON", "铸铁壶", 39900),
    ("CUP-SET-6", "茶杯六件套", 12800),
]
STOCK = 400  # of each good at each warehouse
PACKER = Actor(kind=ActorKind.USER, id="wave-runner")
ORIGINS = {
    "WH-SH": Party(
        name="上海仓",
        phone="02100000000",
        province="上海市",
        city="上海市",
        district="嘉定区",
        street="仓储路 1 号",
    ),
    "WH-BJ": Party(
        name="北京仓",
        phone="01000000000",
        province="北京市",
        city="北京市",
        district="大兴区",
        street="物流园 8 号",
    ),
}


def read_all(settings: Settings, topic: str) -> list[Event]:
    """Every event on `topic` now (until a second passes with nothing new)."""
    codec = AvroCodec()
    consumer = Consumer(
        consumer_config(
            settings.kafka_bootstrap,
            group_id=f"r-{uuid.uuid4()}",
            **{"auto.offset.reset": "earliest"},
        )
    )
    consumer.subscribe([topic])
    found: list[Event] = []
    quiet = 0
    try:
        while quiet < 3:
            batch = [m for m in consumer.consume(1000, timeout=0.5) if m.error() is None]
            found += [codec.decode(m.value() or b"") for m in batch]  # type: ignore[misc]
            quiet = 0 if batch else quiet + 1
    finally:
        consumer.close()
    return found


def by_order(events: list[Event]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = defaultdict(list)
    for event in events:
        order_id = getattr(event, "order_id", None)
        if order_id:
            grouped[order_id].append(event)
    return grouped


def day(rng: random.Random) -> list[Any]:
    orders = []
    for n in range(ORDERS):
        lat, lon, city = WAREHOUSES[rng.choice(list(WAREHOUSES))]
        goods = rng.sample(GOODS, rng.randint(1, 2))
        lines = [
            OrderLine(sku=sku, name=name, quantity=rng.randint(1, 2), unit_price=price)
            for sku, name, price in goods
        ]
        orders.append(
            received(
                event_id=f"e-retail-{n}",
                order_id=f"o-retail-{n}",
                external_id=f"R{n:05d}",
                channel=rng.choice(["webshop", "tmall", "jd"]),
                mode=OrderMode.SHIP,
                lines=lines,
                delivery_fee=0,
                total=sum(line.amount for line in lines),
                placed_at=utc_now(),
                customer=Customer(name=f"顾客{n}", phone=f"+86137{n:08d}"),
                address=Address(
                    text=f"人民路 {n} 号",
                    city=city,
                    province=city,
                    country="CN",
                    postal_code="200000",
                    latitude=lat + rng.uniform(-0.05, 0.05),
                    longitude=lon + rng.uniform(-0.05, 0.05),
                ),
            )
        )
    return orders


@pytest.fixture
def carriers() -> Iterator[tuple[FakeSf, FakeJdl, dict[str, Carrier]]]:
    with fake_sf() as sf, fake_jdl() as jd:
        clients: dict[str, Carrier] = {
            "sf": SfExpress(
                partner_id=PARTNER_ID,
                check_word=SecretStr(CHECK_WORD),
                monthly_card=MONTHLY_CARD,
                api_url=sf.url,
            ),
            "jdl": JdLogistics(
                app_key=APP_KEY,
                app_secret=SecretStr(APP_SECRET),
                access_token=SecretStr(ACCESS_TOKEN),
                customer_code=CUSTOMER_CODE,
                api_url=jd.url,
            ),
        }
        yield sf, jd, clients


@pytest.fixture
def worker(isolated_settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with (tmp_path / "worker.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "oms.cli", "worker"],
            env=settings_env(isolated_settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    yield process
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def returned_ids(settings: Settings, kind: str) -> set[str]:
    """The return ids of `kind` events on the order log."""
    return {
        e.return_id  # type: ignore[attr-defined]
        for e in read_all(settings, settings.topics.orders)
        if e.event_type == kind
    }


def wait_for(condition: Any, *, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(1)


def test_a_retail_day_ships_every_order_once_and_the_ledger_and_clickhouse_are_exact(
    isolated_settings: Settings,
    store: ClickHouseStore,
    carriers: tuple[FakeSf, FakeJdl, dict[str, Carrier]],
    worker: subprocess.Popen[bytes],
    tmp_path: Path,
) -> None:
    settings = isolated_settings
    sf, _, clients = carriers
    for warehouse in WAREHOUSES:
        for sku, _, _ in GOODS:
            operations.send(
                settings, operations.stock_receive(sku, warehouse, quantity=STOCK, actor="test")
            )
    # The stock is in the ledger before the first order comes (else it is rightly out of stock).
    receipts = len(WAREHOUSES) * len(GOODS)
    wait_for(lambda: len(read_all(settings, settings.topics.inventory)) >= receipts,
             seconds=60, what="stock received")  # fmt: skip
    orders = day(random.Random(13))
    publisher = Publisher(settings)
    for order in orders:
        publisher.intake(order)
    publisher.flush(30)

    # The packers take every order to ready at its warehouse.
    packers = KitchenSimulator(
        settings, seed=5, retry_s=3.0, stores=frozenset(), warehouses=frozenset(WAREHOUSES)
    )
    packers.run(
        until=lambda s: sum(t.status == "ready" for t in s.tickets.values()) >= ORDERS,
        timeout_s=300,
    )

    # A wave at each warehouse buys every label.
    config = ShippingConfig(origins=ORIGINS, tracking_url="https://shop.example/t/{token}")
    shipped_from: dict[str, str] = {}
    for warehouse in WAREHOUSES:
        report = run_wave(
            settings,
            warehouse,
            carriers=clients,
            config=config,
            by=PACKER,
            out_dir=tmp_path / "waves",
        )
        assert report.skipped == {} and report.carriers_failed == {}
        for shipped in report.shipped:
            shipped_from[shipped.order.placed.order_id] = warehouse
    assert len(shipped_from) == ORDERS

    def logged(kind: str) -> Counter[str]:
        return Counter(
            e.order_id for e in read_all(settings, settings.topics.orders) if e.event_type == kind
        )

    wait_for(lambda: len(logged("ShipmentCreated")) == ORDERS, seconds=120, what="shipped")
    # The carriers deliver: SF's last scan; JD's fake traces end delivered already.
    for record in list(sf.orders.values()):
        sf.add_route(str(record["waybill"]), "80", "已签收", at=utc_now())
    tracker = Tracker(settings, carriers=clients, poll_every_s=3600)
    stop = threading.Event()
    follower = threading.Thread(target=tracker.run, kwargs={"until": lambda _: stop.is_set()})
    follower.start()
    try:
        wait_for(lambda: len(logged("OrderDelivered")) == ORDERS, seconds=180, what="delivered")
    finally:
        stop.set()
        follower.join(60)

    log = by_order(read_all(settings, settings.topics.orders))
    for order in orders:
        events = log[order.order_id]
        kinds = Counter(e.event_type for e in events)
        assert kinds["ShipmentCreated"] == 1 and kinds["OrderDelivered"] == 1, kinds
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        [created] = [e for e in events if e.event_type == "ShipmentCreated"]
        assert created.location == shipped_from[order.order_id]
        assert created.alternatives  # it beat the other carrier's quotes
        assert events[-1].event_type == "OrderDelivered"

    # 5 % come back: requested, approved to their warehouse, received resellable and
    # restocked there, refunded.
    rules = returns.rules_of(settings)
    came_back = orders[:: ORDERS // RETURNED][:RETURNED]
    view = returns.read_view(settings)
    asked = {
        order.order_id: returns.request_return(
            view,
            order.order_id,
            reason="changed mind",
            by="desk",
            now=utc_now(),
            rules=rules,
            lines=[ReturnLine(sku=line.sku, quantity=line.quantity) for line in order.lines],
        )
        for order in came_back
    }
    ids = {request.return_id for request in asked.values()}
    returns.send_all(settings, list(asked.values()))
    wait_for(
        lambda: ids <= returned_ids(settings, "ReturnRequested"),
        seconds=60,
        what="returns requested",
    )
    view = returns.read_view(settings)
    returns.send_all(
        settings,
        [
            returns.approve(view, order_id, request.return_id, to=shipped_from[order_id], by="desk")
            for order_id, request in asked.items()
        ],
    )
    wait_for(
        lambda: ids <= returned_ids(settings, "ReturnApproved"), seconds=60, what="returns approved"
    )
    view = returns.read_view(settings)
    for order in came_back:
        inspected = [
            InspectedLine(
                sku=line.sku,
                quantity=line.quantity,
                condition="resellable",
                restock_location=shipped_from[order.order_id],
            )
            for line in order.lines
        ]
        returns.send_all(
            settings,
            returns.receive(
                view,
                order.order_id,
                asked[order.order_id].return_id,
                by="packer",
                inspected=inspected,
            ),
        )
    wait_for(
        lambda: ids <= returned_ids(settings, "ReturnInspected"),
        seconds=60,
        what="returns inspected",
    )
    view = returns.read_view(settings)
    returns.send_all(
        settings,
        [
            returns.refund_of(view, order_id, request.return_id, by="desk", rules=rules)
            for order_id, request in asked.items()
        ],
    )
    wait_for(lambda: len(logged("OrderRefunded")) == RETURNED, seconds=120, what="refunded")
    refunds = {
        e.order_id: e.amount  # type: ignore[attr-defined]
        for e in read_all(settings, settings.topics.orders)
        if e.event_type == "OrderRefunded"
    }
    assert refunds == {o.order_id: o.total for o in came_back}  # all lines, no fee by default

    # The ledger: every reservation ended committed; what left each warehouse is exact.
    ledger = read_all(settings, settings.topics.inventory)
    held: Counter[str] = Counter()
    left: Counter[tuple[str, str]] = Counter()
    for event in ledger:
        if event.event_type == "StockReserved":
            held[event.reservation_id] += event.quantity  # type: ignore[attr-defined]
        elif event.event_type in ("StockReleased", "StockCommitted"):
            held[event.reservation_id] -= event.quantity  # type: ignore[attr-defined]
        if event.event_type == "StockCommitted":
            left[(event.sku, event.location)] += event.quantity  # type: ignore[attr-defined]
    assert {rid: n for rid, n in held.items() if n} == {}
    bought: Counter[tuple[str, str]] = Counter()
    for order in orders:
        for line in order.lines:
            bought[(line.sku, shipped_from[order.order_id])] += line.quantity
    assert left == bought
    back: Counter[tuple[str, str]] = Counter()
    for order in came_back:
        for line in order.lines:
            back[(line.sku, shipped_from[order.order_id])] += line.quantity
    restocked: Counter[tuple[str, str]] = Counter()
    for event in ledger:
        if event.event_type == "StockReceived" and "return:" in (
            getattr(event, "reference", None) or getattr(event, "reason", None) or ""
        ):
            restocked[(event.sku, event.location)] += event.quantity  # type: ignore[attr-defined]
    assert restocked == back and sum(back.values()) > 0

    # ClickHouse, as the projector leaves it, says the same.
    migrate(store)
    projector = Projector(settings=settings, store=store, batch_seconds=0.2, lease=False)
    projector.run(until=lambda _: projector.lag() == 0)
    db = store.database
    statuses = dict(store.query(f"SELECT status, count() FROM {db}.orders FINAL GROUP BY status"))
    assert statuses == {"delivered": ORDERS - RETURNED, "refunded": RETURNED}
    [(shipments,)] = store.query(
        f"SELECT count() FROM {db}.order_events FINAL WHERE event_type = 'ShipmentCreated'"
    )
    assert shipments == ORDERS
    levels = {
        (sku, location): (on_hand, reserved)
        for sku, location, on_hand, reserved in store.query(
            f"SELECT sku, location, on_hand, reserved FROM {db}.stock_levels FINAL"
        )
    }
    assert levels == {
        (sku, warehouse): (STOCK - bought[(sku, warehouse)] + back[(sku, warehouse)], 0)
        for warehouse in WAREHOUSES
        for sku, _, _ in GOODS
    }
