from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from connectors.base import PayloadRejected
from connectors.pinduoduo import PinduoduoConnector, sample_payload
from connectors.platform_pii import ciphertext_format
from connectors.samples import SampleLine, SampleOrder
from connectors.testing import ConnectorConformance
from events.models import OrderMode, OrderModified, OrderReceived, PaymentStatus
from streams.validation import rejection_reasons
from tests.conftest import FIXTURES

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
WRAPPER = "order_info_get_response"


def fixture(name: str) -> bytes:
    return (FIXTURES / "pinduoduo" / name).read_bytes()


def order_info_of(name: str) -> dict[str, Any]:
    """The bare order_info of a fixture, wrapped or not."""
    document: dict[str, Any] = json.loads(fixture(name))
    if WRAPPER in document:
        return document[WRAPPER]["order_info"]
    return document


def parse(document: dict[str, Any]) -> OrderReceived | OrderModified:
    raw = json.dumps(document, ensure_ascii=False).encode()
    return PinduoduoConnector().parse(raw, received_at=NOW)


def received(name: str) -> OrderReceived:
    order = PinduoduoConnector().parse(fixture(name), received_at=NOW)
    assert isinstance(order, OrderReceived)
    return order


_ITEM = b'"item_list": [{"goods_id": 1, "sku_id": 2, "goods_name": "x", "goods_count": 1, '


class TestPinduoduoConformance(ConnectorConformance):
    connector = PinduoduoConnector()
    fixtures = FIXTURES / "pinduoduo"
    bad_payloads = [
        (b'{"order_sn": "1", "order_status": 1, "created_time": "2026-11-25 10:00:00", '
         b'"pay_amount": 1.0}', "item_list"),
        (b'{"order_sn": "1", "order_status": 1, "created_time": "2026-11-25 10:00:00", '
         b'"pay_amount": "one", "item_list": []}', "pay_amount"),
        (b'{"order_sn": "1", "order_status": 1, "created_time": "", "pay_amount": 1.0, '
         b'"item_list": []}', "created_time"),
        (b'{"order_sn": "1", "order_status": 1, "created_time": "25/11/2026", '
         b'"pay_amount": 1.0, "item_list": []}', "created_time"),
        (b'{"order_sn": "1", "order_status": 1, "created_time": "2026-11-25 10:00:00", '
         b'"pay_amount": 1.0, ' + _ITEM + b'"goods_price": 1.005}]}', "item_list.0.goods_price"),
        (b'{"order_sn": "1", "order_status": 1, "created_time": "2026-11-25 10:00:00", '
         b'"pay_amount": 1.0, ' + _ITEM + b'"goods_price": NaN}]}', None),
        (b'{"order_sn": "1", "order_status": 1, "created_time": "2026-11-25 10:00:00", '
         b'"pay_amount": 1.0, "postage": 1e999990, "item_list": []}', "postage"),
        (b'{"order_info_get_response": {}}', "order_info_get_response.order_info"),
    ]  # fmt: skip


def test_json_number_yuan_become_exact_fen_and_the_discount_is_what_lies_between() -> None:
    """29.9 × 3 is 89.69999… in float; the connector reads the number's text, so 2990 fen."""
    order = received("shipped_several_items.json")
    assert (order.channel, order.external_id) == ("pinduoduo", "261123-092716340558193")
    assert (order.mode, order.currency) == (OrderMode.SHIP, "CNY")
    assert [(li.sku, li.name, li.quantity, li.unit_price, li.options) for li in order.lines] == [
        ("TISSUE-3P-24", "原木抽纸 3层100抽 24包整箱", 3, 2990, ["24包"]),
        ("DETERGENT-3KG", "薰衣草香洗衣液 3kg 持久留香", 1, 3990, ["3kg"]),  # outer_goods_id
        ("1038841296504", "软毛牙刷 成人家庭装 10支", 2, 990, ["10支装", "混色"]),  # sku_id
    ]
    # each line costs goods_price × goods_count; the discounts are the order's, no line's
    assert [(li.gross, li.discount, li.tax, li.total) for li in order.lines] == [
        (8970, 0, 0, None), (3990, 0, 0, None), (1980, 0, 0, None),
    ]  # fmt: skip
    # goods 149.40 + postage 0 - pay_amount 136.40: platform 3.00 + seller 10.00
    assert (order.delivery_fee, order.discount, order.total) == (0, 1300, 13640)
    assert order.placed_at == datetime(2026, 11, 23, 3, 2, 44, tzinfo=UTC)  # 11:02:44 Beijing
    assert order.payment_status is PaymentStatus.PAID


def test_price_change_platform_and_seller_discounts_and_postage_reconcile() -> None:
    order = received("discounts_and_postage.json")
    # Σ lines 264.00 + postage 12.00 - pay_amount 248.50 = 改价 4.00 + platform 8.50 + seller 15.00
    assert sum(li.amount for li in order.lines) == 26400
    assert (order.delivery_fee, order.discount, order.total) == (1200, 2750, 24850)
    info = order_info_of("discounts_and_postage.json")
    assert order.discount == round(
        100 * (info["order_change_amount"] + info["discount_amount"])
    )  # fmt: skip


def test_each_lines_gross_is_its_stated_goods_price_times_goods_count() -> None:
    info = json.loads(fixture("discounts_and_postage.json"), parse_float=Decimal)[WRAPPER][
        "order_info"
    ]
    items = info["item_list"]
    order = received("discounts_and_postage.json")
    assert [li.gross for li in order.lines] == [
        100 * item["goods_price"] * item["goods_count"] for item in items
    ]
    assert all(li.gross == li.quantity * li.unit_price for li in order.lines)
    assert all((li.discount, li.tax, li.total) == (0, 0, None) for li in order.lines)
    assert all(li.prices_include_tax for li in order.lines)  # a consumer price includes VAT
    # Σ gross - order_change_amount (改价 4.00) is PDD's goods_amount
    changed, goods_amount = info["order_change_amount"], info["goods_amount"]
    assert sum(li.amount for li in order.lines) == 100 * (goods_amount + changed) == 26400
    assert order.rounding == 0 and rejection_reasons(order) == []


def test_service_fees_are_charged_with_the_postage() -> None:
    info = order_info_of("discounts_and_postage.json")
    info["service_fee_detail"] = [{"service_fee": 3.0, "service_name": "sf_express_fee"}]
    info["pay_amount"] = 251.5
    order = parse(info)
    assert (order.delivery_fee, order.discount, order.total) == (1500, 2750, 25150)


def test_goods_amount_that_is_not_the_lines_less_the_price_change_is_rejected() -> None:
    info = order_info_of("discounts_and_postage.json")
    info["order_change_amount"] = 0.0  # goods_amount 260.0 then misses the 4.00 改价
    with pytest.raises(PayloadRejected) as caught:
        parse(info)
    assert caught.value.field == "goods_amount"


def test_an_encrypted_receiver_is_held_as_ciphertext_with_its_masks_and_region() -> None:
    """PDD returns the receiver's name, phone and address as ciphertext while the order awaits
    shipment; none of it may pass for a name, a phone or a street, and the region (province,
    city, town = 区县) stays in clear."""
    order = received("encrypted_receiver.json")
    info = order_info_of("encrypted_receiver.json")
    assert (order.customer.id, order.customer.name, order.customer.phone) == (None, None, None)
    assert order.address is not None and order.address.text == ""
    assert (order.address.province, order.address.city, order.address.district) == (
        "广东省", "潮州市", "潮安区"
    )  # fmt: skip
    cipher = order.platform_ciphertext
    assert cipher is not None and cipher.platform == "pinduoduo"
    assert (cipher.name, cipher.phone, cipher.address) == (
        info["receiver_name"], info["receiver_phone"], info["receiver_address"]
    )  # fmt: skip
    assert [ciphertext_format(t) for t in (cipher.name, cipher.phone, cipher.address)] == [
        "framed-name", "framed-phone", "framed-name"
    ]  # fmt: skip
    assert (cipher.name_mask, cipher.phone_mask, cipher.address_mask) == (
        "林*坤", "1*********5", "彩塘镇新安大道东北侧林迈村王厝宫路*号"
    )  # fmt: skip
    assert order.notes == "周末不在家，请工作日送"
    assert rejection_reasons(order) == []  # held, though encrypted: not missing


def test_whole_address_ciphertext_is_taken_when_the_street_is_missing() -> None:
    info = order_info_of("encrypted_receiver.json")
    info["receiver_address"], info["receiver_address_mask"] = "", ""
    order = parse(info)
    assert order.platform_ciphertext is not None
    assert order.platform_ciphertext.address == info["address"]
    assert order.platform_ciphertext.address_mask == info["address_mask"]


def test_a_shipped_order_keeps_only_the_masks_it_is_given() -> None:
    order = received("shipped_several_items.json")
    assert (order.customer.name, order.customer.phone) == (None, None)
    cipher = order.platform_ciphertext
    assert cipher is not None
    assert (cipher.name, cipher.phone, cipher.address) == (None, None, None)
    assert (cipher.name_mask, cipher.phone_mask) == ("王**", "138****5678")
    assert order.address is not None and order.address.district == "西湖区"


def test_a_receiver_in_clear_is_the_customer() -> None:
    info = order_info_of("encrypted_receiver.json")
    info.update(
        receiver_name="林晓坤", receiver_phone="13712345675", receiver_address="王厝宫路8号"
    )
    order = parse(info)
    assert isinstance(order, OrderReceived)
    assert (order.customer.name, order.customer.phone) == ("林晓坤", "13712345675")
    assert order.address is not None and order.address.text == "广东省 潮州市 潮安区 王厝宫路8号"


def test_order_updated_after_confirmation_becomes_order_modified_of_the_same_order() -> None:
    original = received("discounts_and_postage.json")
    revised = PinduoduoConnector().parse(
        fixture("discounts_and_postage_modified.json"), received_at=NOW
    )
    assert isinstance(revised, OrderModified)
    assert revised.order_id == original.order_id
    updated_at = datetime(2026, 11, 24, 6, 22, 10, tzinfo=UTC)  # 14:22:10 Beijing
    assert (revised.revision, revised.occurred_at) == (int(updated_at.timestamp()), updated_at)
    assert revised.address is not None and revised.address.district == "高新区"
    assert revised.platform_ciphertext is not None and original.platform_ciphertext is not None
    assert revised.platform_ciphertext.address != original.platform_ciphertext.address


@pytest.mark.parametrize(
    ("name", "moved_by"),
    [
        ("discounts_and_postage.json", "confirm_time"),
        ("shipped_several_items.json", "shipping_time"),
    ],
)
def test_payment_confirmation_and_shipment_alone_are_not_revisions(
    name: str, moved_by: str
) -> None:
    info = order_info_of(name)
    assert info["updated_at"] == info[moved_by] > info["created_time"]
    assert isinstance(parse(info), OrderReceived)
    info["updated_at"] = info[moved_by][:-2] + "59"
    assert isinstance(parse(info), OrderModified)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, PaymentStatus.PAID),
        ({"pay_time": "", "confirm_status": 0, "group_status": 0}, PaymentStatus.PENDING),
        ({"pay_time": "", "confirm_status": 2}, PaymentStatus.PENDING),  # cancelled unpaid
        ({"pay_time": "", "confirm_status": 1}, PaymentStatus.PAID),  # 成交
        ({"pay_time": "", "confirm_status": 0, "order_status": 2}, PaymentStatus.PAID),
        (
            {"trade_type": 1, "step_order_info": {"step_trade_status": 1}},
            PaymentStatus.PARTIALLY_PAID,
        ),
        ({"trade_type": 1, "step_order_info": {"step_trade_status": 0}}, PaymentStatus.UNPAID),
        ({"trade_type": 1, "step_order_info": {"step_trade_status": 2}}, PaymentStatus.PAID),
    ],
)
def test_payment_status_follows_pay_time_confirmation_and_deposit_stage(
    changes: dict[str, Any], expected: PaymentStatus
) -> None:
    info = order_info_of("encrypted_receiver.json")
    info.update(changes)
    order = parse(info)
    assert isinstance(order, OrderReceived)
    assert order.payment_status is expected


def test_store_pickup_is_picked_up_at_the_sellers_store() -> None:
    info = order_info_of("encrypted_receiver.json")
    info["self_contained"] = 1
    info["store_info"] = {"store_id": 880213, "store_name": "潮州店", "store_number": "CZ-01"}
    order = parse(info)
    assert isinstance(order, OrderReceived)
    assert (order.mode, order.location_hint) == (OrderMode.PICKUP, "CZ-01")
    assert received("encrypted_receiver.json").location_hint is None


def test_money_as_text_is_read_as_well_as_json_numbers() -> None:
    info = order_info_of("discounts_and_postage.json")
    numbers = parse(info)
    for key in ("pay_amount", "goods_amount", "order_change_amount", "postage"):
        info[key] = f"{info[key]:.2f}"
    for item in info["item_list"]:
        item["goods_price"] = f"{item['goods_price']:.2f}"
    assert parse(info) == numbers


def test_response_wrapper_and_bare_order_make_the_same_event() -> None:
    assert received("encrypted_receiver.json") == parse(order_info_of("encrypted_receiver.json"))


def test_error_response_is_rejected_with_its_message() -> None:
    error = {"error_response": {"error_code": 10019, "error_msg": "access_token已过期"}}
    with pytest.raises(PayloadRejected, match="access_token已过期") as caught:
        parse(error)
    assert caught.value.field == "error_response"


def sample(**changes: Any) -> SampleOrder:
    order = SampleOrder(
        external_id="261125-000000000001",
        store="CZ-01",
        placed_at=datetime(2026, 11, 25, 3, 14, 15, 250000, tzinfo=UTC),
        mode=OrderMode.SHIP,
        lines=[
            SampleLine("TISSUE-3P-24", "原木抽纸 24包", 3, 2990),
            SampleLine("HONEY-500", "枣花蜂蜜 500g", 1, 6800),
        ],
        customer_name="林晓坤",
        customer_phone="13712345675",
        delivery_fee=1200,
        discount=850,
        address_text="潮安区彩塘镇王厝宫路8号",
        notes="请工作日送",
    )
    return replace(order, **changes)


def test_sample_payload_writes_yuan_as_json_numbers() -> None:
    """89.70 + 68.00 goods + 12.00 postage - 8.50 discount = 161.20, written as PDD does."""
    raw, headers = sample_payload(sample())
    assert headers == {}
    assert b'"goods_price": 29.9,' in raw and b'"pay_amount": 161.2,' in raw


def test_sample_payload_revision_parses_to_order_modified_of_the_same_order() -> None:
    order = sample()
    first = PinduoduoConnector().parse(sample_payload(order)[0], received_at=NOW)
    revised = PinduoduoConnector().parse(sample_payload(order, revision=2)[0], received_at=NOW)
    assert isinstance(revised, OrderModified)
    assert revised.order_id == first.order_id
    assert revised.revision == int(order.placed_at.timestamp()) + 120
    assert revised.occurred_at == order.placed_at.replace(microsecond=0) + timedelta(minutes=2)


@pytest.mark.parametrize(
    "order",
    [
        sample(mode=OrderMode.DELIVERY),
        sample(packaging_fee=200),
        sample(tax=300),
        sample(currency="HKD"),
    ],
    ids=["local-delivery", "packaging-fee", "tax", "hkd"],
)
def test_sample_payload_refuses_orders_pinduoduo_cannot_carry(order: SampleOrder) -> None:
    with pytest.raises(ValueError, match=order.external_id):
        sample_payload(order)


TestPinduoduoConformance.sample_orders = [
    sample(),
    sample(mode=OrderMode.PICKUP, delivery_fee=0, address_text=None, notes=None),
    sample(discount=0, lines=[SampleLine("SEAL-RING-S", "保鲜盒密封圈 3只装", 2, 5990)]),
]
