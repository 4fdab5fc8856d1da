from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connectors.base import PayloadRejected
from connectors.douyin import DouyinConnector, sample_payload
from connectors.samples import SampleLine, SampleOrder
from connectors.testing import ConnectorConformance
from events.models import OrderLine, OrderMode, OrderModified, OrderReceived, PaymentStatus
from streams.validation import rejection_reasons
from tests.conftest import FIXTURES

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def fixture(name: str) -> bytes:
    return (FIXTURES / "douyin" / name).read_bytes()


def detail_of(name: str) -> dict[str, Any]:
    """The bare shop_order_detail of a fixture, wrapped or not."""
    document: dict[str, Any] = json.loads(fixture(name))
    if "data" in document:
        return document["data"]["shop_order_detail"]
    return document


def parse(document: dict[str, Any]) -> OrderReceived | OrderModified:
    raw = json.dumps(document, ensure_ascii=False).encode()
    return DouyinConnector().parse(raw, received_at=NOW)


_BASE = b'"order_id": "1", "order_status": 2, "create_time": 1795486353, "pay_amount": 100, '


class TestDouyinConformance(ConnectorConformance):
    connector = DouyinConnector()
    fixtures = FIXTURES / "douyin"
    bad_payloads = [
        (b'{' + _BASE[:-2] + b'}', "sku_order_list"),
        (b'{"order_id": "1", "order_status": 2, "create_time": 1795486353, "pay_amount": "1.00", '
         b'"sku_order_list": []}', "pay_amount"),
        (b'{"order_id": "1", "order_status": 2, "create_time": 1795486353, "pay_amount": 1.5, '
         b'"sku_order_list": []}', "pay_amount"),
        (b'{"order_id": "1", "order_status": 2, "create_time": 0, "pay_amount": 100, '
         b'"sku_order_list": []}', "create_time"),
        (b'{"order_id": "1", "order_status": 2, "create_time": 99999999999999, "pay_amount": 1, '
         b'"sku_order_list": []}', "create_time"),
        (b'{' + _BASE + b'"sku_order_list": [{"sku_id": 9, "product_name": "x", '
         b'"item_num": 0, "origin_amount": 100}]}', "sku_order_list.0.item_num"),
        (b'{' + _BASE + b'"sku_order_list": [{"sku_id": 9, "product_name": "x", '
         b'"item_num": 2, "origin_amount": 50, "pay_amount": "1.00"}]}',
         "sku_order_list.0.pay_amount"),
        (b'{' + _BASE + b'"sku_order_list": [{"sku_id": 9, "product_name": "x", '
         b'"item_num": 2, "origin_amount": 50, "modify_amount": 1.5}]}',
         "sku_order_list.0.modify_amount"),
        (b'{"code": 30002, "msg": "\xe6\x9d\x83\xe9\x99\x90\xe4\xb8\x8d\xe8\xb6\xb3", '
         b'"data": {}}', "code"),
        (b'{"code": 10000, "msg": "success", "data": {}}', "data.shop_order_detail"),
    ]  # fmt: skip


def test_paid_order_with_several_skus_is_mapped_to_fen_lines_and_utc_time() -> None:
    order = DouyinConnector().parse(fixture("paid_multi_sku.json"), received_at=NOW)
    assert isinstance(order, OrderReceived)
    assert (order.channel, order.external_id) == ("douyin", "6924578312345678901")
    assert (order.mode, order.currency) == (OrderMode.SHIP, "CNY")
    # gross sum_amount (origin_amount 商品现价 × item_num, not goods_price 商品原价); total the
    # sku's pay_amount less its post_amount; no promotion, so no discount
    assert order.lines == [
        OrderLine(sku="CUP-500-BLK", name="316不锈钢保温杯 500ml 大容量", quantity=2,  # out_sku_id
                  unit_price=8900, options=["颜色:黑色", "容量:500ml"], gross=17800, discount=0,
                  tax=0, total=17800),
        OrderLine(sku="TOWEL-3", name="纯棉毛巾 3条装", quantity=1,  # no out_sku_id: its code
                  unit_price=2990, options=["颜色:混色"], gross=2990, discount=0, tax=0,
                  total=2990),
        OrderLine(sku="1749912345670003", name="Type-C 快充数据线 1m", quantity=3,  # sku_id
                  unit_price=1590, gross=4770, discount=0, tax=0, total=4770),
    ]  # fmt: skip
    assert (order.delivery_fee, order.discount, order.total) == (0, 0, 25560)
    assert order.placed_at == datetime(2026, 11, 24, 2, 12, 33, tzinfo=UTC)  # 10:12:33 Beijing
    assert order.payment_status is PaymentStatus.PAID
    assert (order.customer.name, order.customer.phone) == ("王芳", "13812345678")
    assert order.customer.id == detail_of("paid_multi_sku.json")["doudian_open_id"]
    assert order.address is not None
    assert order.address.text == "浙江省 杭州市 西湖区 文新街道 文一西路588号3幢1单元702"
    assert (order.address.province, order.address.city, order.address.district) == (
        "浙江省", "杭州市", "西湖区"
    )  # fmt: skip
    assert order.platform_ciphertext is None
    assert order.notes is None


def test_promotions_coupons_and_a_price_cut_are_the_discount_and_post_amount_the_freight() -> None:
    order = DouyinConnector().parse(fixture("promotion_freight.json"), received_at=NOW)
    assert isinstance(order, OrderReceived)
    # goods 6990 × 2 + 3990 = 17970; post_amount 800 (1000 less 200 freight promotion);
    # pay_amount 16270: promotion_amount 2000 (shop coupon + platform 满减) and modify -500
    assert sum(li.quantity * li.unit_price for li in order.lines) == 17970
    assert (order.delivery_fee, order.discount, order.total) == (800, 2500, 16270)
    assert order.notes == "请尽快发货，周末家里有人"


def test_each_line_carries_its_sku_orders_share_of_promotions_price_cut_and_freight() -> None:
    detail = detail_of("promotion_freight.json")
    order = parse(detail)
    # snacks: 13980 - promotion 1556 + modify -389 = pay 12657 - its freight 622;
    # nuts: 3990 - promotion 444 + modify -111 = pay 3613 - its freight 178
    assert [(li.gross, li.discount, li.tax, li.total) for li in order.lines] == [
        (13980, 1945, 0, 12035), (3990, 555, 0, 3435)]  # fmt: skip
    for line, sku in zip(order.lines, detail["sku_order_list"], strict=True):
        assert line.gross == sku["sum_amount"]
        assert line.discount == sku["promotion_amount"] - sku["modify_amount"]
        assert line.total == sku["pay_amount"] - sku["post_amount"]
        assert not line.prices_include_tax
    assert sum(li.discount for li in order.lines) == order.discount
    assert sum(li.total or 0 for li in order.lines) + order.delivery_fee == order.total


def test_a_sku_order_without_pay_amount_has_its_promotions_as_discount_and_no_total() -> None:
    detail = detail_of("promotion_freight.json")
    del detail["sku_order_list"][0]["pay_amount"]
    line = parse(detail).lines[0]
    assert (line.gross, line.discount, line.total) == (13980, 1945, None)


def test_cross_border_tax_is_the_lines_and_added_on_top() -> None:
    detail = detail_of("paid_multi_sku.json")
    del detail["sku_order_list"][1:]
    sku = detail["sku_order_list"][0]
    sku.update(tax_amount=1620, pay_amount=17800 + 1620)
    detail.update(tax_amount=1620, order_amount=19420, pay_amount=19420)
    order = parse(detail)
    line = order.lines[0]
    assert (line.gross, line.discount, line.tax, line.total) == (17800, 0, 1620, 19420)
    assert not line.prices_include_tax
    assert (order.tax, order.discount, order.total, order.rounding) == (1620, 0, 19420, 0)
    assert rejection_reasons(order) == []


def test_sum_amount_is_the_lines_amount_and_the_unit_price_never_refuses_it() -> None:
    detail = detail_of("paid_multi_sku.json")
    del detail["sku_order_list"][1:]
    sku = detail["sku_order_list"][0]
    sku.update(origin_amount=1050, item_num=2, sum_amount=2101, pay_amount=2101)
    detail.update(order_amount=2101, pay_amount=2101)
    order = parse(detail)
    line = order.lines[0]
    assert (line.quantity, line.unit_price, line.gross, line.total) == (2, 1050, 2101, 2101)
    assert (order.discount, order.total) == (0, 2101)
    assert rejection_reasons(order) == []
    del sku["sum_amount"]  # without it: origin_amount × item_num
    sku["pay_amount"] = detail["pay_amount"] = 2100
    assert (parse(detail).lines[0].gross, parse(detail).total) == (2100, 2100)


def test_an_encrypted_receiver_is_held_as_ciphertext_with_masks_and_its_region_in_clear() -> None:
    """Douyin returns the receiver's name, phone and street only encrypted (`#…##`, `$…$$`);
    the region stays in clear and the masks are for display. Nothing encrypted or masked may
    pass for a name, a phone or a street."""
    order = DouyinConnector().parse(fixture("encrypted_receiver.json"), received_at=NOW)
    assert isinstance(order, OrderReceived)
    detail = detail_of("encrypted_receiver.json")
    assert order.customer.name is None and order.customer.phone is None
    assert order.address is not None and order.address.text == ""
    assert (order.address.province, order.address.city, order.address.district) == (
        "四川省", "成都市", "武侯区"
    )  # fmt: skip
    cipher = order.platform_ciphertext
    assert cipher is not None and cipher.platform == "douyin"
    assert (cipher.name, cipher.phone, cipher.address) == (
        detail["encrypt_post_receiver"], detail["encrypt_post_tel"],
        detail["post_addr"]["encrypt_detail"],
    )  # fmt: skip
    assert (cipher.name_mask, cipher.phone_mask, cipher.address_mask) == (
        "陈**", "1*********6", "玉林南路***号****"
    )  # fmt: skip
    assert rejection_reasons(order) == []  # held, though encrypted: not missing


def test_wrapped_and_bare_order_make_the_same_event() -> None:
    wrapped = DouyinConnector().parse(fixture("promotion_freight.json"), received_at=NOW)
    assert wrapped == parse(detail_of("promotion_freight.json"))


def test_order_changed_after_payment_becomes_order_modified_of_the_same_order() -> None:
    original = DouyinConnector().parse(fixture("paid_multi_sku.json"), received_at=NOW)
    revised = DouyinConnector().parse(fixture("paid_multi_sku_modified.json"), received_at=NOW)
    assert isinstance(revised, OrderModified)
    assert revised.order_id == original.order_id
    modified_at = datetime(2026, 11, 24, 7, 47, 20, tzinfo=UTC)  # 15:47:20 Beijing
    assert (revised.revision, revised.occurred_at) == (int(modified_at.timestamp()), modified_at)
    assert revised.address is not None and revised.address.district == "余杭区"


def test_payment_alone_is_not_a_revision() -> None:
    detail = detail_of("paid_multi_sku.json")
    assert detail["update_time"] == detail["pay_time"] > detail["create_time"]
    assert isinstance(parse(detail), OrderReceived)
    detail["update_time"] = detail["pay_time"] + 1
    assert isinstance(parse(detail), OrderModified)


def test_an_error_response_is_rejected_naming_code_and_quoting_msg() -> None:
    error = {"code": 50002, "msg": "业务处理失败", "sub_code": "isv.order-not-exist",
             "sub_msg": "订单不存在", "data": {}}  # fmt: skip
    with pytest.raises(PayloadRejected, match="订单不存在") as caught:
        parse(error)
    assert caught.value.field == "code" and "50002" in caught.value.reason


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"order_status": 2}, PaymentStatus.PAID),
        ({"order_status": 105, "pay_time": 0, "update_time": 0}, PaymentStatus.PAID),
        ({"order_status": 1, "pay_time": 0, "update_time": 0}, PaymentStatus.UNPAID),
        ({"order_status": 4, "pay_time": 0, "update_time": 0}, PaymentStatus.PENDING),
        ({"main_status": 103, "pay_time": 0, "update_time": 0}, PaymentStatus.PARTIALLY_PAID),
        ({"pay_type": 0, "order_status": 3}, PaymentStatus.CASH_ON_DELIVERY),
        ({"pay_type": 0, "order_status": 5}, PaymentStatus.PAID),
    ],
)
def test_payment_status_follows_pay_type_status_and_payment_time(
    changes: dict[str, int], expected: PaymentStatus
) -> None:
    detail = detail_of("paid_multi_sku.json")
    detail.update(changes)
    assert parse(detail).payment_status is expected


def test_amounts_are_fen_as_integers_not_yuan() -> None:
    detail = detail_of("paid_multi_sku.json")
    detail["post_amount"] = "5.00"
    with pytest.raises(PayloadRejected) as caught:
        parse(detail)
    assert caught.value.field == "post_amount"


def sample(**changes: Any) -> SampleOrder:
    order = SampleOrder(
        external_id="6924500000000000001",
        store="HZ-WH-01",
        placed_at=datetime(2026, 11, 25, 3, 14, 15, 250000, tzinfo=UTC),
        mode=OrderMode.SHIP,
        lines=[
            SampleLine("CUP-500-BLK", "316不锈钢保温杯 500ml", 2, 8900),
            SampleLine("TOWEL-3", "纯棉毛巾 3条装", 1, 2990),
        ],
        customer_name="王芳",
        customer_phone="13812345678",
        delivery_fee=800,
        discount=1500,
        address_text="浙江省杭州市西湖区文一西路588号",
        notes="请尽快发货",
    )
    return replace(order, **changes)


TestDouyinConformance.sample_orders = [
    sample(),
    sample(delivery_fee=0, discount=0, notes=None, address_text=None),
    sample(tax=2300, lines=[SampleLine("SERUM-50", "修护精华 50ml", 1, 65000)]),
]


def test_sample_payload_revision_parses_to_order_modified_of_the_same_order() -> None:
    order = sample()
    received = DouyinConnector().parse(sample_payload(order)[0], received_at=NOW)
    revised = DouyinConnector().parse(sample_payload(order, revision=2)[0], received_at=NOW)
    assert isinstance(revised, OrderModified)
    assert revised.order_id == received.order_id
    assert revised.revision == int(order.placed_at.timestamp()) + 120
    assert revised.occurred_at == order.placed_at.replace(microsecond=0) + timedelta(minutes=2)
    assert (revised.total, revised.discount) == (order.total, order.discount)


@pytest.mark.parametrize(
    "order",
    [sample(mode=OrderMode.PICKUP), sample(currency="HKD"), sample(external_id="DY-1")],
    ids=["pickup", "hkd", "not-a-douyin-id"],
)
def test_sample_payload_refuses_orders_douyin_cannot_carry(order: SampleOrder) -> None:
    with pytest.raises(ValueError, match=order.external_id):
        sample_payload(order)
