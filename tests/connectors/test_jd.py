from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connectors.base import PayloadRejected
from connectors.jd import JdConnector, sample_payload
from connectors.samples import SampleLine, SampleOrder
from connectors.testing import ConnectorConformance
from events.models import OrderLine, OrderMode, OrderModified, OrderReceived, PaymentStatus
from streams.validation import rejection_reasons
from tests.conftest import FIXTURES

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
WRAPPER = "jingdong_pop_order_get_responce"  # JD's spelling


def fixture(name: str) -> bytes:
    return (FIXTURES / "jd" / name).read_bytes()


def order_info_of(name: str) -> dict[str, Any]:
    """The bare orderInfo of a fixture, wrapped or not."""
    document: dict[str, Any] = json.loads(fixture(name))
    if WRAPPER in document:
        return document[WRAPPER]["orderDetailInfo"]["orderInfo"]
    return document


def parse(document: dict[str, Any]) -> OrderReceived | OrderModified:
    return JdConnector().parse(json.dumps(document, ensure_ascii=False).encode(), received_at=NOW)


class TestJdConformance(ConnectorConformance):
    connector = JdConnector(secret="jd-test-secret")
    fixtures = FIXTURES / "jd"
    bad_payloads = [
        (b'{"orderId": "1", "orderState": "WAIT_SELLER_STOCK_OUT", "orderPayment": "1.00", '
         b'"orderStartTime": "2026-11-25 10:00:00"}', "itemInfoList"),
        (b'{"orderId": "1", "orderState": "WAIT_SELLER_STOCK_OUT", "orderPayment": "one", '
         b'"orderStartTime": "2026-11-25 10:00:00", "itemInfoList": []}', "orderPayment"),
        (b'{"orderId": "1", "orderState": "WAIT_SELLER_STOCK_OUT", "orderPayment": "1.00", '
         b'"orderStartTime": "0001-01-01 00:00:00", "itemInfoList": []}', "orderStartTime"),
        (b'{"orderId": "1", "orderState": "WAIT_SELLER_STOCK_OUT", "orderPayment": "1.00", '
         b'"orderStartTime": "2026-11-25 10:00:00", "itemInfoList": [{"skuId": "9", '
         b'"skuName": "x", "jdPrice": "1.005", "itemTotal": "1"}]}', "itemInfoList.0.jdPrice"),
        (b'{"orderId": "1", "orderState": "WAIT_SELLER_STOCK_OUT", "orderPayment": "1.00", '
         b'"orderStartTime": "2026-11-25 10:00:00", "itemInfoList": [{"skuId": "9", '
         b'"skuName": "x", "jdPrice": "1.00", "itemTotal": "x"}]}', "itemInfoList.0.itemTotal"),
        (b'{"jingdong_pop_order_get_responce": {"code": "0"}}',
         "jingdong_pop_order_get_responce.orderDetailInfo"),
    ]  # fmt: skip


def test_online_paid_order_is_mapped_to_fen_lines_and_utc_time() -> None:
    order = JdConnector().parse(fixture("online_paid.json"), received_at=NOW)
    assert isinstance(order, OrderReceived)
    assert (order.channel, order.external_id) == ("jd", "285412345678")
    assert (order.mode, order.currency) == (OrderMode.SHIP, "CNY")
    # gross jdPrice × itemTotal; the coupons name no skuId (店铺优惠, 京东券): no line's discount,
    # and JD states no line total
    assert order.lines == [
        OrderLine(sku="RICECOOKER-FB40", name="智能电饭煲 4L 家用多功能 预约定时 MB-FB40",
                  quantity=1, unit_price=29900, gross=29900, discount=0, tax=0, total=None),
        OrderLine(sku="100023456789", name="A4复印纸 70g 500张/包 5包/箱",  # no outerSkuId
                  quantity=2, unit_price=11990, gross=23980, discount=0, tax=0, total=None),
    ]  # fmt: skip
    # orderTotalPrice 538.80 + freight 0.00 - orderPayment 498.80: 30.00 seller + 10.00 京券
    assert (order.delivery_fee, order.tax, order.discount, order.total) == (0, 0, 4000, 49880)
    assert order.placed_at == datetime(2026, 11, 24, 2, 12, 33, tzinfo=UTC)  # 10:12:33 Beijing
    assert order.payment_status is PaymentStatus.PAID
    assert (order.customer.id, order.customer.name, order.customer.phone) == (
        "jd_liuyang88", "刘洋", "18612345678")  # fmt: skip
    assert order.address is not None
    assert order.address.text == "北京朝阳区三环到四环之间建国路87号院5号楼1201"
    assert order.address.city == "朝阳区"
    assert order.notes == "请放快递柜，谢谢"
    assert order.location_hint is None  # storeId "0": the seller ships it


def test_store_pickup_order_is_picked_up_at_its_store_with_balance_counted_as_discount() -> None:
    order = JdConnector().parse(fixture("store_pickup.json"), received_at=NOW)
    assert isinstance(order, OrderReceived)
    assert (order.mode, order.location_hint) == (OrderMode.PICKUP, "5823")
    # 899.00 - orderPayment 829.00: sellerDiscount 50.00 + balanceUsed 20.00
    assert (order.discount, order.total) == (7000, 82900)
    # the 单品促销 coupon names the line's skuId: the line's discount; the balance is the order's
    line = order.lines[0]
    assert (line.gross, line.discount, line.tax, line.total) == (89900, 5000, 0, None)


def test_a_coupon_naming_a_lines_sku_is_that_lines_discount() -> None:
    info = order_info_of("online_paid.json")
    info["couponDetailList"] = [
        {"orderId": "285412345678", "skuId": "100023456789", "couponType": "30-单品促销优惠",
         "couponPrice": "10.00"},
        {"orderId": "285412345678", "skuId": 100023456789, "couponType": "20-套装优惠",
         "couponPrice": "5.50"},
        {"orderId": "285412345678", "skuId": "", "couponType": "100-店铺优惠",
         "couponPrice": "14.50"},
    ]  # fmt: skip
    order = parse(info)
    assert [(li.gross, li.discount) for li in order.lines] == [(29900, 0), (23980, 1550)]
    assert (order.discount, order.total) == (4000, 49880)  # the order's, as before
    info["couponDetailList"][0]["couponPrice"] = "ten"
    with pytest.raises(PayloadRejected) as caught:
        parse(info)
    assert caught.value.field == "couponDetailList.0.couponPrice"
    # a SKU on two lines: JD does not say which one its coupon is for
    info["couponDetailList"][0]["couponPrice"] = "10.00"
    info["itemInfoList"][0]["skuId"] = "100023456789"
    assert [li.discount for li in parse(info).lines] == [0, 0]


def test_cash_on_delivery_order_has_freight_and_no_notes() -> None:
    order = JdConnector().parse(fixture("cash_on_delivery.json"), received_at=NOW)
    assert isinstance(order, OrderReceived)
    assert order.payment_status is PaymentStatus.CASH_ON_DELIVERY
    assert (order.delivery_fee, order.discount, order.total) == (600, 0, 9570)
    assert order.notes is None


def test_order_changed_after_payment_becomes_order_modified_of_the_same_order() -> None:
    original = JdConnector().parse(fixture("online_paid.json"), received_at=NOW)
    revised = JdConnector().parse(fixture("online_paid_modified.json"), received_at=NOW)
    assert isinstance(revised, OrderModified)
    assert revised.order_id == original.order_id
    modified_at = datetime(2026, 11, 24, 7, 47, 20, tzinfo=UTC)  # 15:47:20 Beijing
    assert (revised.revision, revised.occurred_at) == (int(modified_at.timestamp()), modified_at)
    assert revised.address is not None and revised.address.city == "海淀区"


def test_payment_alone_is_not_a_revision() -> None:
    info = order_info_of("online_paid.json")
    assert info["modified"] == info["paymentConfirmTime"] > info["orderStartTime"]
    assert isinstance(parse(info), OrderReceived)
    info["modified"] = "2026-11-24 10:13:00"
    assert isinstance(parse(info), OrderModified)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"orderState": "WAIT_SELLER_STOCK_OUT"}, PaymentStatus.PAID),
        ({"orderState": "WAIT_GOODS_RECEIVE_CONFIRM"}, PaymentStatus.PAID),
        ({"orderState": "FINISHED_L"}, PaymentStatus.PAID),
        (
            {
                "orderState": "LOCKED",
                "paymentConfirmTime": "0001-01-01 00:00:00",
                "modified": "2026-11-24 10:12:33",
            },
            PaymentStatus.PENDING,
        ),
        ({"orderState": "LOCKED"}, PaymentStatus.PAID),  # paymentConfirmTime is set
        (
            {"payType": "1-货到付款", "orderState": "WAIT_SELLER_STOCK_OUT"},
            PaymentStatus.CASH_ON_DELIVERY,
        ),
        ({"payType": "1-货到付款", "orderState": "FINISHED_L"}, PaymentStatus.PAID),
    ],
)
def test_payment_status_follows_pay_type_state_and_payment_time(
    changes: dict[str, str], expected: PaymentStatus
) -> None:
    info = order_info_of("online_paid.json")
    info.update(changes)
    order = parse(info)
    assert isinstance(order, OrderReceived)
    assert order.payment_status is expected


def test_response_wrapper_and_bare_order_make_the_same_event() -> None:
    wrapped = JdConnector().parse(fixture("online_paid.json"), received_at=NOW)
    assert wrapped == parse(order_info_of("online_paid.json"))


def test_jos_error_response_is_rejected_with_its_message() -> None:
    error = {"error_response": {"code": "19", "zh_desc": "token已过期", "en_desc": "expired"}}
    with pytest.raises(PayloadRejected, match="token已过期") as caught:
        parse(error)
    assert caught.value.field == "error_response"


def test_order_total_price_that_is_not_the_sum_of_the_lines_is_rejected() -> None:
    info = order_info_of("online_paid.json")
    info["orderTotalPrice"] = "500.00"
    with pytest.raises(PayloadRejected) as caught:
        parse(info)
    assert caught.value.field == "orderTotalPrice"


def sample(**changes: Any) -> SampleOrder:
    order = SampleOrder(
        external_id="285400000001",
        store="BJ-WH-03",
        placed_at=datetime(2026, 11, 25, 3, 14, 15, 250000, tzinfo=UTC),
        mode=OrderMode.SHIP,
        lines=[
            SampleLine("RICECOOKER-FB40", "智能电饭煲 4L", 1, 29900),
            SampleLine("PAPER-A4", "A4复印纸 5包/箱", 2, 11990),
        ],
        customer_name="刘洋",
        customer_phone="18612345678",
        delivery_fee=600,
        discount=3000,
        address_text="北京朝阳区三环到四环之间建国路87号院5号楼1201",
        notes="请放快递柜",
    )
    return replace(order, **changes)


def test_sample_payload_revision_parses_to_order_modified_of_the_same_order() -> None:
    order = sample()
    received = JdConnector().parse(sample_payload(order)[0], received_at=NOW)
    revised = JdConnector().parse(sample_payload(order, revision=2)[0], received_at=NOW)
    assert isinstance(revised, OrderModified)
    assert revised.order_id == received.order_id
    assert revised.revision == int(order.placed_at.timestamp()) + 120
    assert revised.occurred_at == order.placed_at.replace(microsecond=0) + timedelta(minutes=2)
    assert (revised.total, revised.discount) == (order.total, order.discount)


@pytest.mark.parametrize(
    "order",
    [sample(mode=OrderMode.DELIVERY), sample(packaging_fee=200), sample(currency="HKD")],
    ids=["local-delivery", "packaging-fee", "hkd"],
)
def test_sample_payload_refuses_orders_jd_cannot_carry(order: SampleOrder) -> None:
    with pytest.raises(ValueError, match=order.external_id):
        sample_payload(order)


TestJdConformance.sample_orders = [
    sample(),
    sample(mode=OrderMode.PICKUP, delivery_fee=0, notes=None),
    sample(tax=2300, discount=0, lines=[SampleLine("SERUM-50", "修护精华 50ml", 1, 65000)]),
]


def test_an_encrypted_receiver_is_held_as_ciphertext_with_its_region_in_clear() -> None:
    """JD returns the consignee's name, phones and address as TDE ciphertext (its order
    encryption); the region stays in clear. Nothing encrypted may pass for a name, a phone
    or a street, and the county (JD's district) is kept."""
    order = JdConnector().parse(fixture("encrypted_receiver.json"), received_at=NOW)
    assert isinstance(order, OrderReceived)
    consignee = order_info_of("encrypted_receiver.json")["consigneeInfo"]
    assert order.customer.name is None and order.customer.phone is None
    assert order.address is not None and order.address.text == ""
    assert (order.address.province, order.address.city, order.address.district) == (
        "北京", "朝阳区", "三环到四环之间"
    )  # fmt: skip
    cipher = order.platform_ciphertext
    assert cipher is not None and cipher.platform == "jd"
    assert (cipher.name, cipher.phone, cipher.address) == (
        consignee["fullname"], consignee["mobile"], consignee["fullAddress"]
    )  # fmt: skip
    assert cipher.open_id == order_info_of("encrypted_receiver.json")["oaid"]
    assert rejection_reasons(order) == []  # held, though encrypted: not missing
    clear = JdConnector().parse(fixture("online_paid.json"), received_at=NOW)
    assert isinstance(clear, OrderReceived) and clear.platform_ciphertext is None
    assert clear.address is not None and clear.address.district == "三环到四环之间"
