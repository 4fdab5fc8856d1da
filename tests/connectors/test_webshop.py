from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest

from connectors.base import PayloadRejected, minor_units
from connectors.registry import UnknownChannel, available, connector_for
from connectors.samples import SampleLine, SampleOrder
from connectors.testing import ConnectorConformance
from connectors.webshop import WebshopConnector, sample_payload
from events.models import OrderMode, OrderModified
from tests.conftest import FIXTURES

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def fixture(name: str) -> bytes:
    return (FIXTURES / "webshop" / name).read_bytes()


def test_shipped_order_is_normalised_to_minor_units_and_utc() -> None:
    order = WebshopConnector().parse(fixture("ship_order.json"), received_at=NOW)
    assert order.channel == "webshop"
    assert order.external_id == "5501234567890"
    assert order.mode is OrderMode.SHIP
    assert [(line.sku, line.quantity, line.unit_price) for line in order.lines] == [
        ("TEA-OOLONG", 2, 1200),
        ("GIFTBOX-M", 1, 11200),
    ]
    assert (order.delivery_fee, order.discount, order.total) == (1200, 1000, 13800)
    assert order.placed_at == datetime(2026, 11, 24, 11, 32, 5, tzinfo=UTC)
    assert order.customer.name == "Na Li"
    assert order.address is not None and order.address.text == "88 Nanjing East Rd, Apt 1203"
    assert order.notes == "请周末送达"


def test_pickup_tag_sets_the_mode_and_string_ids_are_kept() -> None:
    order = WebshopConnector().parse(fixture("pickup_order.json"), received_at=NOW)
    assert order.mode is OrderMode.PICKUP
    assert order.external_id == "1043"
    assert order.total == 1950


def test_zero_decimal_currency_uses_whole_units() -> None:
    order = WebshopConnector().parse(fixture("yen_order.json"), received_at=NOW)
    assert order.currency == "JPY"
    assert order.lines[0].unit_price == 1200
    assert order.total == 2400


def test_tax_included_lines_carry_their_tax_and_allocated_discounts() -> None:
    order = WebshopConnector().parse(fixture("tax_included_order.json"), received_at=NOW)
    assert [
        (line.gross, line.discount, line.tax, line.total, line.prices_include_tax)
        for line in order.lines
    ] == [(2500, 0, 399, 2500, True), (999, 100, 144, 899, True)]
    assert (order.tax, order.discount, order.total, order.rounding) == (0, 100, 3399, 0)


def test_redelivered_order_gets_the_same_order_and_event_ids() -> None:
    first = WebshopConnector().parse(fixture("ship_order.json"), received_at=NOW)
    again = WebshopConnector().parse(fixture("ship_order.json"), received_at=datetime.now(UTC))
    assert (first.order_id, first.event_id) == (again.order_id, again.event_id)
    other = json.loads(fixture("ship_order.json"))
    other["id"] = 1
    assert (
        WebshopConnector().parse(json.dumps(other).encode(), received_at=NOW).order_id
        != first.order_id
    )


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda o: o.pop("line_items"), "line_items"),
        (lambda o: o.__setitem__("total_price", "12.345"), "total_price"),
        (lambda o: o.__setitem__("created_at", "2026-11-24T19:32:05"), "created_at"),
        (lambda o: o["line_items"][0].__setitem__("price", "abc"), "line_items.0.price"),
        (lambda o: o["line_items"][0].__setitem__("quantity", "two"), "line_items.0.quantity"),
        # more than the contract's 64-bit integers hold
        (lambda o: o["line_items"][1].__setitem__("quantity", 2**64), "lines[1].quantity"),
        (lambda o: o["line_items"][0].__setitem__("quantity", -(2**63) - 1), "lines[0].quantity"),
    ],
)
def test_bad_payload_is_rejected_naming_the_field(mutate, field) -> None:  # type: ignore[no-untyped-def]
    order = json.loads(fixture("ship_order.json"))
    mutate(order)
    with pytest.raises(PayloadRejected) as caught:
        WebshopConnector().parse(json.dumps(order).encode(), received_at=NOW)
    assert caught.value.field == field


def test_non_json_is_rejected_with_a_reason() -> None:
    with pytest.raises(PayloadRejected, match="not JSON"):
        WebshopConnector().parse(b"{nope", received_at=NOW)


def test_signature_is_checked_when_a_secret_is_set() -> None:
    body = fixture("ship_order.json")
    connector = WebshopConnector(secret="s3cret")
    good = base64.b64encode(hmac.new(b"s3cret", body, hashlib.sha256).digest()).decode()
    connector.verify({"X-Shopify-Hmac-Sha256": good}, body)
    with pytest.raises(PayloadRejected, match="signature"):
        connector.verify({"X-Shopify-Hmac-Sha256": good}, body + b" ")


def test_minor_units_refuses_lost_precision_and_non_numbers() -> None:
    assert minor_units("0.1", currency="CNY", field="f") == 10
    assert minor_units("1.005", currency="KWD", field="f") == 1005
    for bad in ("1.001", "NaN", "ten"):
        with pytest.raises(PayloadRejected):
            minor_units(bad, currency="USD", field="f")


def test_webshop_is_registered_through_its_entry_point() -> None:
    assert available()["webshop"] is WebshopConnector
    assert isinstance(connector_for("webshop"), WebshopConnector)
    with pytest.raises(UnknownChannel, match="webshop"):
        connector_for("fax")


class TestWebshopConformance(ConnectorConformance):
    connector = WebshopConnector(secret="webshop-test-secret")
    fixtures = FIXTURES / "webshop"
    bad_payloads = [
        (b'{"id": 1, "currency": "CNY", "total_price": "1.00", "line_items": []}', "created_at"),
        (b'{"id": 1, "created_at": "2026-11-25T10:00:00Z", "currency": "CNY", '
         b'"total_price": "x", "line_items": []}', "total_price"),
    ]  # fmt: skip


def test_a_revision_becomes_order_modified_of_the_same_order() -> None:
    original = WebshopConnector().parse(fixture("ship_order.json"), received_at=NOW)
    revised = WebshopConnector().parse(fixture("ship_order_modified.json"), received_at=NOW)
    assert isinstance(revised, OrderModified)
    assert revised.order_id == original.order_id
    assert revised.event_id != original.event_id
    assert (revised.total, revised.lines[0].quantity) == (15000, 3)


def test_sample_payloads_parse_back_to_the_sample_order() -> None:
    order = SampleOrder(
        external_id="W-77", store="S01", placed_at=datetime(2026, 11, 25, 3, 4, 5, tzinfo=UTC),
        mode=OrderMode.DELIVERY, lines=[SampleLine("TEA", "乌龙", 2, 1200)],
        customer_name="王伟", customer_phone="13800000000", delivery_fee=500, discount=100,
        tax=80, address_text="上海市南京东路1号", latitude=31.2, longitude=121.4, notes="少辣",
    )  # fmt: skip
    body, headers = sample_payload(order, secret="k")
    WebshopConnector(secret="k").verify(headers, body)
    event = WebshopConnector().parse(body, received_at=NOW)
    assert (event.external_id, event.total, event.tax, event.mode) == (
        "W-77", order.total, 80, OrderMode.DELIVERY)  # fmt: skip
    assert event.placed_at == order.placed_at
    revised = WebshopConnector().parse(sample_payload(order, revision=1)[0], received_at=NOW)
    assert isinstance(revised, OrderModified) and revised.order_id == event.order_id
