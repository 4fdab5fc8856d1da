from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from connectors.base import PayloadRejected, SecretMissing, SignatureRejected
from connectors.meituan import MeituanConnector, sample_payload
from connectors.samples import SampleLine, SampleOrder
from connectors.testing import ConnectorConformance
from events.models import OrderLine, OrderMode, OrderModified, OrderReceived, PaymentStatus
from tests.conftest import FIXTURES

NOW = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
SECRET = "meituan-test-secret"


def fixture(name: str) -> bytes:
    return (FIXTURES / "meituan" / name).read_bytes()


def mutated(change: Callable[[dict[str, Any]], object], name: str = "delivery_order.json") -> bytes:
    params = json.loads(fixture(name))
    change(params)
    return json.dumps(params, ensure_ascii=False).encode()


def parse(raw: bytes) -> OrderReceived | OrderModified:
    return MeituanConnector().parse(raw, received_at=NOW)


class TestMeituanConformance(ConnectorConformance):
    connector = MeituanConnector(secret=SECRET)
    fixtures = FIXTURES / "meituan"
    bad_payloads = [
        (mutated(lambda p: p.pop("order_id")), "order_id"),
        (mutated(lambda p: p.__setitem__("detail", "[{\"food_name\": \"水饺\"")), "detail"),
        (mutated(lambda p: p.__setitem__("detail", '[{"food_name": "水饺", "quantity": 1}]')),
         "detail.0.price"),
        (mutated(lambda p: p.__setitem__("extras", "满减")), "extras"),
        (mutated(lambda p: p.__setitem__("total", "79.555")), "total"),
        (mutated(lambda p: p.__setitem__("ctime", "昨天")), "ctime"),
    ]  # fmt: skip


def test_delivery_push_maps_dishes_specs_fees_and_activities_in_fen() -> None:
    order = parse(fixture("delivery_order.json"))
    assert isinstance(order, OrderReceived)
    assert (order.channel, order.external_id) == ("meituan", "27061900338041233")
    assert order.mode is OrderMode.DELIVERY
    assert order.location_hint == "SH-JINGAN"
    assert order.lines == [
        OrderLine(sku="DUMPLING-12", name="猪肉白菜水饺", quantity=2, unit_price=2800,
                  options=["12只", "加醋"], gross=5600, total=5600, prices_include_tax=True),
        OrderLine(sku="SOUP-HOTSOUR-L", name="酸辣汤", quantity=1, unit_price=1550,
                  options=["大份", "少辣", "不要香菜"], gross=1550, total=1550,
                  prices_include_tax=True),
        OrderLine(sku="TEA-OOLONG", name="冻顶乌龙茶", quantity=1, unit_price=1200,
                  options=["去冰"], gross=1200, total=1200, prices_include_tax=True),
    ]  # fmt: skip
    # 餐盒 2 + 1 boxes at 1.00; 满80减12 = 10.00 merchant + 2.00 Meituan
    assert (order.delivery_fee, order.packaging_fee, order.discount) == (500, 300, 1200)
    assert (order.tax, order.total, order.currency) == (0, 7950, "CNY")
    assert order.payment_status is PaymentStatus.PAID
    assert (order.customer.name, order.customer.phone) == ("王(女士)", "13812345678")
    assert order.address is not None
    assert order.address.text == "越洋广场12楼1205室 上海市静安区南京西路1601号越洋广场"
    assert (order.address.latitude, order.address.longitude) == (31.224361, 121.446235)
    assert order.placed_at == datetime(2026, 11, 25, 3, 32, 5, tzinfo=UTC)  # 11:32:05 北京
    assert order.requested_at is None  # delivery_time 0: as soon as possible
    assert order.notes == "请放前台，谢谢"


def test_line_amounts_are_price_times_quantity_without_boxes_or_activities() -> None:
    """Each dish's gross is its `price` times its `quantity` (boxes are the order's packaging,
    the 满减 in `extras` the order's discount), tax-inclusive with no tax stated."""
    order = parse(fixture("reserved_cash_order.json"))
    assert [
        (line.gross, line.discount, line.tax, line.total, line.prices_include_tax)
        for line in order.lines
    ] == [(7800, 0, 0, 7800, True), (2800, 0, 0, 2800, True), (2400, 0, 0, 2400, True)]
    # 26.0 x 3 + 28.0 x 1 + 12.0 x 2; + 6.00 shipping + 7.00 packaging - 19.00 = 124.0
    assert sum(line.amount for line in order.lines) == 13000
    assert (order.delivery_fee, order.packaging_fee, order.discount, order.total) == (
        600, 700, 1900, 12400,
    )  # fmt: skip
    assert (order.tax, order.rounding) == (0, 0)


def test_a_price_finer_than_a_fen_is_no_reason_to_refuse_and_food_discount_is_no_amount() -> None:
    """A 10.125 price for 4 is a line of 40.50 (the unit price its gross ÷ 4, half to even);
    `food_discount` 0.8 is a ratio Meituan keeps out of the total, not a discount."""

    def repriced(params: dict[str, Any]) -> None:
        detail = json.loads(params["detail"])
        detail[0].update(price=10.125, quantity=4, food_discount=0.8)
        params["detail"] = json.dumps(detail, ensure_ascii=False)
        params["total"] = "64.0"  # 40.50 + 15.50 + 12.00 + 5.00 + 3.00 - 12.00

    order = parse(mutated(repriced))
    first = order.lines[0]
    assert (first.quantity, first.unit_price, first.gross, first.discount, first.total) == (
        4, 1012, 4050, 0, 4050,
    )  # fmt: skip
    assert (order.discount, order.total, order.rounding) == (1200, 6400, 0)


def test_a_virtual_number_keeps_the_relay_as_phone_and_the_extension_beside_it() -> None:
    order = parse(mutated(lambda p: p.update(recipient_phone="13012345678_8421")))
    assert (order.customer.phone, order.customer.phone_extension) == ("13012345678", "8421")
    plain = parse(fixture("delivery_order.json"))
    assert (plain.customer.phone, plain.customer.phone_extension) == ("13812345678", None)


def test_self_pickup_is_pickup_mode_with_its_pickup_time_and_no_address() -> None:
    order = parse(fixture("pickup_order.json"))
    assert isinstance(order, OrderReceived)
    assert order.mode is OrderMode.PICKUP
    assert order.address is None
    assert order.requested_at == datetime(2026, 11, 25, 4, 30, tzinfo=UTC)  # 12:30 北京
    assert (order.delivery_fee, order.packaging_fee, order.discount, order.total) == (
        0, 200, 500, 3950,
    )  # fmt: skip


def test_cash_on_delivery_preorder_adds_the_bag_fee_in_fen_and_both_activities() -> None:
    order = parse(fixture("reserved_cash_order.json"))
    assert isinstance(order, OrderReceived)
    assert order.payment_status is PaymentStatus.CASH_ON_DELIVERY
    assert order.requested_at == datetime(2026, 11, 25, 10, 30, tzinfo=UTC)
    # 餐盒 6.00 + 打包袋 100 fen; 满100减15 (merchant) + 美团红包 4 (Meituan)
    assert (order.packaging_fee, order.discount, order.total) == (700, 1900, 12400)


def test_a_later_utime_is_a_modification_of_the_same_order() -> None:
    original = parse(fixture("delivery_order.json"))
    revised = parse(fixture("delivery_order_modified.json"))
    assert isinstance(revised, OrderModified)
    assert revised.order_id == original.order_id
    assert revised.revision == 1795578125  # utime, ten minutes after ctime
    assert revised.occurred_at == datetime(2026, 11, 25, 3, 42, 5, tzinfo=UTC)
    assert (revised.lines[2].quantity, revised.total) == (2, 9150)


def test_a_wrong_secret_or_a_changed_parameter_fails_the_signature() -> None:
    body = fixture("delivery_order.json")
    MeituanConnector(secret=SECRET).verify({}, body)
    with pytest.raises(SignatureRejected, match="signature"):
        MeituanConnector(secret="another-secret").verify({}, body)
    with pytest.raises(SignatureRejected, match="signature"):
        MeituanConnector(secret=SECRET).verify({}, mutated(lambda p: p.update(total="0.01")))
    with pytest.raises(SignatureRejected):
        MeituanConnector(secret=SECRET, push_url="https://elsewhere.example/cb").verify({}, body)


def test_without_a_secret_every_push_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMS_MEITUAN_SECRET", raising=False)
    for connector in (MeituanConnector(), MeituanConnector(secret="")):
        with pytest.raises(SecretMissing, match="OMS_MEITUAN_SECRET is not set"):
            connector.verify({}, mutated(lambda p: p.pop("sig")))


SAMPLES = [
    SampleOrder(
        external_id="27061900345550001", store="SH-XUJIAHUI",
        placed_at=datetime(2026, 11, 25, 4, 1, 2, tzinfo=UTC), mode=OrderMode.DELIVERY,
        lines=[SampleLine("RICE-CHICKEN", "宫保鸡丁饭", 2, 2600),
               SampleLine("TEA-OOLONG", "冻顶乌龙茶", 1, 1200)],
        customer_name="王(先生)", customer_phone="13812345678", delivery_fee=500,
        packaging_fee=200, discount=300, address_text="上海市徐汇区漕溪北路88号 圣爱大厦1702室",
        latitude=31.1921, longitude=121.4372, notes="少放辣",
    ),
    SampleOrder(
        external_id="27061900345550002", store="SH-JINGAN",
        placed_at=datetime(2026, 11, 25, 4, 15, 30, tzinfo=UTC), mode=OrderMode.PICKUP,
        lines=[SampleLine("BUN-PORK", "鲜肉包 4只", 3, 1000)],
        customer_name="李", customer_phone="13900001111", packaging_fee=100,
    ),
    SampleOrder(
        external_id="27061900345550003", store="SH-LUJIAZUI",
        placed_at=datetime(2026, 11, 25, 10, 59, 59, tzinfo=UTC), mode=OrderMode.DELIVERY,
        lines=[SampleLine("SOUP-HOTSOUR", "酸辣汤", 1, 1550),
               SampleLine("NOODLE-BEEF", "红烧牛肉面", 1, 3250)],
        customer_name="Zhang Wei", customer_phone="+86 186 0123 4567", delivery_fee=650,
        address_text="浦东新区张杨路500号", latitude=31.2304, longitude=121.5142,
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
        MeituanConnector(secret=SECRET).verify(headers, raw)


TestMeituanConformance.sample_orders = SAMPLES
TestMeituanConformance.sample_secret = SECRET
