"""The customer's tracking page `GET /track/{token}` (oms/tracking_page.py): the token a wave
prints in the label's QR code opens the page of its shipment, read from ClickHouse — its
statuses in time order, the masked first name and the city, nothing else of the customer; a
wrong MAC, an unknown order and a token of no form are one and the same 404."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from events.models import (
    Actor,
    ActorKind,
    Address,
    Customer,
    Event,
    OrderLine,
    OrderMode,
    OrderReady,
    OrderRouted,
    ShipmentCreated,
    ShipmentStatusUpdated,
    utc_now,
)
from events.shipping import Shipment
from infra.keystore import KeyStoreError
from infra.publisher import Publisher
from infra.settings import Settings
from oms.api import create_app
from oms.shipping import tracking_token
from oms.tracking_page import (
    STATUS_WORDS,
    TrackedShipment,
    page_html,
    parse_token,
    shipment_mac,
    tracking_key,
    verified,
)
from projections.store import connect
from tests.factories import received
from tests.projections.conftest import project_all

NOW = utc_now().replace(microsecond=0) - timedelta(days=1)
TRACKER = Actor(kind=ActorKind.SYSTEM, id="tracker")
PACKER = Actor(kind=ActorKind.USER, id="packer-1")
ORDER = "ship-77"
KEY = b"k" * 32


def _envelope(n: int, *, at: Any = NOW, actor: Actor = PACKER) -> dict[str, Any]:
    return {
        "event_id": f"{ORDER}-{n}", "order_id": ORDER, "sequence": n, "occurred_at": at,
        "recorded_at": NOW + timedelta(hours=n), "correlation_id": ORDER, "actor": actor,
        "channel": "tmall", "external_id": "TB00077",
    }  # fmt: skip


def _created(n: int, *, carrier: str, number: str, location: str) -> ShipmentCreated:
    return ShipmentCreated(
        shipment_id=f"{carrier}:{number}", carrier=carrier, service="2", tracking_number=number,
        location=location, promised_by=NOW + timedelta(days=2), **_envelope(n),
    )  # fmt: skip


def _status(n: int, status: str, *, hours: int, place: str, number: str = "SF7001") -> Event:
    return ShipmentStatusUpdated(
        shipment_id=f"sf:{number}", tracking_number=number, status=status, carrier="sf",
        carrier_status=f"code-{status}", description="已签收，签收人：王伟", place=place,
        **_envelope(n, at=NOW + timedelta(hours=hours), actor=TRACKER),
    )  # fmt: skip


def shipped_order() -> list[Event]:
    """An order shipped in two parcels (two locations); the first one's statuses logged out of
    time order (a push that came after a poll), the second's one status."""
    placed = received(
        mode=OrderMode.SHIP, delivery_fee=0, total=5600,
        lines=[OrderLine(sku="TEA-250", name="龙井茶 250g", quantity=2, unit_price=2800)],
        customer=Customer(name="王伟", phone="+8613900001234", email="wang@example.com"),
        address=Address(text="科技园南区 8 栋", province="广东省", city="深圳市",
                        district="南山区", postal_code="518057", country="CN"),
        **_envelope(1) | {"actor": Actor(kind=ActorKind.CHANNEL, id="tmall")},
    )  # fmt: skip
    return [
        placed,
        OrderRouted(location="W01", groups=[], reasons=[], **_envelope(2)),
        OrderReady(location="W01", **_envelope(3)),
        _created(4, carrier="sf", number="SF7001", location="W01"),
        _created(5, carrier="jdl", number="JD9002", location="W02"),
        _status(6, "in_transit", hours=5, place="深圳转运中心"),
        _status(7, "picked_up", hours=2, place="深圳南山<b>营业部</b>"),
        _status(8, "delivered", hours=30, place="上海"),
        ShipmentStatusUpdated(
            shipment_id="jdl:JD9002",
            tracking_number="JD9002",
            status="exception",
            carrier="jdl",
            carrier_status="X",
            place="北京",
            **_envelope(9, at=NOW + timedelta(hours=3), actor=TRACKER),
        ),  # fmt: skip
    ]


def token_of(settings: Settings, *, order_id: str = ORDER, carrier: str = "sf",
             number: str = "SF7001") -> str:  # fmt: skip
    """The token a wave prints on the label (oms.shipping.tracking_token)."""
    shipment = Shipment(carrier=carrier, reference=f"{order_id}@W01", tracking_number=number,
                        service="2")  # fmt: skip
    return tracking_token(shipment, order_id=order_id, key=tracking_key(settings))


@pytest.fixture
async def client(isolated_settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    publisher = Publisher(isolated_settings)
    for event in shipped_order():
        publisher.publish(isolated_settings.topics.orders, event)
    publisher.flush(30)
    store = connect(isolated_settings.resolved_clickhouse_url)
    try:
        project_all(isolated_settings, store)
    finally:
        store.close()
    # No credentials: the page is public, its token is the credential.
    async with TestClient(TestServer(create_app(isolated_settings))) as test_client:
        yield test_client


HTML = {"Accept": "text/html"}
JSON = {"Accept": "application/json"}
PERSONAL = ("王伟", "伟", "13900001234", "1234", "科技园", "8 栋", "518057", "wang@", "签收人")


# ---------------------------------------------------------------- against ClickHouse


@pytest.mark.integration
async def test_a_shipped_orders_page_shows_its_statuses_in_time_order_and_no_personal_data(
    isolated_settings: Settings, client: TestClient[Any, Any]
) -> None:
    answer = await client.get(f"/track/{token_of(isolated_settings)}", headers=HTML)
    assert answer.status == 200, await answer.text()
    assert answer.content_type == "text/html"
    assert answer.headers["Cache-Control"] == "no-store"
    page = await answer.text()
    words = STATUS_WORDS[isolated_settings.notify_locale]
    shown = [page.index(words[s]) for s in ("picked_up", "in_transit", "delivered")]
    assert shown == sorted(shown)  # in time order, not in the order they were logged
    assert words["exception"] not in page  # the other parcel's
    assert "sf" in page and "SF7001" in page and "JD9002" not in page
    assert "王*" in page and "深圳市" in page
    assert "深圳南山&lt;b&gt;营业部&lt;/b&gt;" in page and "<b>" not in page  # escaped
    assert "<script" not in page
    for personal in PERSONAL:
        assert personal not in page, personal


@pytest.mark.integration
async def test_the_page_as_json(isolated_settings: Settings, client: TestClient[Any, Any]) -> None:
    answer = await client.get(f"/track/{token_of(isolated_settings)}", headers=JSON)
    assert answer.status == 200 and answer.content_type == "application/json"
    body = await answer.json()
    assert (body["carrier"], body["tracking_number"]) == ("sf", "SF7001")
    assert body["promised_by"] == f"{NOW + timedelta(days=2):%Y-%m-%dT%H:%M:%SZ}"
    assert body["recipient"] == {"first_name": "王*", "city": "深圳市"}
    assert [s["status"] for s in body["statuses"]] == ["picked_up", "in_transit", "delivered"]
    assert body["statuses"][0] == {
        "status": "picked_up",
        "text": STATUS_WORDS[isolated_settings.notify_locale]["picked_up"],
        "at": f"{NOW + timedelta(hours=2):%Y-%m-%dT%H:%M:%SZ}",
        "place": "深圳南山<b>营业部</b>",
    }
    text = await answer.text()
    for personal in PERSONAL:
        assert personal not in text, personal
    jd = token_of(isolated_settings, carrier="jdl", number="JD9002")
    other = await client.get(f"/track/{jd}", headers=JSON)
    assert [s["status"] for s in (await other.json())["statuses"]] == ["exception"]


@pytest.mark.integration
async def test_a_wrong_mac_an_unknown_order_and_a_bad_token_are_the_same_404(
    isolated_settings: Settings, client: TestClient[Any, Any]
) -> None:
    right = token_of(isolated_settings)
    flipped = right[:-1] + ("A" if right[-1] != "A" else "B")
    unknown = token_of(isolated_settings, order_id="ship-nobody")  # a right MAC, no such order
    other_key = (
        f"{ORDER}.{shipment_mac(KEY, order_id=ORDER, carrier='sf', tracking_number='SF7001')}"
    )
    for headers in (HTML, JSON):
        answers = []
        for token in (flipped, unknown, other_key, "not-a-token", f"{ORDER}.", ".x"):
            answer = await client.get(f"/track/{token}", headers=headers)
            assert answer.status == 404, token
            answers.append((answer.content_type, await answer.read()))
        assert len(set(answers)) == 1, answers
        assert b"SF7001" not in answers[0][1] and ORDER.encode() not in answers[0][1]
    assert (await client.get(f"/track/{right}", headers=JSON)).status == 200


def test_without_a_master_key_no_token_is_made_nor_believed(tmp_path: Path) -> None:
    keyless = Settings(master_key=None, home=tmp_path)
    with pytest.raises(KeyStoreError, match="OMS_MASTER_KEY"):
        tracking_key(keyless)  # (the wave and the API both stop on it)


# ---------------------------------------------------------------- pure


def test_a_token_is_the_order_id_and_a_mac_of_the_shipment() -> None:
    shipment = Shipment(carrier="sf", reference="o.1@W01", tracking_number="SF1", service="2")
    token = tracking_token(shipment, order_id="o.1", key=KEY)
    assert parse_token(token) == ("o.1", token.rsplit(".", 1)[1])
    assert len(token.rsplit(".", 1)[1]) == 22
    assert tracking_token(shipment, order_id="o.1", key=b"x" * 32) != token  # keyed
    assert shipment_mac(KEY, order_id="o.1", carrier="sf", tracking_number="SF2") not in token
    for bad in ("o-1", "o-1.", ".AAAAAAAAAAAAAAAAAAAAAA", "o-1.AAAA", "o-1." + "A" * 21 + "="):
        assert parse_token(bad) is None, bad


def test_verification_finds_only_the_shipment_the_mac_was_made_for() -> None:
    shipments = [
        TrackedShipment(_created(4, carrier="sf", number="SF7001", location="W01")),
        TrackedShipment(_created(5, carrier="jdl", number="JD9002", location="W02")),
    ]
    mac = shipment_mac(KEY, order_id=ORDER, carrier="jdl", tracking_number="JD9002")
    found = verified(shipments, key=KEY, mac=mac)
    assert found is not None and found.created.tracking_number == "JD9002"
    assert verified(shipments, key=b"y" * 32, mac=mac) is None
    assert verified([], key=KEY, mac=mac) is None


def test_the_page_escapes_what_the_carrier_said() -> None:
    from zoneinfo import ZoneInfo

    shipment = TrackedShipment(
        _created(4, carrier="<i>sf</i>", number="SF&1", location="W01"), first_name="<王*"
    )
    page = page_html(shipment, locale="en", zone=ZoneInfo("Asia/Shanghai"))
    assert "&lt;i&gt;sf&lt;/i&gt;" in page and "SF&amp;1" in page and "&lt;王*" in page
    assert "<i>" not in page
