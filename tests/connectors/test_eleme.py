from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from connectors.base import PayloadRejected, SecretMissing, SignatureRejected
from connectors.eleme import ElemeConnector, sample_payload, signature
from connectors.samples import SampleLine, SampleOrder
from connectors.testing import ConnectorConformance
from events.models import OrderLine, OrderMode, OrderModified, OrderReceived, PaymentStatus
from tests.conftest import FIXTURES

NOW = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
SECRET = "eleme-test-secret"


def fixture(name: str) -> bytes:
    return (FIXTURES / "eleme" / name).read_bytes()


def mutated(change: Callable[[dict[str, Any]], object], name: str = "delivery_order.json") -> bytes:
    """The fixture with its `message` (the order) changed."""
    envelope = json.loads(fixture(name))
    order = json.loads(envelope["message"])
    change(order)
    envelope["message"] = json.dumps(order, ensure_ascii=False)
    return json.dumps(envelope, ensure_ascii=False).encode()


def enveloped(change: Callable[[dict[str, Any]], object]) -> bytes:
    envelope = json.loads(fixture("delivery_order.json"))
    change(envelope)
    return json.dumps(envelope, ensure_ascii=False).encode()


def parse(raw: bytes) -> OrderReceived | OrderModified:
    return ElemeConnector().parse(raw, received_at=NOW)


class TestElemeConformance(ConnectorConformance):
    connector = ElemeConnector(secret=SECRET)
    fixtures = FIXTURES / "eleme"
    bad_payloads = [
        (enveloped(lambda e: e.update(type=12)), "type"),  # 商户接单: a status message
        (enveloped(lambda e: e.update(message="{\"id\": \"1\",")), "message"),
        (mutated(lambda o: o.pop("groups")), "message.groups"),
        (mutated(lambda o: o["groups"][0]["items"][1].update(price="二十六")),
         "message.groups.0.items.1.price"),
        (mutated(lambda o: o.update(totalPrice=77.555)), "message.totalPrice"),
        (mutated(lambda o: o.update(createdAt="11月25日 12:05")), "message.createdAt"),
        (mutated(lambda o: o.update(deliveryGeo="徐汇区")), "message.deliveryGeo"),
    ]  # fmt: skip


def test_order_message_maps_dishes_specs_fees_and_activities_in_fen() -> None:
    order = parse(fixture("delivery_order.json"))
    assert isinstance(order, OrderReceived)
    assert (order.channel, order.external_id) == ("eleme", "5012026112510001234")
    assert order.mode is OrderMode.DELIVERY
    assert order.location_hint == "SH-XUJIAHUI"  # the store's openId, not Ele.me's shopId
    assert order.lines == [
        OrderLine(sku="NOODLE-BEEF", name="红烧牛肉面-大碗[少辣]", quantity=1, unit_price=3250,
                  options=["大碗", "少辣"], gross=3250, total=3250, prices_include_tax=True),
        OrderLine(sku="RICE-CHICKEN", name="宫保鸡丁饭[微辣+多花生]", quantity=2,
                  unit_price=2600, options=["微辣", "多花生"], gross=5200, total=5200,
                  prices_include_tax=True),
    ]  # fmt: skip
    # 餐盒 once (packageFee; the "extra" group repeats it); 满60减10 (shop) + 红包 3 (Ele.me)
    assert (order.delivery_fee, order.packaging_fee, order.discount) == (400, 200, 1300)
    assert (order.tax, order.total, order.currency) == (0, 7750, "CNY")
    assert order.payment_status is PaymentStatus.PAID
    assert (order.customer.name, order.customer.phone) == ("李先生", "13912345678")
    assert order.address is not None
    assert order.address.text == "徐汇区漕溪北路88号圣爱大厦1205室"
    assert (order.address.latitude, order.address.longitude) == (31.188523, 121.436525)
    assert order.placed_at == datetime(2026, 11, 25, 4, 5, 41, tzinfo=UTC)  # 12:05:41 北京
    assert order.requested_at is None
    assert order.notes == "不要辣椒油，多放葱花"


def test_an_items_stated_total_is_its_gross_and_its_unit_price_is_derived() -> None:
    """Ele.me's 总价 (`total`) is the line before the order's activities: a 3-for-25.00 item
    priced 8.333 is a line of 25.00, its unit price 833 (2500 ÷ 3) and no reason to refuse."""

    def three_for_25(order: dict[str, Any]) -> None:
        order["groups"][0]["items"][1].update(price=8.333, quantity=3, total=25.0)
        order["totalPrice"] = 50.5  # 32.50 + 25.00 + 4.00 + 2.00 - 13.00

    order = parse(mutated(three_for_25))
    second = order.lines[1]
    assert (second.quantity, second.unit_price, second.gross, second.total) == (3, 833, 2500, 2500)
    assert (second.discount, second.tax, second.prices_include_tax) == (0, 0, True)
    assert (order.discount, order.total, order.rounding) == (1300, 5050, 0)


def test_without_a_stated_total_an_items_gross_is_price_times_quantity() -> None:
    order = parse(mutated(lambda o: o["groups"][0]["items"][1].pop("total")))
    assert [(line.gross, line.total) for line in order.lines] == [(3250, 3250), (5200, 5200)]
    assert order.lines[1].unit_price == 2600
    with pytest.raises(PayloadRejected) as refused:
        parse(mutated(lambda o: o["groups"][0]["items"][0].update(total=32.505)))
    assert refused.value.field == "message.groups.0.items.0.total"


def test_a_virtual_number_keeps_the_relay_as_phone_and_the_extension_beside_it() -> None:
    order = parse(mutated(lambda o: o.update(phoneList=["17012345678,8421", "13912345678"])))
    assert (order.customer.phone, order.customer.phone_extension) == ("17012345678", "8421")
    plain = parse(fixture("delivery_order.json"))
    assert (plain.customer.phone, plain.customer.phone_extension) == ("13912345678", None)


def test_self_pickup_order_is_pickup_mode_at_its_pickup_time() -> None:
    order = parse(fixture("pickup_order.json"))
    assert isinstance(order, OrderReceived)
    assert order.mode is OrderMode.PICKUP
    assert order.address is None
    assert order.requested_at == datetime(2026, 11, 25, 4, 30, tzinfo=UTC)  # 12:30 北京
    assert [line.options for line in order.lines] == [["12只"], ["大杯", "去冰", "少糖"]]
    assert (order.delivery_fee, order.packaging_fee, order.discount, order.total) == (
        0, 100, 0, 5300,
    )  # fmt: skip


def test_cash_preorder_nets_the_member_delivery_discount_and_sums_both_shares() -> None:
    order = parse(fixture("reserved_cash_order.json"))
    assert isinstance(order, OrderReceived)
    assert order.payment_status is PaymentStatus.CASH_ON_DELIVERY
    assert order.requested_at == datetime(2026, 11, 25, 10, 30, tzinfo=UTC)
    assert order.lines[2].sku == "宫保鸡丁饭"  # no extendCode: the dish name
    assert (order.delivery_fee, order.discount, order.total) == (300, 800, 8500)


def test_an_update_time_after_creation_is_a_modification_of_the_same_order() -> None:
    original = parse(fixture("delivery_order.json"))
    revised = parse(fixture("delivery_order_modified.json"))
    assert isinstance(revised, OrderModified)
    assert revised.order_id == original.order_id
    assert revised.occurred_at == datetime(2026, 11, 25, 4, 13, 41, tzinfo=UTC)
    assert revised.revision == int(revised.occurred_at.timestamp())
    assert (revised.lines[0].quantity, revised.total) == (2, 11000)


def test_a_wrong_secret_or_a_changed_order_fails_the_signature() -> None:
    body = fixture("delivery_order.json")
    ElemeConnector(secret=SECRET).verify({}, body)
    with pytest.raises(SignatureRejected, match="signature"):
        ElemeConnector(secret="another-secret").verify({}, body)
    with pytest.raises(SignatureRejected, match="signature"):
        ElemeConnector(secret=SECRET).verify({}, mutated(lambda o: o.update(totalPrice=0.01)))


def test_without_a_secret_every_message_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset or empty: an md5 "signed" with an empty secret is a checksum anyone computes."""
    monkeypatch.delenv("OMS_ELEME_SECRET", raising=False)
    signed_with_nothing = enveloped(lambda e: e.update(signature=signature(e, secret="")))
    for connector in (ElemeConnector(), ElemeConnector(secret="")):
        with pytest.raises(SecretMissing, match="OMS_ELEME_SECRET is not set"):
            connector.verify({}, signed_with_nothing)


SAMPLES = [
    SampleOrder(
        external_id="5012026112510007001", store="SH-XUJIAHUI",
        placed_at=datetime(2026, 11, 25, 4, 1, 2, tzinfo=UTC), mode=OrderMode.DELIVERY,
        lines=[SampleLine("RICE-CHICKEN", "宫保鸡丁饭", 2, 2600),
               SampleLine("TEA-OOLONG", "冻顶乌龙茶", 1, 1200)],
        customer_name="王先生", customer_phone="13812345678", delivery_fee=500,
        packaging_fee=200, discount=300, address_text="上海市徐汇区漕溪北路88号 圣爱大厦1702室",
        latitude=31.1921, longitude=121.4372, notes="少放辣",
    ),
    SampleOrder(
        external_id="5012026112510007002", store="SH-JINGAN",
        placed_at=datetime(2026, 11, 25, 4, 15, 30, tzinfo=UTC), mode=OrderMode.PICKUP,
        lines=[SampleLine("BUN-PORK", "鲜肉包 4只", 3, 1000)],
        customer_name="李", customer_phone="13900001111", packaging_fee=100,
    ),
    SampleOrder(
        external_id="5012026112510007003", store="SH-LUJIAZUI",
        placed_at=datetime(2026, 11, 25, 15, 59, 59, tzinfo=UTC), mode=OrderMode.DELIVERY,
        lines=[SampleLine("SOUP-HOTSOUR", "酸辣汤", 1, 1550),
               SampleLine("NOODLE-BEEF", "红烧牛肉面", 1, 3250)],
        customer_name="Zhang Wei", customer_phone="+86 186 0123 4567", delivery_fee=650,
        discount=1, address_text="浦东新区张杨路500号", latitude=31.2304, longitude=121.5142,
    ),
]  # fmt: skip


def test_sample_revision_parses_to_a_modification_of_the_sample_order() -> None:
    original = parse(sample_payload(SAMPLES[0])[0])
    first, second = (parse(sample_payload(SAMPLES[0], revision=r)[0]) for r in (1, 2))
    assert isinstance(first, OrderModified) and isinstance(second, OrderModified)
    assert first.order_id == second.order_id == original.order_id
    assert 0 < first.revision < second.revision
    assert first.total == SAMPLES[0].total


def test_unsigned_sample_payload_fails_a_signed_connector() -> None:
    raw, headers = sample_payload(SAMPLES[0])
    with pytest.raises(PayloadRejected):
        ElemeConnector(secret=SECRET).verify(headers, raw)


TestElemeConformance.sample_orders = SAMPLES
TestElemeConformance.sample_secret = SECRET
