from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from connectors.base import PayloadRejected, SecretMissing, SignatureRejected
from connectors.samples import SampleLine, SampleOrder
from connectors.testing import ConnectorConformance
from connectors.wechat import WechatConnector, sample_payload
from events.models import OrderLine, OrderMode, OrderModified, OrderReceived, PaymentStatus
from tests.conftest import FIXTURES

NOW = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
WECHAT = FIXTURES / "wechat"
# A test-only key pair standing in for the WeChat Pay platform key (public) and WeChat's
# signing side (private); the fixtures' .headers.json are signed with it.
PUBLIC_KEY = (WECHAT / "test_platform_public_key.pem").read_text()
PRIVATE_KEY = (WECHAT / "test_platform_private_key.pem").read_text()


def fixture(name: str) -> bytes:
    return (WECHAT / name).read_bytes()


def headers(name: str) -> dict[str, str]:
    return dict(json.loads((WECHAT / name.replace(".json", ".headers.json")).read_text()))


def mutated(change: Callable[[dict[str, Any]], object], name: str = "delivery_paid.json") -> bytes:
    document = json.loads(fixture(name))
    change(document)
    return json.dumps(document, ensure_ascii=False).encode()


def parse(raw: bytes) -> OrderReceived | OrderModified:
    return WechatConnector(secret=PUBLIC_KEY).parse(raw, received_at=NOW)


SAMPLES = [
    SampleOrder(
        external_id="WX20261125120102001", store="SH-XUJIAHUI",
        placed_at=datetime(2026, 11, 25, 4, 1, 2, tzinfo=UTC), mode=OrderMode.DELIVERY,
        lines=[SampleLine("RICE-CHICKEN", "宫保鸡丁饭", 2, 2600),
               SampleLine("TEA-OOLONG", "冻顶乌龙茶", 1, 1200)],
        customer_name="王先生", customer_phone="13812345678", delivery_fee=500, packaging_fee=200,
        discount=300, address_text="上海市徐汇区漕溪北路88号 圣爱大厦 1702室",
        latitude=31.1921, longitude=121.4372, notes="少放辣",
    ),
    SampleOrder(
        external_id="WX20261125121530002", store="SH-JINGAN",
        placed_at=datetime(2026, 11, 25, 4, 15, 30, tzinfo=UTC), mode=OrderMode.PICKUP,
        lines=[SampleLine("BUN-PORK", "鲜肉包 4只", 3, 1000)],
        customer_name="李", customer_phone="13900001111", packaging_fee=100,
    ),
    SampleOrder(
        external_id="WX20261125113007003", store="SH-LUJIAZUI",
        placed_at=datetime(2026, 11, 25, 3, 30, 7, tzinfo=UTC), mode=OrderMode.DINE_IN,
        lines=[SampleLine("NOODLE-BEEF", "红烧牛肉面", 2, 3250),
               SampleLine("SOUP-HOTSOUR", "酸辣汤", 1, 1550)],
        customer_name="赵女士", customer_phone="13700002222", notes="两位，先上汤",
    ),
]  # fmt: skip


class TestWechatConformance(ConnectorConformance):
    connector = WechatConnector(secret=PUBLIC_KEY)
    fixtures = WECHAT
    bad_payloads = [
        (mutated(lambda d: d.pop("order")), "order"),
        (mutated(lambda d: d["order"].pop("items")), "order.items"),
        (mutated(lambda d: d["order"].__setitem__("items", [])), "order.items"),
        (mutated(lambda d: d["order"].__setitem__("mode", "takeaway")), "order.mode"),
        (mutated(lambda d: d["order"]["items"][0].__setitem__("price", 26.5)),
         "order.items.0.price"),
        (mutated(lambda d: d["order"].__setitem__("total_fee", -1)), "order.total_fee"),
        (mutated(lambda d: d["order"].__setitem__("create_time", "昨天")), "order.create_time"),
        (mutated(lambda d: d["payment"]["amount"].__setitem__("total", 9000)),
         "payment.amount.total"),
        (mutated(lambda d: d["payment"]["amount"].__setitem__("currency", "USD")),
         "payment.amount.currency"),
        (mutated(lambda d: d["payment"].__setitem__("out_trade_no", "WX1")),
         "payment.out_trade_no"),
        (mutated(lambda d: d["payment"].__setitem__("trade_state", "PAID")),
         "payment.trade_state"),
    ]  # fmt: skip


def test_paid_delivery_is_mapped_field_by_field() -> None:
    order = parse(fixture("delivery_paid.json"))
    assert isinstance(order, OrderReceived)
    assert (order.channel, order.external_id) == ("wechat", "WX20261125113205001")
    assert order.mode is OrderMode.DELIVERY
    assert order.currency == "CNY"
    assert order.lines == [
        OrderLine(sku="RICE-CHICKEN", name="宫保鸡丁饭", quantity=2, unit_price=2600,
                  options=["少辣"], gross=5200, total=5200, prices_include_tax=True),
        OrderLine(sku="SOUP-HOTSOUR", name="酸辣汤", quantity=1, unit_price=1550, gross=1550,
                  total=1550, prices_include_tax=True),
        OrderLine(sku="TEA-OOLONG", name="冻顶乌龙茶", quantity=2, unit_price=1200,
                  options=["少冰", "三分糖"], gross=2400, total=2400, prices_include_tax=True),
    ]  # fmt: skip
    assert (order.delivery_fee, order.packaging_fee, order.discount, order.tax) == (
        600,
        300,
        1000,
        0,
    )
    assert order.total == 9050
    assert order.payment_status is PaymentStatus.PAID
    assert order.customer.id == "oK7Xq5Fv2mYl9cTn3BhR8dWe4sUa"
    assert (order.customer.name, order.customer.phone) == ("林女士", "13917652283")
    assert order.address is not None
    assert order.address.text == "上海市徐汇区虹桥路1号 徐家汇中心 T1办公楼2305室"
    assert (order.address.latitude, order.address.longitude) == (31.195323, 121.437512)
    assert order.location_hint == "SH-XUJIAHUI"
    assert order.placed_at == datetime(2026, 11, 25, 3, 32, 5, tzinfo=UTC)
    assert order.requested_at == datetime(2026, 11, 25, 4, 15, tzinfo=UTC)
    assert order.notes == "不要香菜，放前台即可"


def test_line_amounts_are_price_times_quantity_and_the_coupon_stays_the_orders() -> None:
    """Each item's gross is its `price` (fen) times its `quantity`; the 满80减10 coupon is the
    order's `discount`, not shared out to items; prices include VAT and no tax is stated."""
    order = parse(fixture("delivery_paid.json"))
    assert [
        (line.gross, line.discount, line.tax, line.total, line.prices_include_tax)
        for line in order.lines
    ] == [(5200, 0, 0, 5200, True), (1550, 0, 0, 1550, True), (2400, 0, 0, 2400, True)]
    # 91.50 of dishes + 6.00 delivery + 3.00 packing - 10.00 coupon = 90.50, exactly
    assert sum(line.amount for line in order.lines) == 9150
    assert (order.discount, order.tax, order.total, order.rounding) == (1000, 0, 9050, 0)
    raw = mutated(lambda d: d["order"]["items"][2].update(price=1250, quantity=3))
    assert [line.gross for line in parse(raw).lines] == [5200, 1550, 3750]


def test_dine_in_paying_after_the_meal_is_unpaid_and_seated_at_its_table() -> None:
    order = parse(fixture("dine_in_table.json"))
    assert isinstance(order, OrderReceived)
    assert order.mode is OrderMode.DINE_IN
    assert order.payment_status is PaymentStatus.UNPAID
    assert order.address is None
    assert order.notes == "有一位小朋友，请加一副儿童餐具"
    assert (order.table, order.covers) == ("B07", 4)  # diners: 4


def test_a_count_of_diners_below_one_is_refused_and_only_a_dine_in_has_covers() -> None:
    assert (
        parse(mutated(lambda d: d["order"].update(diners=0), "dine_in_table.json")).covers is None
    )
    for diners in (-2, "four", 10_001):
        with pytest.raises(PayloadRejected) as refused:
            parse(mutated(lambda d, n=diners: d["order"].update(diners=n), "dine_in_table.json"))
        assert refused.value.field == "order.diners"
    pickup = parse(mutated(lambda d: d["order"].update(diners=2), "pickup_not_yet_paid.json"))
    assert pickup.covers is None


def test_dishes_added_at_the_table_modify_the_same_order() -> None:
    original = parse(fixture("dine_in_table.json"))
    added = parse(fixture("dine_in_table_modified.json"))
    assert isinstance(added, OrderModified)
    assert (added.order_id, added.revision, added.sequence) == (original.order_id, 1, 2)
    assert added.event_id != original.event_id
    assert added.occurred_at == datetime(2026, 11, 25, 3, 24, 10, tzinfo=UTC)
    assert (len(added.lines), added.total) == (5, 13050)


def test_order_not_yet_paid_is_pending() -> None:
    order = parse(fixture("pickup_not_yet_paid.json"))
    assert isinstance(order, OrderReceived)
    assert order.payment_status is PaymentStatus.PENDING
    assert order.requested_at == datetime(2026, 11, 25, 4, 40, tzinfo=UTC)


@pytest.mark.parametrize(
    ("trade_state", "status"),
    [
        ("SUCCESS", PaymentStatus.PAID),
        ("NOTPAY", PaymentStatus.PENDING),
        ("USERPAYING", PaymentStatus.PENDING),
        ("CLOSED", PaymentStatus.UNPAID),
        ("PAYERROR", PaymentStatus.UNPAID),
    ],
)
def test_trade_state_sets_the_payment_status(trade_state: str, status: PaymentStatus) -> None:
    raw = mutated(lambda d: d["payment"].__setitem__("trade_state", trade_state))
    order = parse(raw)
    assert isinstance(order, OrderReceived)
    assert order.payment_status is status


def test_payment_of_a_different_amount_is_rejected() -> None:
    raw = mutated(lambda d: d["payment"]["amount"].__setitem__("total", 1))
    with pytest.raises(PayloadRejected, match="paid 1 fen for an order of 9050") as caught:
        parse(raw)
    assert caught.value.field == "payment.amount.total"


def test_payment_for_another_order_is_rejected() -> None:
    raw = mutated(lambda d: d["payment"].__setitem__("out_trade_no", "WX20261125999999999"))
    with pytest.raises(PayloadRejected) as caught:
        parse(raw)
    assert caught.value.field == "payment.out_trade_no"


def test_signed_fixture_verifies_and_header_names_are_case_insensitive() -> None:
    connector = WechatConnector(secret=PUBLIC_KEY)
    given = headers("delivery_paid.json")
    connector.verify(given, fixture("delivery_paid.json"))
    connector.verify({k.lower(): v for k, v in given.items()}, fixture("delivery_paid.json"))


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Wechatpay-Timestamp", "1700000000"),
        ("Wechatpay-Nonce", "5K8264ILTKCH16CQ2502SI8ZNMTM67VT"),
        ("Wechatpay-Signature", "WECHATPAY/SIGNTEST/" + "A" * 320),
        ("Wechatpay-Signature", "not base64!"),
    ],
)
def test_signature_over_other_headers_is_rejected(header: str, value: str) -> None:
    given = headers("delivery_paid.json") | {header: value}
    with pytest.raises(SignatureRejected) as caught:
        WechatConnector(secret=PUBLIC_KEY).verify(given, fixture("delivery_paid.json"))
    assert caught.value.field == "Wechatpay-Signature"


def test_tampered_body_is_rejected() -> None:
    tampered = fixture("delivery_paid.json").replace(b'"total_fee": 9050', b'"total_fee": 1')
    with pytest.raises(SignatureRejected, match="signature does not match"):
        WechatConnector(secret=PUBLIC_KEY).verify(headers("delivery_paid.json"), tampered)


def test_missing_signature_header_is_named() -> None:
    given = headers("delivery_paid.json")
    del given["Wechatpay-Nonce"]
    with pytest.raises(SignatureRejected) as caught:
        WechatConnector(secret=PUBLIC_KEY).verify(given, fixture("delivery_paid.json"))
    assert caught.value.field == "Wechatpay-Nonce"


def test_signature_by_another_key_is_rejected() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    body, signed = sample_payload(SAMPLES[0], secret=other_pem)
    with pytest.raises(SignatureRejected):
        WechatConnector(secret=PUBLIC_KEY).verify(signed, body)


def test_without_a_platform_key_every_message_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMS_WECHAT_SECRET", raising=False)
    body, signed = sample_payload(SAMPLES[0], secret=PRIVATE_KEY)
    with pytest.raises(SecretMissing, match="OMS_WECHAT_SECRET is not set"):
        WechatConnector().verify(signed, body)


@pytest.mark.parametrize("revision", [0, 2])
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.mode.value)
def test_sample_payload_parses_back_to_the_same_order(sample: SampleOrder, revision: int) -> None:
    body, signed = sample_payload(sample, revision=revision, secret=PRIVATE_KEY)
    connector = WechatConnector(secret=PUBLIC_KEY)
    connector.verify(signed, body)
    event = connector.parse(body, received_at=NOW, headers=signed)
    assert event.external_id == sample.external_id
    assert event.order_id == connector.order_id(sample.external_id)
    assert [(line.sku, line.name, line.quantity, line.unit_price) for line in event.lines] == [
        (line.sku, line.name, line.quantity, line.unit_price) for line in sample.lines
    ]
    assert (event.delivery_fee, event.packaging_fee, event.discount, event.total) == (
        sample.delivery_fee, sample.packaging_fee, sample.discount, sample.total,
    )  # fmt: skip
    assert event.notes == sample.notes
    if sample.address_text is None:
        assert event.address is None
    else:
        assert event.address is not None
        assert (event.address.text, event.address.latitude, event.address.longitude) == (
            sample.address_text, sample.latitude, sample.longitude,
        )  # fmt: skip
    if revision:
        assert isinstance(event, OrderModified)
        assert event.revision == revision
        return
    assert isinstance(event, OrderReceived)
    assert (event.mode, event.location_hint, event.placed_at) == (
        sample.mode, sample.store, sample.placed_at,
    )  # fmt: skip
    assert (event.customer.name, event.customer.phone) == (
        sample.customer_name, sample.customer_phone,
    )  # fmt: skip
    assert event.payment_status is PaymentStatus.PAID


def test_sample_payload_without_a_key_is_unsigned() -> None:
    body, signed = sample_payload(SAMPLES[1])
    assert signed == {}
    assert parse(body).external_id == SAMPLES[1].external_id
