from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connectors.base import PayloadRejected
from connectors.samples import SampleLine, SampleOrder
from connectors.testing import ConnectorConformance
from connectors.tmall import TmallConnector, sample_payload
from events.models import OrderLine, OrderMode, OrderModified, OrderReceived, PaymentStatus
from streams.validation import rejection_reasons
from tests.conftest import FIXTURES

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def fixture(name: str) -> bytes:
    return (FIXTURES / "tmall" / name).read_bytes()


def trade_of(name: str) -> dict[str, Any]:
    """The bare trade of a fixture, wrapped or not."""
    document: dict[str, Any] = json.loads(fixture(name))
    return document.get("trade_fullinfo_get_response", {"trade": document})["trade"]


def parse(document: dict[str, Any]) -> OrderReceived | OrderModified:
    return TmallConnector().parse(
        json.dumps(document, ensure_ascii=False).encode(), received_at=NOW
    )


class TestTmallConformance(ConnectorConformance):
    connector = TmallConnector(secret="tmall-test-secret")
    fixtures = FIXTURES / "tmall"
    bad_payloads = [
        (b'{"tid": 1, "status": "WAIT_BUYER_PAY", "created": "2026-11-25 10:00:00", '
         b'"payment": "1.00"}', "orders"),
        (b'{"tid": 1, "status": "WAIT_BUYER_PAY", "created": "2026-11-25 10:00:00", '
         b'"payment": "1.001", "orders": {"order": []}}', "payment"),
        (b'{"tid": 1, "status": "WAIT_BUYER_PAY", "created": "yesterday", "payment": "1.00", '
         b'"orders": {"order": []}}', "created"),
        (b'{"tid": 1, "status": "WAIT_BUYER_PAY", "created": "2026-11-25 10:00:00", '
         b'"payment": "1.00", "orders": {"order": [{"num_iid": 1, "title": "x", "num": 1, '
         b'"price": "abc"}]}}', "orders.order.0.price"),
        (b'{"tid": 1, "status": "WAIT_BUYER_PAY", "created": "2026-11-25 10:00:00", '
         b'"payment": "1.00", "orders": {"order": [{"num_iid": 1, "title": "x", "num": "two", '
         b'"price": "1.00"}]}}', "orders.order.0.num"),
        (b'{"trade_fullinfo_get_response": {"request_id": "abc"}}',
         "trade_fullinfo_get_response.trade"),
    ]  # fmt: skip


def test_paid_trade_is_mapped_to_fen_lines_with_sku_properties_and_utc_time() -> None:
    order = TmallConnector().parse(fixture("paid_multi_item.json"), received_at=NOW)
    assert isinstance(order, OrderReceived)
    assert (order.channel, order.external_id) == ("tmall", "2986451203357719842")
    assert (order.mode, order.currency) == (OrderMode.SHIP, "CNY")
    # gross price × num; total divide_order_fee: after the order's own discount_fee (20.00 on
    # the nuts) and its part_mjz_discount share of the shop's 满300减15 (10.95 and 4.05)
    assert order.lines == [
        OrderLine(sku="NUT-DAILY-750", name="每日坚果大礼包 混合坚果 750g/30袋 年货送礼",
                  quantity=2, unit_price=12900, options=["净含量:750g", "口味:混合装"],
                  gross=25800, discount=3095, tax=0, total=22705),
        OrderLine(sku="TEA-OOLONG", name="冻顶乌龙茶 台湾高山乌龙 礼盒装 250g", quantity=1,
                  unit_price=8800, gross=8800, discount=405, tax=0, total=8395),
    ]  # fmt: skip
    # total_fee 346.00 + post_fee 0.00 - payment 311.00: 20.00 item and 15.00 shop discount
    assert (order.delivery_fee, order.discount, order.total) == (0, 3500, 31100)
    assert order.placed_at == datetime(2026, 11, 24, 13, 15, 42, tzinfo=UTC)  # 21:15:42 Beijing
    assert order.payment_status is PaymentStatus.PAID
    assert (order.customer.id, order.customer.name, order.customer.phone) == (
        "lin晓雯2019", "林晓雯", "13912345678")  # fmt: skip
    assert order.address is not None
    assert order.address.text == "浙江省 杭州市 西湖区 文新街道 文一西路588号 西溪首座B2-1203"
    assert (order.address.city, order.address.postal_code) == ("杭州市", "310012")
    assert order.notes == "请用顺丰发货，工作日白天送达，谢谢！"
    assert order.location_hint == "HZWH01"


def test_outer_iid_then_num_iid_stand_in_for_a_missing_outer_sku_id() -> None:
    trade = trade_of("paid_multi_item.json")
    trade["orders"]["order"][1]["outer_iid"] = ""
    assert [line.sku for line in parse(trade).lines] == ["NUT-DAILY-750", "598765432109"]


def test_seller_price_cut_counts_as_discount_on_top_of_postage() -> None:
    order = TmallConnector().parse(fixture("unpaid_price_adjusted.json"), received_at=NOW)
    # 99.00 + post 8.00 - payment 102.00: the seller's adjust_fee of -5.00
    assert (order.lines[0].unit_price, order.delivery_fee, order.discount, order.total) == (
        9900, 800, 500, 10200)  # fmt: skip
    # The line's total_fee 94.00 (99.00 + adjust_fee -5.00); not the order's payment 102.00,
    # which in a trade of one order is the trade's, postage included.
    line = order.lines[0]
    assert (line.gross, line.discount, line.tax, line.total) == (9900, 500, 0, 9400)


def test_line_amounts_are_the_orders_stated_fees() -> None:
    trade = trade_of("paid_multi_item.json")
    nuts = trade["orders"]["order"][0]
    order = parse(trade)
    assert [(li.gross, li.discount, li.total) for li in order.lines] == [
        (25800, 3095, 22705), (8800, 405, 8395)]  # fmt: skip
    # the lines' discounts are the order's, their totals what the buyer paid less postage
    assert sum(li.discount for li in order.lines) == order.discount == 3500
    assert sum(li.total or 0 for li in order.lines) == order.total - order.delivery_fee

    nuts["divide_order_fee"] = "230.00"  # divide_order_fee is the line's total
    assert (parse(trade).lines[0].discount, parse(trade).lines[0].total) == (2800, 23000)
    del nuts["divide_order_fee"]  # else total_fee: 258.00 - discount_fee 20.00
    assert (parse(trade).lines[0].discount, parse(trade).lines[0].total) == (2000, 23800)
    del nuts["total_fee"]  # else no total: discount_fee - adjust_fee + part_mjz_discount
    nuts["adjust_fee"] = "-1.00"
    assert (parse(trade).lines[0].discount, parse(trade).lines[0].total) == (3195, None)
    for name in ("discount_fee", "adjust_fee", "part_mjz_discount"):
        nuts[name] = ""  # TOP's blanks are absent amounts
    assert (parse(trade).lines[0].discount, parse(trade).lines[0].total) == (0, None)
    nuts["discount_fee"] = "20.001"
    with pytest.raises(PayloadRejected) as caught:
        parse(trade)
    assert caught.value.field == "orders.order.0.discount_fee"


def test_trade_changed_after_payment_becomes_order_modified_of_the_same_order() -> None:
    original = TmallConnector().parse(fixture("paid_multi_item.json"), received_at=NOW)
    revised = TmallConnector().parse(fixture("paid_multi_item_modified.json"), received_at=NOW)
    assert isinstance(revised, OrderModified)
    assert revised.order_id == original.order_id
    modified_at = datetime(2026, 11, 24, 15, 2, 31, tzinfo=UTC)  # 23:02:31 Beijing
    assert (revised.revision, revised.occurred_at) == (int(modified_at.timestamp()), modified_at)
    assert revised.address is not None and revised.address.text.startswith("浙江省 杭州市 拱墅区")


def test_payment_alone_is_not_a_revision() -> None:
    trade = trade_of("unpaid_price_adjusted.json")
    trade.update(status="WAIT_SELLER_SEND_GOODS", pay_time="2026-11-25 09:20:00",
                 modified="2026-11-25 09:20:00")  # fmt: skip
    assert isinstance(parse(trade), OrderReceived)
    trade["modified"] = "2026-11-25 09:20:01"
    assert isinstance(parse(trade), OrderModified)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"status": "WAIT_BUYER_PAY"}, PaymentStatus.UNPAID),
        ({"status": "TRADE_NO_CREATE_PAY"}, PaymentStatus.UNPAID),
        ({"status": "WAIT_SELLER_SEND_GOODS"}, PaymentStatus.PAID),
        ({"status": "SELLER_CONSIGNED_PART"}, PaymentStatus.PAID),
        ({"status": "TRADE_FINISHED"}, PaymentStatus.PAID),
        ({"status": "PAY_PENDING"}, PaymentStatus.PENDING),
        ({"status": "SOMETHING_NEW"}, PaymentStatus.PENDING),
        ({"type": "cod", "status": "WAIT_SELLER_SEND_GOODS"}, PaymentStatus.CASH_ON_DELIVERY),
        ({"type": "cod", "status": "TRADE_BUYER_SIGNED"}, PaymentStatus.PAID),
        (
            {
                "type": "step",
                "status": "WAIT_BUYER_PAY",
                "step_trade_status": "FRONT_PAID_FINAL_NOPAID",
            },
            PaymentStatus.PARTIALLY_PAID,
        ),
    ],
)
def test_payment_status_follows_trade_status_and_type(
    changes: dict[str, str], expected: PaymentStatus
) -> None:
    trade = trade_of("paid_multi_item.json")
    trade.update(changes)
    order = parse(trade)
    assert isinstance(order, OrderReceived)
    assert order.payment_status is expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("unpaid_price_adjusted.json", PaymentStatus.UNPAID),
        ("cash_on_delivery.json", PaymentStatus.CASH_ON_DELIVERY),
        ("presale_deposit_paid.json", PaymentStatus.PARTIALLY_PAID),
    ],
)
def test_unpaid_cash_on_delivery_and_presale_fixtures_have_their_payment_status(
    name: str, expected: PaymentStatus
) -> None:
    order = TmallConnector().parse(fixture(name), received_at=NOW)
    assert isinstance(order, OrderReceived)
    assert order.payment_status is expected


def test_response_wrapper_and_bare_trade_make_the_same_event() -> None:
    wrapped = TmallConnector().parse(fixture("paid_multi_item.json"), received_at=NOW)
    bare = parse(trade_of("paid_multi_item.json"))
    assert wrapped == bare


def test_top_error_response_is_rejected_with_its_message() -> None:
    error = {
        "error_response": {"code": 27, "msg": "Invalid session", "sub_code": "invalid-sessionkey"}
    }
    with pytest.raises(PayloadRejected, match="Invalid session") as caught:
        parse(error)
    assert caught.value.field == "error_response"


def test_total_fee_that_is_not_the_sum_of_the_lines_is_rejected() -> None:
    trade = trade_of("paid_multi_item.json")
    trade["total_fee"] = "345.00"
    with pytest.raises(PayloadRejected) as caught:
        parse(trade)
    assert caught.value.field == "total_fee"


def sample(**changes: Any) -> SampleOrder:
    order = SampleOrder(
        external_id="2990000000000000001",
        store="HZWH01",
        placed_at=datetime(2026, 11, 25, 3, 14, 15, 654321, tzinfo=UTC),
        mode=OrderMode.SHIP,
        lines=[
            SampleLine("TEA-OOLONG", "冻顶乌龙茶 礼盒装", 2, 8800),
            SampleLine("CUP-SET", "青瓷茶具套装", 1, 25900),
        ],
        customer_name="林晓雯",
        customer_phone="13912345678",
        delivery_fee=1000,
        discount=2500,
        address_text="浙江省杭州市西湖区文一西路588号",
        notes="周末送货",
    )
    return replace(order, **changes)


def test_sample_payload_revision_parses_to_order_modified_of_the_same_order() -> None:
    order = sample()
    received = TmallConnector().parse(sample_payload(order)[0], received_at=NOW)
    revised = TmallConnector().parse(sample_payload(order, revision=3)[0], received_at=NOW)
    assert isinstance(revised, OrderModified)
    assert revised.order_id == received.order_id
    assert revised.revision == int(order.placed_at.timestamp()) + 180
    assert revised.occurred_at == order.placed_at.replace(microsecond=0) + timedelta(minutes=3)
    assert (revised.total, revised.discount) == (order.total, order.discount)


@pytest.mark.parametrize(
    "order",
    [
        sample(mode=OrderMode.PICKUP),
        sample(packaging_fee=200),
        sample(tax=500),
        sample(currency="USD"),
    ],
    ids=["pickup", "packaging-fee", "tax", "usd"],
)
def test_sample_payload_refuses_orders_tmall_cannot_carry(order: SampleOrder) -> None:
    with pytest.raises(ValueError, match=order.external_id):
        sample_payload(order)


TestTmallConformance.sample_orders = [
    sample(),
    sample(external_id="run7-00042", delivery_fee=0, discount=0, notes=None),
    sample(lines=[SampleLine("NUT-DAILY-750", "每日坚果 750g", 3, 12900)], address_text=None),
]


def test_a_protected_receiver_keeps_the_masks_apart_with_its_oaid_and_region() -> None:
    """Under Taobao's receiver protection the receiver_* fields are the platform's masks and
    the OAID is what `taobao.top.oaid.decrypt` opens them by: no mask is taken for a name,
    a phone or a street, the region stays, and the order is not missing its receiver."""
    order = TmallConnector().parse(fixture("receiver_protected_oaid.json"), received_at=NOW)
    assert isinstance(order, OrderReceived)
    assert order.customer.name is None and order.customer.phone is None
    assert order.customer.id == "AAHJ1oJvAE6j4UdD0n3xPK8L"  # buyer_open_uid
    assert order.address is not None and order.address.text == ""
    assert (order.address.province, order.address.city, order.address.district) == (
        "浙江省", "杭州市", "西湖区"
    )  # fmt: skip
    cipher = order.platform_ciphertext
    assert cipher is not None and cipher.platform == "tmall" and cipher.open_id
    assert (cipher.name_mask, cipher.phone_mask, cipher.address_mask) == (
        "王**", "*******5678", "文**路***号"
    )  # fmt: skip
    assert rejection_reasons(order) == []
