from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from connectors.base import SecretMissing, SignatureRejected
from connectors.samples import SampleLine, SampleOrder
from connectors.testing import ConnectorConformance
from connectors.woocommerce import WoocommerceConnector, sample_payload
from events.models import (
    Customer,
    OrderLine,
    OrderMode,
    OrderModified,
    OrderReceived,
    PaymentStatus,
)
from streams.validation import rejection_reasons
from tests.conftest import FIXTURES

NOW = datetime(2026, 11, 25, 20, 0, tzinfo=UTC)
SECRET = "woocommerce-test-secret"


def fixture(name: str) -> bytes:
    return (FIXTURES / "woocommerce" / name).read_bytes()


def fixture_headers(name: str) -> dict[str, str]:
    headers: dict[str, str] = json.loads(fixture(name.replace(".json", ".headers.json")))
    return headers


def parse(raw: bytes, headers: dict[str, str] | None = None) -> OrderReceived | OrderModified:
    return WoocommerceConnector().parse(raw, received_at=NOW, headers=headers)


def edited(name: str, change: Any) -> bytes:
    order = json.loads(fixture(name))
    change(order)
    return json.dumps(order).encode()


class TestWoocommerceConformance(ConnectorConformance):
    connector = WoocommerceConnector(secret=SECRET)
    fixtures = FIXTURES / "woocommerce"
    bad_payloads = [
        (b'{"id": 1, "currency": "USD", "total": "1.00", "line_items": []}', "date_created_gmt"),
        (b'{"id": 1, "currency": "USD", "date_created_gmt": "2026-11-25T10:00:00", '
         b'"total": "1.0x", "line_items": []}', "total"),
        (b'{"id": 1, "currency": "USD", "date_created_gmt": "2026-11-25T10:00:00", '
         b'"total": "1.00", "line_items": [{"name": "Tea", "quantity": "two", '
         b'"subtotal": "1.00"}]}', "line_items.0.quantity"),
        (b'{"id": 1, "currency": "USD", "date_created_gmt": "2026-11-25T10:00:00", '
         b'"total": "1.00", "line_items": [{"name": "Tea", "quantity": 1, '
         b'"subtotal": "1.001"}]}', "line_items.0.subtotal"),
        (b'{"id": 1, "currency": "USD", "date_created_gmt": "2026-11-25T10:00:00", '
         b'"total": "1.00", "line_items": [], "fee_lines": [{"name": "Tip", "total": "?"}]}',
         "fee_lines.0.total"),
    ]  # fmt: skip


def test_shipped_order_maps_every_field_in_minor_units_and_utc() -> None:
    order = parse(fixture("ship_order.json"), fixture_headers("ship_order.json"))
    assert isinstance(order, OrderReceived)
    assert (order.channel, order.external_id, order.mode) == ("woocommerce", "4817", OrderMode.SHIP)
    assert order.currency == "USD"
    assert order.lines == [
        OrderLine(sku="DRIP-02-WHT", name="Ceramic Pour-Over Dripper - White", quantity=1,
                  unit_price=3200, options=["Color: White"], gross=3200, discount=320, tax=173,
                  total=3053),
        OrderLine(sku="BEAN-ETH-250", name="Single Origin Beans 250g - Whole bean", quantity=2,
                  unit_price=1800, options=["Grind: Whole bean"], gross=3600, discount=360,
                  tax=194, total=3434),
    ]  # fmt: skip
    assert (order.delivery_fee, order.packaging_fee, order.discount, order.tax, order.total) == (
        850, 0, 680, 367, 7337,
    )  # fmt: skip
    assert order.placed_at == datetime(2026, 11, 24, 18, 42, 11, tzinfo=UTC)
    assert order.payment_status is PaymentStatus.PAID
    assert order.customer == Customer(
        id="58", name="Maya Thompson", phone="(917) 555-0142", email="maya.thompson@example.com"
    )
    assert order.address is not None
    assert (order.address.text, order.address.city, order.address.postal_code) == (
        "210 Berry St, Apt 5C", "Brooklyn", "11249",
    )  # fmt: skip
    assert order.address.country == "US"
    assert order.notes == "Please leave it with the doorman."
    assert order.location_hint is None
    assert order.device_id == "203.0.113.24"


def test_a_new_order_saved_again_seconds_later_stays_an_original_under_the_created_topic() -> None:
    raw = fixture("ship_order.json")  # date_modified_gmt is 4 s after date_created_gmt
    assert isinstance(parse(raw, {"X-WC-Webhook-Topic": "order.created"}), OrderReceived)
    assert isinstance(parse(raw, {"X-WC-Webhook-Topic": "order.updated"}), OrderModified)


def test_a_modification_revises_the_same_order_at_its_modification_time() -> None:
    original = parse(fixture("ship_order.json"), fixture_headers("ship_order.json"))
    revised = parse(fixture("ship_order_modified.json"))
    assert isinstance(revised, OrderModified)
    assert revised.order_id == original.order_id
    assert revised.revision == int(datetime(2026, 11, 24, 19, 5, 40, tzinfo=UTC).timestamp())
    assert revised.occurred_at == datetime(2026, 11, 24, 19, 5, 40, tzinfo=UTC)
    assert (revised.lines[1].quantity, revised.discount, revised.tax, revised.total) == (
        3, 860, 465, 9055,
    )  # fmt: skip


def test_local_pickup_block_order_names_its_store_and_is_paid_on_pickup() -> None:
    order = parse(fixture("pickup_order.json"))
    assert isinstance(order, OrderReceived)
    assert order.mode is OrderMode.PICKUP
    assert order.location_hint == "Bäckerei Kreuzberg"
    assert order.payment_status is PaymentStatus.CASH_ON_DELIVERY
    assert order.address is None
    assert order.customer.id is None  # a guest
    # prices_include_tax: the subtotals are still net, the tax is added on top
    assert (sum(line.quantity * line.unit_price for line in order.lines), order.tax) == (1500, 177)
    assert (order.packaging_fee, order.total) == (200, 1877)


def test_a_negative_fee_is_a_discount_and_the_sku_falls_back_to_the_name() -> None:
    order = parse(fixture("delivery_order.json"))
    assert isinstance(order, OrderReceived)
    assert order.mode is OrderMode.DELIVERY
    assert (order.delivery_fee, order.packaging_fee, order.discount) == (300, 50, 200)
    assert order.lines[1].sku == "Garlic Bread"
    assert order.payment_status is PaymentStatus.PENDING  # bank transfer, on hold


@pytest.mark.parametrize(
    ("shipping_lines", "mode"),
    [
        ([{"method_id": "local_pickup", "total": "0.00"}], OrderMode.PICKUP),
        ([{"method_id": "pickup_location", "total": "0.00"}], OrderMode.PICKUP),
        ([{"method_id": "local_delivery", "total": "3.00"}], OrderMode.DELIVERY),
        ([{"method_id": "flat_rate", "total": "3.00"}], OrderMode.SHIP),
        ([{"method_id": "free_shipping", "total": "0.00"}], OrderMode.SHIP),
        ([], OrderMode.SHIP),
    ],
)
def test_the_shipping_method_decides_the_mode(
    shipping_lines: list[dict[str, str]], mode: OrderMode
) -> None:
    raw = edited("delivery_order.json", lambda o: o.__setitem__("shipping_lines", shipping_lines))
    order = parse(raw)
    assert isinstance(order, OrderReceived)
    assert order.mode is mode


def test_a_tax_inclusive_line_keeps_its_stated_amounts_and_derives_its_unit_price() -> None:
    # The shop enters 12.50 with 19 % tax included: WooCommerce states 2 at 10.504201680672,
    # subtotal 21.01 and 3.99 tax. A paid order is never refused over that rounding.
    order = parse(fixture("tax_inclusive_order.json"))
    assert isinstance(order, OrderReceived)
    (line,) = order.lines
    assert (line.quantity, line.gross, line.discount, line.tax, line.total) == (
        2,
        2101,
        0,
        399,
        2500,
    )
    assert line.unit_price == 1050  # 1050.5 rounded half to even
    assert not line.prices_include_tax  # the API states amounts without their tax
    assert (order.tax, order.total, order.rounding) == (399, 2500, 0)
    assert isinstance(order, OrderReceived) and rejection_reasons(order) == []


def test_a_penny_off_total_from_tax_rounding_is_carried_as_rounding_and_accepted() -> None:
    # Three 0.99 items with tax included: 3 × 0.83 without tax, 0.47 tax rounded over the
    # whole order, total 2.97: the parts come to 2.96.
    order = parse(fixture("tax_inclusive_rounding.json"))
    assert isinstance(order, OrderReceived)
    assert sum(line.amount for line in order.lines) + order.tax == 296
    assert (order.total, order.rounding) == (297, 1)
    assert isinstance(order, OrderReceived) and rejection_reasons(order) == []


def test_a_difference_beyond_a_minor_unit_per_line_is_not_rounding() -> None:
    raw = edited("tax_inclusive_rounding.json", lambda o: o.__setitem__("total", "3.07"))
    order = parse(raw)
    assert isinstance(order, OrderReceived) and order.rounding == 0
    assert [r.code for r in rejection_reasons(order)] == ["TOTAL_MISMATCH"]


def test_a_tampered_body_or_missing_signature_fails_verification() -> None:
    connector = WoocommerceConnector(secret=SECRET)
    headers = fixture_headers("ship_order.json")
    body = fixture("ship_order.json")
    connector.verify(headers, body)
    with pytest.raises(SignatureRejected):
        connector.verify(headers, body.replace(b'"73.37"', b'"7.37"'))
    with pytest.raises(SignatureRejected):
        connector.verify({}, body)
    with pytest.raises(SecretMissing):  # no secret: nothing is taken, not even locally
        WoocommerceConnector(secret="").verify(headers, body)


SAMPLES = [
    SampleOrder(
        external_id="5120", store="brooklyn",
        placed_at=datetime(2026, 11, 25, 9, 30, 5, tzinfo=UTC),
        mode=OrderMode.SHIP, customer_name="Maya Thompson", customer_phone="+1 917 555 0142",
        currency="USD", lines=[SampleLine("TEA-OOLONG", "Oolong tea", 2, 1250),
                               SampleLine("MUG-01", "Stoneware mug", 1, 1800)],
        delivery_fee=800, discount=500, tax=287, address_text="210 Berry St",
        notes="Gift wrap, please",
    ),
    SampleOrder(
        external_id="wc-0042", store="kreuzberg", currency="EUR",
        placed_at=datetime(2026, 11, 25, 7, 0, tzinfo=UTC), mode=OrderMode.PICKUP,
        customer_name="Jonas", customer_phone="+49 30 5550172",
        lines=[SampleLine("BRD-SOUR", "Sauerteigbrot", 1, 500)], packaging_fee=200, tax=35,
    ),
    SampleOrder(
        external_id="88", store="shibuya", currency="JPY",
        placed_at=datetime(2026, 11, 25, 3, 15, 59, 700000, tzinfo=UTC), mode=OrderMode.DELIVERY,
        customer_name="佐藤 遥", customer_phone="+81 90 1234 5678",
        lines=[SampleLine("MATCHA-40", "抹茶缶 40g", 3, 1800)], delivery_fee=500, discount=540,
        address_text="神宮前1-2-3",
    ),
]  # fmt: skip


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.external_id)
@pytest.mark.parametrize("revision", [0, 3])
def test_sample_payload_parses_back_to_the_sample_order(sample: SampleOrder, revision: int) -> None:
    raw, headers = sample_payload(sample, revision=revision, secret=SECRET)
    connector = WoocommerceConnector(secret=SECRET)
    connector.verify(headers, raw)
    event = connector.parse(raw, received_at=NOW, headers=headers)
    assert isinstance(event, OrderModified if revision else OrderReceived)
    assert event.order_id == connector.order_id(sample.external_id)
    assert event.external_id == sample.external_id
    assert [(li.sku, li.name, li.quantity, li.unit_price) for li in event.lines] == [
        (li.sku, li.name, li.quantity, li.unit_price) for li in sample.lines
    ]
    assert (event.delivery_fee, event.packaging_fee, event.discount, event.tax, event.total) == (
        sample.delivery_fee, sample.packaging_fee, sample.discount, sample.tax, sample.total,
    )  # fmt: skip
    assert event.notes == sample.notes
    if isinstance(event, OrderReceived):
        assert event.mode is sample.mode
        assert event.currency == sample.currency
        assert event.placed_at == sample.placed_at.replace(microsecond=0)
        assert (event.customer.name, event.customer.phone) == (
            sample.customer_name, sample.customer_phone,
        )  # fmt: skip
        assert event.location_hint == (sample.store if sample.mode is OrderMode.PICKUP else None)


def test_a_dine_in_sample_becomes_a_pickup_as_woocommerce_has_no_dine_in() -> None:
    raw, _ = sample_payload(replace(SAMPLES[1], mode=OrderMode.DINE_IN))
    event = parse(raw)
    assert isinstance(event, OrderReceived)
    assert (event.mode, event.location_hint) == (OrderMode.PICKUP, "kreuzberg")


def test_an_unsigned_sample_has_no_signature_header() -> None:
    _, headers = sample_payload(SAMPLES[0])
    assert "X-WC-Webhook-Signature" not in headers
    assert headers["X-WC-Webhook-Topic"] == "order.created"
