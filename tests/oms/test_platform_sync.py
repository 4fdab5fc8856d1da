"""Inbound platform sync end to end on the real broker: Meituan's signed pushes to `oms api` reach
the order agent (`oms worker`) and the order log; a rider's pickup commits the order's stock, a
platform cancellation releases it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from connectors import meituan
from connectors.meituan import MeituanConnector
from events.codec import AvroCodec
from events.models import Address, OrderLine, OrderMode, utc_now
from infra.publisher import Publisher
from infra.settings import Settings
from oms import operations
from oms.api import create_app
from tests.conftest import read_topic, settings_env
from tests.factories import received

SECRET = "meituan platform sync test secret"
CODEC = AvroCodec()
MUG = OrderLine(sku="MUG-CERAMIC", name="陶瓷杯", quantity=1, unit_price=6800)


@pytest.fixture
def worker(isolated_settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with (tmp_path / "worker.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "oms.cli", "worker"],
                                   env=settings_env(isolated_settings), stdout=log,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    yield process
    process.terminate()
    process.wait(timeout=60)


def events_of(settings: Settings, topic: str, order_id: str, until: str) -> list[Any]:
    """`order_id`'s events on `topic` once one of them is `until` (60 s at most)."""
    deadline = time.monotonic() + 60
    while True:
        found = [
            CODEC.decode(m.value()) for m in read_topic(settings, topic, expect=1, timeout_s=60)
        ]
        mine = sorted((e for e in found if getattr(e, "order_id", None) == order_id),
                      key=lambda e: e.sequence)  # fmt: skip
        if any(e.event_type == until for e in mine):
            return mine
        assert time.monotonic() < deadline, [e.event_type for e in mine]
        time.sleep(0.5)


def push(kind: str, **params: str) -> bytes:
    """A Meituan push to the `kind` callback, signed now with that callback's URL."""
    document = {"app_id": "6231", "timestamp": str(int(utc_now().timestamp())), **params}
    url = MeituanConnector().update_url(kind)
    document["sig"] = meituan.signature(document, secret=SECRET, url=url)
    return json.dumps(document, ensure_ascii=False).encode()


@pytest.mark.integration
async def test_a_riders_pickup_commits_the_stock_and_a_platform_cancellation_releases_it(
    isolated_settings: Settings, worker: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMS_MEITUAN_SECRET", SECRET)
    settings = isolated_settings
    operations.send(settings, operations.stock_receive("MUG-CERAMIC", "S01", quantity=5,
                                                       actor="test"))  # fmt: skip
    read_topic(settings, settings.topics.inventory, expect=1, timeout_s=60)  # on the shelf
    publisher = Publisher(settings)
    connector = MeituanConnector()
    for external in ("mt-picked", "mt-cancelled"):
        publisher.intake(received(
            event_id=f"e-{external}", order_id=connector.order_id(external),
            correlation_id=connector.order_id(external), channel="meituan",
            external_id=external, mode=OrderMode.DELIVERY, location_hint="S01",
            address=Address(text="南京东路 1号", latitude=31.235, longitude=121.475),
            placed_at=utc_now(), occurred_at=utc_now(), recorded_at=utc_now(),
            lines=[MUG], delivery_fee=0, total=6800,
        ))  # fmt: skip
    publisher.flush()
    picked, cancelled = connector.order_id("mt-picked"), connector.order_id("mt-cancelled")
    events_of(settings, settings.topics.orders, cancelled, until="OrderPrioritised")
    events_of(settings, settings.topics.orders, picked, until="OrderPrioritised")
    for action in ("accept", "start", "ready"):
        operations.send(settings, operations.store_action(action, picked, "S01", by="chef"))
        time.sleep(0.3)  # one bump after the other
    events_of(settings, settings.topics.orders, picked, until="OrderReady")

    async with TestClient(TestServer(create_app(settings))) as client:
        for kind, params in (
            ("logistics", {"order_id": "mt-picked", "logistics_status": "20",
                           "time": str(int(utc_now().timestamp())),
                           "dispatcher_name": "王师傅", "dispatcher_mobile": "13800001234"}),
            ("cancel", {"order_id": "mt-cancelled", "reason_code": "1102",
                        "reason": "用户取消，商家确认前取消"}),
        ):  # fmt: skip
            response = await client.post(f"/webhooks/meituan/{kind}", data=push(kind, **params),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
            assert response.status == 200, await response.text()

    log = events_of(settings, settings.topics.orders, picked, until="OrderPickedUp")
    assert [e.event_type for e in log][-2:] == ["CourierStatusUpdated", "OrderPickedUp"]
    assert log[-1].actor.id == "meituan" and log[-1].causation_id == log[-2].event_id
    gone = events_of(settings, settings.topics.orders, cancelled, until="OrderCancelled")
    assert gone[-1].actor.id == "meituan" and gone[-1].reason_code == "meituan:1102"

    committed = events_of(settings, settings.topics.inventory, picked, until="StockCommitted")
    assert [(e.sku, e.location) for e in committed if e.event_type == "StockCommitted"] == [
        ("MUG-CERAMIC", "S01")]  # fmt: skip
    released = events_of(settings, settings.topics.inventory, cancelled, until="StockReleased")
    assert [e.sku for e in released if e.event_type == "StockReleased"] == ["MUG-CERAMIC"]
