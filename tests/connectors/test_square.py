from __future__ import annotations

import json
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import pytest

from connectors.base import PayloadRejected, SecretMissing, SignatureRejected
from connectors.samples import SampleLine, SampleOrder
from connectors.square import SquareConnector, sample_payload
from connectors.testing import ConnectorConformance
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
SECRET = "square-test-secret"


def fixture(name: str) -> bytes:
    return (FIXTURES / "square" / name).read_bytes()


def parse(raw: bytes) -> OrderReceived | OrderModified:
    return SquareConnector().parse(raw, received_at=NOW)


def edited(name: str, change: Any) -> bytes:
    document = json.loads(fixture(name))
    change(document.get("order", document))
    return json.dumps(document).encode()


class TestSquareConformance(ConnectorConformance):
    connector = SquareConnector(secret=SECRET)
    fixtures = FIXTURES / "square"
    bad_payloads = [
        (b'{"order": {"id": "A", "created_at": "2026-11-25T10:00:00Z", "line_items": [], '
         b'"total_money": {"amount": 0, "currency": "USD"}}}', "location_id"),
        (b'{"id": "A", "location_id": "L1", "created_at": "2026-11-25T10:00:00", '
         b'"line_items": [], "total_money": {"amount": 0, "currency": "USD"}}', "created_at"),
        (b'{"id": "A", "location_id": "L1", "created_at": "2026-11-25T10:00:00Z", '
         b'"line_items": [{"name": "Coffee", "quantity": "1.5.0", "base_price_money": '
         b'{"amount": 300, "currency": "USD"}}], "total_money": {"amount": 450, '
         b'"currency": "USD"}}', "line_items.0.quantity"),
        (b'{"id": "A", "location_id": "L1", "created_at": "2026-11-25T10:00:00Z", '
         b'"line_items": [{"name": "Rope", "quantity": "2", "quantity_unit": {'
         b'"measurement_unit": {"length_unit": "IMPERIAL_FOOT"}}, "base_price_money": '
         b'{"amount": 300, "currency": "USD"}}], "total_money": {"amount": 600, '
         b'"currency": "USD"}}', "line_items.0.quantity_unit.measurement_unit"),
        (b'{"id": "A", "location_id": "L1", "created_at": "2026-11-25T10:00:00Z", '
         b'"line_items": [{"name": "Coffee", "quantity": "1", "base_price_money": '
         b'{"amount": "3.00", "currency": "USD"}}], "total_money": {"amount": 300, '
         b'"currency": "USD"}}', "line_items.0.base_price_money.amount"),
        (b'{"id": "A", "location_id": "L1", "created_at": "2026-11-25T10:00:00Z", '
         b'"line_items": [], "fulfillments": [{"type": "TELEPORT"}], '
         b'"total_money": {"amount": 0, "currency": "USD"}}', "fulfillments.0.type"),
        (b'{"id": "A", "location_id": "L1", "created_at": "2026-11-25T10:00:00Z", '
         b'"line_items": [], "total_money": {"amount": 0}}', "total_money.currency"),
    ]  # fmt: skip


def test_pickup_order_maps_modifiers_discount_tax_and_pickup_time() -> None:
    order = parse(fixture("pickup_order.json"))
    assert isinstance(order, OrderReceived)
    assert (order.channel, order.external_id) == ("square", "kNq8RbPZ3tMvYcW2xLh7GfDsA4eZY")
    assert (order.mode, order.currency, order.location_hint) == (
        OrderMode.PICKUP, "USD", "L8Q2ZK4T9RB3M",
    )  # fmt: skip
    assert order.lines == [
        OrderLine(sku="W62UWFY35CWMYGVWK6TWJDNI", name="Latte", quantity=2, unit_price=725,
                  options=["Large", "Oat Milk", "Extra Shot"], gross=1450, discount=159,
                  tax=114, total=1405),
        OrderLine(sku="HK3GFZCSGRAQBPEWTFYVQPGA", name="Blueberry Muffin", quantity=1,
                  unit_price=375, gross=375, discount=41, tax=30, total=364),
    ]  # fmt: skip
    assert (order.delivery_fee, order.packaging_fee, order.discount, order.tax, order.total) == (
        0, 0, 200, 144, 1769,
    )  # fmt: skip
    assert order.placed_at == datetime(2026, 11, 25, 14, 8, 31, 482000, tzinfo=UTC)
    assert order.requested_at == datetime(2026, 11, 25, 14, 30, tzinfo=UTC)
    assert order.customer == Customer(
        id="JDKYHBWT1D4F8MFH63DBMEN8Y4", name="Priya Raman", phone="+12125550199",
        email="priya.raman@example.com",
    )  # fmt: skip
    assert order.notes == "Name on the cups: Priya"
    assert order.payment_status is PaymentStatus.PAID
    assert order.address is None


def test_a_later_version_revises_the_same_order_as_version_minus_one() -> None:
    original = parse(fixture("pickup_order.json"))
    revised = parse(fixture("pickup_order_modified.json"))
    assert isinstance(revised, OrderModified)
    assert (revised.order_id, revised.revision, revised.sequence) == (original.order_id, 2, 3)
    assert revised.occurred_at == datetime(2026, 11, 25, 14, 12, 5, 220000, tzinfo=UTC)
    assert (revised.lines[1].quantity, revised.tax, revised.total) == (2, 178, 2178)


def test_an_in_store_sale_is_dine_in_with_inclusive_vat_and_the_tip_as_a_service_fee() -> None:
    order = parse(fixture("dine_in_order.json"))
    assert isinstance(order, OrderReceived)
    assert order.mode is OrderMode.DINE_IN
    assert order.tax == 0  # VAT is inside the prices
    assert (order.packaging_fee, order.tip, order.total) == (0, 300, 2675)  # a 3.00 tip
    assert order.lines[1].options == ["Extra Bacon"]  # the zero-quantity modifier is left out
    assert order.lines[1].unit_price == 1400
    assert (order.customer.name, order.customer.phone) == ("Oliver Bennett", "+447700900123")
    assert order.notes == "Table 7, one high chair"
    assert order.payment_status is PaymentStatus.PAID


def test_a_delivery_fee_service_charge_is_the_delivery_fee_and_others_are_packaging() -> None:
    order = parse(fixture("delivery_order.json"))  # the bare Order object, no wrapper
    assert isinstance(order, OrderReceived)
    assert (order.mode, order.delivery_fee, order.packaging_fee, order.tax) == (
        OrderMode.DELIVERY, 499, 75, 620,
    )  # fmt: skip
    assert order.address is not None
    assert (order.address.text, order.address.city, order.address.country) == (
        "4521 Rue Saint-Denis, App. 3", "Montréal", "CA",
    )  # fmt: skip
    assert order.requested_at == datetime(2026, 11, 25, 23, 50, tzinfo=UTC)
    assert order.payment_status is PaymentStatus.PENDING  # the card is only authorised


def test_zero_decimal_currency_amounts_are_taken_as_they_are() -> None:
    order = parse(fixture("shipment_order.json"))
    assert isinstance(order, OrderReceived)
    assert (order.mode, order.currency) == (OrderMode.SHIP, "JPY")
    assert (order.lines[0].unit_price, order.delivery_fee, order.discount, order.total) == (
        1800, 800, 600, 6200,
    )  # fmt: skip
    assert order.notes == "土日の配達希望"


@pytest.mark.parametrize(
    ("fulfillments", "mode"),
    [
        ([{"type": "PICKUP", "pickup_details": {}}], OrderMode.PICKUP),
        ([{"type": "SHIPMENT", "shipment_details": {}}], OrderMode.SHIP),
        ([{"type": "DELIVERY", "delivery_details": {}}], OrderMode.DELIVERY),
        ([], OrderMode.DINE_IN),
    ],
)
def test_the_fulfillment_type_decides_the_mode(
    fulfillments: list[dict[str, Any]], mode: OrderMode
) -> None:
    order = parse(edited("pickup_order.json", lambda o: o.update(fulfillments=fulfillments)))
    assert isinstance(order, OrderReceived)
    assert order.mode is mode


@pytest.mark.parametrize(
    ("tenders", "state", "status"),
    [
        ([], "OPEN", PaymentStatus.UNPAID),
        ([{"type": "CASH", "amount_money": {"amount": 1000, "currency": "USD"}}], "OPEN",
         PaymentStatus.PARTIALLY_PAID),
        ([{"type": "CARD", "amount_money": {"amount": 1769, "currency": "USD"},
           "card_details": {"status": "VOIDED"}}], "OPEN", PaymentStatus.UNPAID),
        ([], "COMPLETED", PaymentStatus.PAID),
    ],
)  # fmt: skip
def test_tenders_decide_the_payment_status(
    tenders: list[dict[str, Any]], state: str, status: PaymentStatus
) -> None:
    order = parse(edited("pickup_order.json", lambda o: o.update(tenders=tenders, state=state)))
    assert isinstance(order, OrderReceived)
    assert order.payment_status is status


def test_the_signature_covers_the_notification_url_and_the_body() -> None:
    body = fixture("pickup_order.json")
    headers = json.loads(fixture("pickup_order.headers.json"))
    SquareConnector(secret=SECRET).verify(headers, body)
    with pytest.raises(SignatureRejected):
        SquareConnector(secret=SECRET).verify(headers, body.replace(b"1769", b"1069"))
    with pytest.raises(SignatureRejected):
        SquareConnector(secret=SECRET, notification_url="https://elsewhere.example/hook").verify(
            headers, body
        )
    with pytest.raises(SignatureRejected):
        SquareConnector(secret="another-key").verify(headers, body)
    with pytest.raises(SecretMissing):  # no key: nothing is taken, not even locally
        SquareConnector(secret="").verify(headers, body)


def test_the_notification_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMS_SQUARE_NOTIFICATION_URL", "https://oms.example.com/webhooks/square")
    raw, headers = sample_payload(SAMPLES[0], secret=SECRET)
    SquareConnector(secret=SECRET).verify(headers, raw)
    with pytest.raises(SignatureRejected):
        SquareConnector(secret=SECRET, notification_url="http://127.0.0.1:8080/").verify(
            headers, raw
        )


def test_a_quantity_finer_than_a_millionth_is_rejected_naming_the_line() -> None:
    raw = edited("pickup_order.json", lambda o: o["line_items"][1].update(quantity="0.0000005"))
    with pytest.raises(PayloadRejected) as rejected:
        parse(raw)
    assert rejected.value.field == "line_items.1.quantity"
    assert "finer than a millionth" in str(rejected.value)


SAMPLES = [
    SampleOrder(
        external_id="sq-pickup-1", store="L8Q2ZK4T9RB3M", currency="USD",
        placed_at=datetime(2026, 11, 25, 14, 0, 7, 250000, tzinfo=UTC), mode=OrderMode.PICKUP,
        customer_name="Priya Raman", customer_phone="+12125550199",
        lines=[SampleLine("LATTE-L", "Latte", 2, 725), SampleLine("MUFFIN", "Muffin", 1, 375)],
        discount=200, tax=144, notes="Name on the cups: Priya",
    ),
    SampleOrder(
        external_id="sq-delivery-2", store="LM3T8XKQ2V7RB", currency="CAD",
        placed_at=datetime(2026, 11, 25, 23, 5, tzinfo=UTC), mode=OrderMode.DELIVERY,
        customer_name="Camille Tremblay", customer_phone="+15145550123",
        lines=[SampleLine("POUTINE", "Poutine", 2, 1545)], delivery_fee=499, packaging_fee=75,
        tax=464, address_text="4521 Rue Saint-Denis",
    ),
    SampleOrder(
        external_id="sq-table-3", store="LQ5VBGX1F4M2C", currency="GBP",
        placed_at=datetime(2026, 11, 25, 12, 41, 9, tzinfo=UTC), mode=OrderMode.DINE_IN,
        customer_name="Oliver Bennett", customer_phone="+447700900123",
        lines=[SampleLine("FLAT-WHITE", "Flat White", 2, 340)], notes="High chair",
    ),
    SampleOrder(
        external_id="sq-ship-4", store="LJP4TOKYO7X2Q", currency="JPY",
        placed_at=datetime(2026, 11, 25, 1, 12, 40, tzinfo=UTC), mode=OrderMode.SHIP,
        customer_name="佐藤 遥", customer_phone="+819012345678",
        lines=[SampleLine("MATCHA-40", "抹茶缶 40g", 2, 1800)], delivery_fee=800, discount=360,
        address_text="神宮前1-2-3", notes="土日の配達希望",
    ),
]  # fmt: skip


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.external_id)
@pytest.mark.parametrize("revision", [0, 2])
def test_sample_payload_parses_back_to_the_sample_order(sample: SampleOrder, revision: int) -> None:
    raw, headers = sample_payload(sample, revision=revision, secret=SECRET)
    connector = SquareConnector(secret=SECRET)
    connector.verify(headers, raw)
    event = connector.parse(raw, received_at=NOW, headers=headers)
    assert isinstance(event, OrderModified if revision else OrderReceived)
    assert event.order_id == connector.order_id(sample.external_id)
    assert [(li.sku, li.name, li.quantity, li.unit_price) for li in event.lines] == [
        (li.sku, li.name, li.quantity, li.unit_price) for li in sample.lines
    ]
    assert (event.delivery_fee, event.packaging_fee, event.discount, event.tax, event.total) == (
        sample.delivery_fee, sample.packaging_fee, sample.discount, sample.tax, sample.total,
    )  # fmt: skip
    assert event.notes == sample.notes
    if isinstance(event, OrderModified):
        assert event.revision == revision
    else:
        assert (event.mode, event.currency, event.location_hint) == (
            sample.mode, sample.currency, sample.store,
        )  # fmt: skip
        assert event.placed_at.replace(microsecond=0) == sample.placed_at.replace(microsecond=0)
        assert (event.customer.name, event.customer.phone) == (
            sample.customer_name, sample.customer_phone,
        )  # fmt: skip
        assert event.payment_status is PaymentStatus.PAID


def test_inclusive_tax_stays_inside_each_lines_gross() -> None:
    order = parse(fixture("dine_in_order.json"))
    assert [(li.gross, li.tax, li.total, li.prices_include_tax) for li in order.lines] == [
        (680, 113, 680, True), (1400, 233, 1400, True), (295, 50, 295, True),
    ]  # fmt: skip
    assert (order.tax, order.total, sum(li.amount for li in order.lines)) == (0, 2675, 2375)


def test_weighed_items_keep_their_exact_quantity_and_unit() -> None:
    """1.50 lb of beans at $14.99/lb and 0.250 kg of tea: the measure travels exact, in
    millionths of its unit, `quantity` is it rounded up, and the amounts are Square's own."""
    order = parse(fixture("by_weight_order.json"))
    assert isinstance(order, OrderReceived)
    beans, tea, croissants = order.lines
    assert (beans.unit, beans.quantity_millionths, beans.quantity) == ("lb", 1_500_000, 2)
    assert (beans.measure, beans.amount, beans.unit_price) == (Fraction(3, 2), 2249, 1499)
    assert (tea.unit, tea.quantity_millionths, tea.quantity) == ("kg", 250_000, 1)
    assert (tea.measure, tea.amount, tea.unit_price) == (Fraction(1, 4), 1000, 4000)
    assert (croissants.unit, croissants.quantity_millionths, croissants.quantity) == (
        "each",
        None,
        2,
    )
    assert order.total == 3999 == sum(line.amount for line in order.lines)
    assert rejection_reasons(order) == []


def test_the_robustness_corpus_catches_a_crash_and_a_refusal_naming_no_field() -> None:
    """The kit's corpus check fails for a connector that lets another exception escape on
    "1.5E1", or refuses a null without naming the field."""

    class Crashing(SquareConnector):
        def parse(self, raw: bytes, **kwargs: Any) -> Any:
            if b'"1.5E1"' in raw:
                raise ZeroDivisionError("crash")
            return super().parse(raw, **kwargs)

    class Vague(SquareConnector):
        def parse(self, raw: bytes, **kwargs: Any) -> Any:
            if b": null" in raw:
                raise PayloadRejected("something is null")
            return super().parse(raw, **kwargs)

    for connector, says in ((Crashing(), "ZeroDivisionError: crash"),
                            (Vague(), "refused without a field")):  # fmt: skip
        kit = type("Kit", (TestSquareConformance,), {"connector": connector})()
        with pytest.raises(AssertionError, match=says):
            kit.test_real_payloads_mutated_are_accepted_or_refused_naming_the_field()
