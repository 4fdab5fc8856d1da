from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from connectors.base import PayloadRejected
from connectors.samples import SampleLine, SampleOrder
from connectors.testing import ConnectorConformance
from connectors.toast import ToastConnector, sample_payload
from events.models import OrderLine, OrderMode, OrderModified, OrderReceived, PaymentStatus
from streams.validation import rejection_reasons
from tests.conftest import FIXTURES

NOW = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)


def fixture(name: str) -> bytes:
    return (FIXTURES / "toast" / name).read_bytes()


def parse(raw: bytes) -> OrderReceived | OrderModified:
    return ToastConnector().parse(raw, received_at=NOW)


def edited(name: str, change: Any) -> bytes:
    document = json.loads(fixture(name))
    change(document)
    return json.dumps(document).encode()


_CHECK = (
    b'"checks": [{"guid": "c1", "totalAmount": 5.0, "selections": [{"displayName": "Tea", '
    b'"quantity": 1.0, "price": 5.0}]}]'
)


class TestToastConformance(ConnectorConformance):
    connector = ToastConnector()
    fixtures = FIXTURES / "toast"
    bad_payloads = [
        (b'{"entityType": "Order", "openedDate": "2026-11-25T10:00:00.000+0000", ' + _CHECK + b"}",
         "guid"),
        (b'{"guid": "o1", "openedDate": "2026-11-25T10:00:00.000", ' + _CHECK + b"}",
         "openedDate"),
        (b'{"guid": "o1", "openedDate": "2026-11-25T10:00:00.000+0000", "voided": true, '
         + _CHECK + b"}", "voided"),
        (b'{"guid": "o1", "openedDate": "2026-11-25T10:00:00.000+0000", "checks": [{"guid": '
         b'"c1", "totalAmount": 7.5, "selections": [{"displayName": "Brisket", "quantity": 1.5,'
         b' "price": 7.5}]}]}', "checks.0.selections.0.quantity"),
        (b'{"guid": "o1", "openedDate": "2026-11-25T10:00:00.000+0000", "checks": [{"guid": '
         b'"c1", "totalAmount": 5.001, "selections": [{"displayName": "Tea", "quantity": 1.0, '
         b'"price": 5.0}]}]}', "checks.0.totalAmount"),
        (b'{"guid": "o1", "openedDate": "2026-11-25T10:00:00.000+0000", "checks": [{"guid": '
         b'"c1", "totalAmount": 6.0, "selections": [{"displayName": "Tea", "quantity": 1.0, '
         b'"price": 5.0}]}]}', "checks.0.totalAmount"),
        (b'{"guid": "o1", "openedDate": "2026-11-25T10:00:00.000+0000", "checks": [{"guid": '
         b'"c1", "totalAmount": 10.0, "selections": [{"displayName": "Tea", "quantity": 1.0, '
         b'"price": 10.0, "tax": 0.005}]}]}', "checks.0.selections.0.tax"),
    ]  # fmt: skip
    sample_orders = [
        SampleOrder(
            external_id="tt-pickup-1", store="R-BOSTON-1", currency="USD",
            placed_at=datetime(2026, 11, 25, 17, 45, 30, 250000, tzinfo=UTC),
            mode=OrderMode.PICKUP, customer_name="Maya Okafor", customer_phone="6175550142",
            lines=[SampleLine("BOWL", "Chicken Bowl", 1, 1425),
                   SampleLine("LEMON", "Lemonade", 2, 350)],
            discount=200, tax=154,
        ),
        SampleOrder(
            external_id="tt-delivery-2", store="R-BOSTON-1", currency="USD",
            placed_at=datetime(2026, 11, 26, 0, 18, 44, tzinfo=UTC), mode=OrderMode.DELIVERY,
            customer_name="Daniel Costa", customer_phone="8575550117",
            lines=[SampleLine("PIZZA", "Margherita Pizza", 1, 1600)],
            delivery_fee=499, tax=142, address_text="210 Hanover St", notes="Buzz 3R",
        ),
        SampleOrder(
            external_id="tt-table-3", store="R-BOSTON-2", currency="USD",
            placed_at=datetime(2026, 11, 25, 19, 2, 11, tzinfo=UTC), mode=OrderMode.DINE_IN,
            customer_name="Prince", customer_phone="6175550100",
            lines=[SampleLine("BURGER", "Smash Burger", 2, 1550)], packaging_fee=300, tax=275,
        ),
    ]  # fmt: skip


def test_dine_in_order_skips_voided_selections_and_puts_the_tip_with_the_fees() -> None:
    order = parse(fixture("dine_in_order.json"))
    assert isinstance(order, OrderReceived)
    assert (order.mode, order.table) == (OrderMode.DINE_IN, "6b8d0f21-3c4e-4a5b-9d7e-2f4a6c8e0b13")
    assert order.covers == 2  # numberOfGuests
    # Each selection's price is after its share of the check's Happy Hour 3.00 (2.42 + 0.58)
    assert order.lines == [
        OrderLine(sku="4c6e8a0b-2d4f-4a6c-9e1b-3d5f7b9d1f3a", name="Smash Burger", quantity=2,
                  unit_price=1550, options=["Add Bacon"], gross=3100, discount=242, tax=275,
                  total=3133),
        OrderLine(sku="6e8a0c2d-4f1b-4d3e-b5a7-1c3e5a7c9e1b", name="House IPA Draft",
                  quantity=1, unit_price=750, gross=750, discount=58, tax=40, total=732),
    ]  # fmt: skip
    assert sum(line.discount for line in order.lines) == order.discount
    # 38.65 on the check + a 7.00 tip on the payment; Happy Hour 3.00 off
    assert (order.packaging_fee, order.tip, order.discount, order.tax, order.total) == (
        0, 700, 300, 315, 4565)  # fmt: skip
    assert order.payment_status == PaymentStatus.UNPAID  # the check is still OPEN


def test_pickup_order_maps_guest_item_discount_and_promised_time() -> None:
    order = parse(fixture("pickup_order.json"))
    assert isinstance(order, OrderReceived)
    assert (order.external_id, order.mode, order.currency) == (
        "7a3e9c15-2b4d-4f6a-8c0e-1d3f5b7d9f2a", OrderMode.PICKUP, "USD",
    )  # fmt: skip
    assert order.placed_at == datetime(2026, 11, 25, 17, 45, 30, tzinfo=UTC)
    assert order.requested_at == datetime(2026, 11, 25, 18, 5, tzinfo=UTC)
    assert (order.customer.name, order.customer.phone, order.customer.email) == (
        "Maya Okafor", "6175550142", "maya.okafor@example.com",
    )  # fmt: skip
    assert order.lines[0].unit_price == 1425  # before the item's 2.00 discount
    assert order.lines == [
        OrderLine(sku="2b4d6f8a-0c1e-4a3c-b5d7-9f1b3d5f7b9d", name="Chicken Burrito Bowl",
                  quantity=1, unit_price=1425, options=["Brown Rice", "Extra Guacamole"],
                  gross=1425, discount=200, tax=98, total=1323),
        OrderLine(sku="4b6d8f0a-2c1e-4a3c-9e5b-1b3d5f7b9d1f", name="Fresh Lemonade", quantity=2,
                  unit_price=350, gross=700, discount=0, tax=56, total=756),
    ]  # fmt: skip
    assert order.lines[0].options == ["Brown Rice", "Extra Guacamole"]
    assert (order.discount, order.tax, order.total) == (200, 154, 2079)


def test_delivery_order_maps_address_fee_and_notes() -> None:
    order = parse(fixture("delivery_order.json"))
    assert order.mode == OrderMode.DELIVERY
    assert order.address is not None
    assert (order.address.text, order.address.city, order.address.province) == (
        "210 Hanover St, Apt 3R", "Boston", "MA",
    )  # fmt: skip
    assert (order.address.postal_code, order.notes) == ("02113", "Buzz 3R, leave at the door")
    assert (order.delivery_fee, order.packaging_fee, order.tip, order.total) == (499, 0, 500, 3939)
    assert order.payment_status == PaymentStatus.PAID


def test_a_later_modified_date_is_a_revision_in_unix_milliseconds() -> None:
    original = parse(fixture("pickup_order.json"))
    revised = parse(fixture("pickup_order_modified.json"))
    assert isinstance(revised, OrderModified)
    assert revised.order_id == original.order_id
    assert revised.revision == 1795629062318  # 2026-11-25T17:51:02.318Z
    assert revised.occurred_at == datetime(2026, 11, 25, 17, 51, 2, 318000, tzinfo=UTC)
    assert revised.lines[1].quantity == 3 and revised.total == 2457


def test_guests_are_covers_of_a_dine_in_only_and_none_counted_is_no_count() -> None:
    assert parse(edited("dine_in_order.json", lambda d: d.update(numberOfGuests=0))).covers is None
    assert parse(edited("pickup_order.json", lambda d: d.update(numberOfGuests=3))).covers is None
    with pytest.raises(PayloadRejected) as refused:
        parse(edited("dine_in_order.json", lambda d: d.update(numberOfGuests=-1)))
    assert refused.value.field == "numberOfGuests"


@pytest.mark.parametrize(
    ("behavior", "mode"),
    [("DINE_IN", OrderMode.DINE_IN), ("TAKE_OUT", OrderMode.PICKUP),
     ("DELIVERY", OrderMode.DELIVERY)],
)  # fmt: skip
def test_the_dining_behavior_wins_over_table_and_delivery_info(
    behavior: str, mode: OrderMode
) -> None:
    def change(document: dict[str, Any]) -> None:
        document["diningOption"]["behavior"] = behavior

    assert parse(edited("dine_in_order.json", change)).mode == mode


def test_an_unknown_behavior_is_refused() -> None:
    def change(document: dict[str, Any]) -> None:
        document["diningOption"]["behavior"] = "TELEPORT"

    with pytest.raises(PayloadRejected) as caught:
        parse(edited("pickup_order.json", change))
    assert caught.value.field == "diningOption.behavior"


def test_a_deleted_order_and_all_voided_checks_are_refused() -> None:
    def delete(document: dict[str, Any]) -> None:
        document["deleted"] = True

    def void_checks(document: dict[str, Any]) -> None:
        document["checks"][0]["voided"] = True

    with pytest.raises(PayloadRejected) as caught:
        parse(edited("pickup_order.json", delete))
    assert caught.value.field == "deleted"
    with pytest.raises(PayloadRejected) as caught:
        parse(edited("pickup_order.json", void_checks))
    assert caught.value.field == "checks"


def test_money_is_read_from_the_numbers_text_not_float_arithmetic() -> None:
    def change(document: dict[str, Any]) -> None:
        check = document["checks"][0]
        check["selections"] = [dict(check["selections"][1], quantity=3.0, preDiscountPrice=0.3,
                                    price=0.3)]  # fmt: skip
        check.update(amount=0.3, taxAmount=0.0, totalAmount=0.3)

    order = parse(edited("pickup_order.json", change))
    assert (order.lines[0].unit_price, order.total, order.discount) == (10, 30, 0)


def test_the_webhook_wrapper_is_unwrapped_and_the_restaurant_header_kept() -> None:
    wrapped = json.dumps(
        {
            "eventType": "order_updated",
            "details": {"order": json.loads(fixture("pickup_order.json"))},
        }
    ).encode()
    order = ToastConnector().parse(
        wrapped, received_at=NOW, headers={"toast-restaurant-external-id": "R-1"}
    )
    assert (order.external_id, order.location_hint) == (
        "7a3e9c15-2b4d-4f6a-8c0e-1d3f5b7d9f2a",
        "R-1",
    )


def test_sample_payload_refuses_what_toast_cannot_express() -> None:
    base = TestToastConformance.sample_orders[0]
    for change in ({"currency": "CNY"}, {"mode": OrderMode.SHIP}, {"notes": "extra napkins"}):
        with pytest.raises(ValueError):
            sample_payload(SampleOrder(**{**base.__dict__, **change}))


def test_line_amounts_are_the_selections_stated_pre_discount_price_price_and_tax() -> None:
    raw = fixture("pickup_order.json")
    order = parse(raw)
    selections = json.loads(raw, parse_float=Decimal)["checks"][0]["selections"]
    for line, selection in zip(order.lines, selections, strict=True):
        gross, net, tax = (100 * selection[k] for k in ("preDiscountPrice", "price", "tax"))
        assert (line.gross, line.discount, line.tax, line.total) == (
            gross,
            gross - net,
            tax,
            net + tax,
        )
        assert not line.prices_include_tax


def test_a_tax_included_item_is_stated_without_its_tax_and_its_unit_price_is_derived() -> None:
    """Three pints at a tax-included 10.00 (7 %): Toast states 28.04 before discounts and 1.96
    tax for the three, so the line is 28.04 + 1.96 and its unit price 9.35 (9.346… rounded); a
    gross that does not divide by the quantity is no reason to refuse the order."""
    order = parse(fixture("bar_tax_included.json"))
    assert isinstance(order, OrderReceived)
    assert [
        (li.quantity, li.unit_price, li.gross, li.discount, li.tax, li.total, li.prices_include_tax)
        for li in order.lines
    ] == [(3, 935, 2804, 0, 196, 3000, False), (1, 1400, 1400, 0, 98, 1498, False)]
    assert (order.packaging_fee, order.tip, order.tax, order.total, order.rounding) == (
        0, 800, 294, 5298, 0)  # fmt: skip
    assert rejection_reasons(order) == []


def test_a_price_that_does_not_divide_by_the_quantity_keeps_its_stated_amount() -> None:
    raw = (
        b'{"guid": "o1", "openedDate": "2026-11-25T10:00:00.000+0000", "checks": [{"guid": '
        b'"c1", "totalAmount": 10.0, "selections": [{"displayName": "Tea", "quantity": 3.0, '
        b'"preDiscountPrice": 10.0, "price": 10.0, "tax": 0.0}]}]}'
    )
    (line,) = parse(raw).lines
    assert (line.quantity, line.unit_price, line.gross, line.total) == (3, 333, 1000, 1000)


def test_without_pre_discount_price_or_tax_the_line_states_what_it_can() -> None:
    def change(document: dict[str, Any]) -> None:
        for selection in document["checks"][0]["selections"]:
            del selection["preDiscountPrice"], selection["tax"]

    order = parse(edited("pickup_order.json", change))
    # the price is after the item's own 2.00 discount: added back for its gross
    assert [(li.gross, li.discount, li.tax, li.total) for li in order.lines] == [
        (1425, 200, 0, None), (700, 0, 0, None),
    ]  # fmt: skip
    assert (order.discount, order.tax, order.total) == (200, 154, 2079)


def test_a_weighed_selection_keeps_its_exact_measure_and_unit() -> None:
    def weighed(document: dict[str, Any]) -> None:
        document["checks"][0]["selections"][1].update(quantity=1.5, unitOfMeasure="LB")

    order = parse(edited("pickup_order.json", weighed))
    line = order.lines[1]
    assert (line.unit, line.quantity_millionths, line.quantity) == ("lb", 1_500_000, 2)
    assert line.unit_price == round(Fraction(line.amount) / Fraction(3, 2))

    def loose(document: dict[str, Any]) -> None:
        document["checks"][0]["selections"][1].update(quantity=1.5, unitOfMeasure="NONE")

    with pytest.raises(PayloadRejected, match="whole positive quantity of items") as caught:
        parse(edited("pickup_order.json", loose))
    assert caught.value.field == "checks.0.selections.1.quantity"

    def stones(document: dict[str, Any]) -> None:
        document["checks"][0]["selections"][1].update(quantity=1, unitOfMeasure="STONE")

    with pytest.raises(PayloadRejected) as caught:
        parse(edited("pickup_order.json", stones))
    assert caught.value.field == "checks.0.selections.1.unitOfMeasure"


def test_sample_payload_states_each_selections_share_of_the_discount_and_tax() -> None:
    sample = TestToastConformance.sample_orders[0]  # 14.25 + 2 × 3.50, 2.00 off, 1.54 tax
    order = parse(sample_payload(sample)[0])
    assert [(li.gross, li.discount, li.tax) for li in order.lines] == [
        (1425, 134, 103), (700, 66, 51),
    ]  # fmt: skip
    assert sum(li.total or 0 for li in order.lines) == order.total


def test_a_deli_order_by_weight_carries_the_exact_pounds() -> None:
    order = parse(fixture("deli_by_weight.json"))
    brisket = next(line for line in order.lines if line.unit == "lb")
    assert (brisket.quantity_millionths, brisket.quantity, brisket.amount) == (1_250_000, 2, 700)
    assert brisket.unit_price == 560  # $7.00 for 1.25 lb
