"""Returns on the real broker with the real worker (`oms worker`: the order agent and the
stock agent): an order delivered, a return requested, approved, received and inspected (the
mugs resellable, restocked at a warehouse; the kettle damaged, written off), refunded in part.
The order log moves through the return statuses, the ledger takes the mugs back at the
warehouse and not the kettle, and the refund is what the returned lines were paid. A step the
return does not allow is refused naming the field, before anything is sent."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from events.codec import AvroCodec
from events.lifecycle import next_status
from events.models import (
    InspectedLine,
    OrderLine,
    OrderMode,
    OrderRefunded,
    ReturnLine,
    utc_now,
)
from infra.publisher import Publisher
from infra.settings import Settings
from oms import operations, returns
from oms.operations import CommandRejected
from streams.returns import ReturnRules
from tests.conftest import read_topic, settings_env
from tests.factories import received
from tests.streams.test_invariants import read_all

pytestmark = pytest.mark.integration
CODEC = AvroCodec()
RULES = ReturnRules(window_days=30, restocking_fee_bps=0)


@pytest.fixture
def worker(isolated_settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with (tmp_path / "worker.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "oms.cli", "worker"],
            env=settings_env(isolated_settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    yield process
    process.terminate()
    process.wait(timeout=60)


def history(settings: Settings, order_id: str, *, until: str, timeout_s: float = 60) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = read_topic(settings, settings.topics.orders, expect=1, timeout_s=timeout_s)
        events = [CODEC.decode(m.value()) for m in found]
        mine = sorted(
            (e for e in events if getattr(e, "order_id", None) == order_id),
            key=lambda e: e.sequence,
        )
        if mine and mine[-1].event_type == until:
            return mine
        assert time.monotonic() < deadline, [e.event_type for e in mine]
        time.sleep(0.5)


def ledger(settings: Settings) -> list[Any]:
    """The whole stock ledger, every partition to its end (not the first fetch's worth)."""
    return read_all(settings, settings.topics.inventory)


def test_a_delivered_order_is_returned_restocked_in_part_written_off_in_part_and_refunded(
    isolated_settings: Settings, worker: subprocess.Popen[bytes]
) -> None:
    settings = isolated_settings
    for sku in ("MUG-CERAMIC", "KETTLE-IRON"):
        operations.send(settings, operations.stock_receive(sku, "S01", quantity=5, actor="test"))
    read_topic(settings, settings.topics.inventory, expect=2, timeout_s=60)
    mugs = OrderLine(
        sku="MUG-CERAMIC",
        name="陶瓷杯",
        quantity=3,
        unit_price=6800,
        gross=20400,
        discount=1500,
        total=18900,
    )
    kettle = OrderLine(sku="KETTLE-IRON", name="铁壶", quantity=1, unit_price=39800)
    order = received(
        event_id="e-ret",
        order_id="o-ret",
        external_id="ret-1",
        mode=OrderMode.PICKUP,
        location_hint="S01",
        address=None,
        delivery_fee=0,
        discount=1500,
        total=18900 + 39800,
        lines=[mugs, kettle],
    )
    publisher = Publisher(settings)
    publisher.intake(order)
    publisher.flush()
    history(settings, "o-ret", until="OrderPrioritised")
    for action, extra in (
        ("accept", {"ready_in_minutes": 10}),
        ("start", {}),
        ("ready", {}),
        ("handoff", {"to": "customer"}),
        ("deliver", {}),
    ):
        operations.send(
            settings, operations.store_action(action, "o-ret", "S01", by="clerk", **extra)
        )
    history(settings, "o-ret", until="OrderDelivered")

    view = returns.read_view(settings)
    with pytest.raises(CommandRejected) as too_many:
        too_many_mugs = [ReturnLine(sku="MUG-CERAMIC", quantity=4)]
        returns.request_return(
            view,
            "o-ret",
            lines=too_many_mugs,
            reason="changed mind",
            by="desk",
            now=utc_now(),
            rules=RULES,
        )
    assert too_many.value.field == "lines"
    asked = returns.request_return(
        view,
        "o-ret",
        reason="changed mind",
        by="desk",
        now=utc_now(),
        rules=RULES,
        lines=[
            ReturnLine(sku="MUG-CERAMIC", quantity=2),
            ReturnLine(sku="KETTLE-IRON", quantity=1),
        ],
    )
    returns.send_all(settings, [asked])
    history(settings, "o-ret", until="ReturnRequested")
    return_id = asked.return_id

    view = returns.read_view(settings)
    with pytest.raises(CommandRejected) as early:
        returns.receive(view, "o-ret", return_id, by="wh", inspected=[])
    assert early.value.field == "return_id"
    returns.send_all(settings, [returns.approve(view, "o-ret", return_id, to="WH-SH", by="desk")])
    history(settings, "o-ret", until="ReturnApproved")

    inspected = [
        InspectedLine(
            sku="MUG-CERAMIC", quantity=2, condition="resellable", restock_location="WH-SH"
        ),
        InspectedLine(sku="KETTLE-IRON", quantity=1, condition="damaged", note="cracked lid"),
    ]
    view = returns.read_view(settings)
    returns.send_all(
        settings, returns.receive(view, "o-ret", return_id, by="wh", inspected=inspected)
    )
    history(settings, "o-ret", until="ReturnInspected")

    view = returns.read_view(settings)
    refund = returns.refund_of(
        view, "o-ret", return_id, by="desk", rules=RULES, restocking_fee=1000
    )
    returns.send_all(settings, [refund])
    logged = history(settings, "o-ret", until="OrderRefunded")

    status = None
    statuses = []
    for event in logged:
        status = next_status(status, type(event))
        statuses.append(status.value)
    assert statuses[-6:] == [
        "delivered",
        "return_requested",
        "return_requested",
        "returned",
        "returned",
        "refunded",
    ]
    refunded = logged[-1]
    assert isinstance(refunded, OrderRefunded)
    # 2 of 3 mugs paid 18900 → 12600; the kettle 39800; not all came back: no shipping.
    assert [(x.sku, x.quantity, x.amount) for x in refunded.lines] == [
        ("KETTLE-IRON", 1, 39800),
        ("MUG-CERAMIC", 2, 12600),
    ]
    assert (refunded.amount, refunded.restocking_fee, refunded.return_id) == (
        12600 + 39800 - 1000,
        1000,
        return_id,
    )

    deadline = time.monotonic() + 60
    while True:
        back = [
            e
            for e in ledger(settings)
            if e.event_type == "StockReceived" and e.reference == f"return:{return_id}"
        ]
        if back:
            break
        assert time.monotonic() < deadline, "the resellable mugs never came back into stock"
        time.sleep(0.5)
    time.sleep(2)  # anything else the inspection led to has reached the ledger by now
    returned = [
        e for e in ledger(settings) if getattr(e, "reference", None) == f"return:{return_id}"
    ]
    assert [(e.sku, e.location, e.quantity) for e in returned] == [("MUG-CERAMIC", "WH-SH", 2)]
    stock_in = ("StockReceived", "StockAdjusted", "StockCounted")
    kettles_in = [
        e for e in ledger(settings) if e.sku == "KETTLE-IRON" and e.event_type in stock_in
    ]
    assert [(e.event_type, e.location) for e in kettles_in] == [("StockReceived", "S01")]

    # The same step sent again is taken once.
    returns.send_all(settings, [refund])
    time.sleep(2)
    again = history(settings, "o-ret", until="OrderRefunded")
    assert len(again) == len(logged)


async def test_the_returns_desk_over_http_requests_and_approves_and_names_what_it_refuses(
    isolated_settings: Settings,
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from events.models import OrderDelivered
    from oms.api import create_app
    from tests.conftest import ADMIN

    settings = isolated_settings
    order = received(
        event_id="e-http",
        order_id="o-http",
        external_id="http-1",
        mode=OrderMode.PICKUP,
        address=None,
    )
    delivered = OrderDelivered(
        event_id="d-http",
        order_id="o-http",
        sequence=2,
        occurred_at=utc_now(),
        recorded_at=utc_now(),
        correlation_id="o-http",
        actor=order.actor,
        channel=order.channel,
        external_id=order.external_id,
    )
    publisher = Publisher(settings)
    for event in (order, delivered):
        publisher.publish(settings.topics.orders, event)
    publisher.flush()
    sku = order.lines[0].sku
    async with TestClient(TestServer(create_app(settings))) as client:
        too_many = await client.post(
            "/orders/o-http/returns",
            headers=ADMIN,
            json={"lines": [{"sku": sku, "quantity": 99}], "reason": "broken"},
        )
        assert too_many.status == 400 and (await too_many.json())["field"] == "lines"
        asked = await client.post(
            "/orders/o-http/returns",
            headers=ADMIN,
            json={"lines": [{"sku": sku, "quantity": 1}], "reason": "broken"},
        )
        assert asked.status == 202, await asked.text()
        [requested] = (await asked.json())["events"]
        assert requested["event_type"] == "ReturnRequested"
    commands = [
        CODEC.decode(m.value())
        for m in read_topic(settings, settings.topics.order_commands, expect=1)
    ]
    [logged] = [c for c in commands if c.event_type == "ReturnRequested"]
    assert logged.event_id == requested["event_id"] and logged.order_id == "o-http"
    assert [(line.sku, line.quantity) for line in logged.lines] == [(sku, 1)]
