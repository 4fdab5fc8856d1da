"""The books for retail (issue 13): sales net of refunds, return rates by SKU and by reason,
shipping cost and on-time delivery per carrier, over eight orders whose every amount,
line and time is known, projected on both backends (the SQL must run on ClickHouse 18.16 as on
current ClickHouse, which reads payloads without JSONExtract)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from events.models import (
    CancelledBy,
    Customer,
    OrderAccepted,
    OrderCancelled,
    OrderDelivered,
    OrderEvent,
    OrderLine,
    OrderMode,
    OrderReceived,
    OrderRefunded,
    ReturnDenied,
    ReturnLine,
    ReturnRequested,
    ShipmentCreated,
)
from infra.publisher import Publisher
from infra.settings import Settings
from projections.reports import run_report
from projections.store import ClickHouseStore
from tests.projections.conftest import isolated, projected_on
from tests.projections.scenario import _History

pytestmark = pytest.mark.integration

T = datetime(2026, 11, 25, 12, 0)  # as ClickHouse holds it: naive UTC
PLACED = datetime.fromisoformat("2026-11-25T12:00:00+00:00")
WINDOW = {"since": T - timedelta(hours=1), "until": T + timedelta(days=5)}
HOUR = 3600
DAY = 24 * HOUR


def shirts(quantity: int) -> OrderLine:
    return OrderLine(sku="SHIRT-M", name="Shirt, M", quantity=quantity, unit_price=9900)


def mugs(quantity: int, unit_price: int = 2500) -> OrderLine:
    return OrderLine(sku="MUG", name="Mug", quantity=quantity, unit_price=unit_price)


def shipment(
    shipment_id: str, cost: int | None, promised_in: timedelta, **fields: Any
) -> tuple[type[OrderEvent], int, dict[str, Any]]:
    """A ShipmentCreated an hour after the previous event, promised `promised_in` after the
    order was placed (`_promised` is resolved by `history`)."""
    carrier, tracking = shipment_id.split(":")
    made = {"shipment_id": shipment_id, "carrier": carrier, "service": "standard",
            "tracking_number": tracking, "cost": cost, "cost_currency": "CNY",
            "location": "W1", "_promised": promised_in}  # fmt: skip
    return ShipmentCreated, HOUR, made | fields


def step(model: type[OrderEvent], after_s: int, **fields: Any) -> Any:
    return model, after_s, fields


def history(
    order_id: str, channel: str, lines: list[OrderLine], steps: list[Any], currency: str = "CNY"
) -> list[OrderEvent]:
    """An accepted ship-mode order placed at PLACED, then `steps` (model, seconds after the
    previous event, fields)."""
    total = sum(line.quantity * line.unit_price for line in lines)
    made = _History(random.Random(0), order_id, channel, f"x-{order_id}", PLACED)
    made.add(OrderReceived, mode=OrderMode.SHIP, currency=currency, lines=lines, total=total,
             payment_status="paid", customer=Customer(name="Lin"),
             placed_at=PLACED)  # fmt: skip
    made.add(OrderAccepted, gap=(10, 10), total=total, currency=currency)
    for model, after_s, fields in steps:
        fields = dict(fields)
        promised_in = fields.pop("_promised", None)
        if promised_in is not None:
            fields.setdefault("promised_by", PLACED + promised_in)
        made.add(model, gap=(after_s, after_s), **fields)
    return made.events


def refunded(refund_id: str, amount: int, currency: str = "CNY") -> Any:
    return step(OrderRefunded, HOUR, refund_id=refund_id, amount=amount, currency=currency,
                reason="returned")  # fmt: skip


TIGHT = "too small [M], tight"  # brackets and a comma inside a string in the lines array
ORDERS = [
    # tmall: delivered a day after placing, promised two days: on time. Two of its three
    # shirts and its mug come back (the mug for the return's reason); 19,800 refunded.
    history("b-1", "tmall", [shirts(3), mugs(1)], [
        shipment("sf:SF1", 1200, timedelta(days=2)),
        step(OrderDelivered, DAY - HOUR - 10),
        step(ReturnRequested, HOUR, return_id="r-1", reason="fit", lines=[
            ReturnLine(sku="SHIRT-M", quantity=2, reason=TIGHT),
            ReturnLine(sku="MUG", quantity=1)]),
        refunded("rf-1", 19800)]),
    # tmall: promised in a day, delivered after two: late. Its shirt comes back damaged (the
    # return's reason, not the line's); 5,000 refunded.
    history("b-2", "tmall", [shirts(1)], [
        shipment("sf:SF2", 1500, timedelta(days=1)),
        step(OrderDelivered, 2 * DAY - HOUR - 10),
        step(ReturnRequested, HOUR, return_id="r-2", reason="damaged",
             lines=[ReturnLine(sku="SHIRT-M", quantity=1)]),
        refunded("rf-2", 5000)]),
    # webshop: shipped by ZTO, never delivered: on the way.
    history("b-3", "webshop", [mugs(2)], [shipment("zto:Z3", 800, timedelta(days=3))]),
    # webshop: cancelled before it shipped and refunded: never a sale, so not in the books.
    history("b-4", "webshop", [mugs(1)], [
        step(OrderCancelled, 60, cancelled_by=CancelledBy.CUSTOMER, reason_code="CHANGED_MIND",
             reason="changed my mind"),
        refunded("rf-4", 2500)]),
    # webshop: one customer's two orders in one ZTO parcel, its 1,000 split 600 / 400 by weight,
    # delivered on time.
    history("b-5", "webshop", [mugs(1)], [
        shipment("zto:Z9", 600, timedelta(days=2), orders=["b-5", "b-6"]),
        step(OrderDelivered, DAY)]),
    history("b-6", "webshop", [shirts(1)], [
        shipment("zto:Z9", 400, timedelta(days=2), orders=["b-5", "b-6"]),
        step(OrderDelivered, DAY)]),
    # webshop: a split order, shipped by JD from two warehouses, delivered in one day.
    history("b-8", "webshop", [shirts(1)], [
        shipment("jdl:J1", 500, timedelta(days=2)),
        shipment("jdl:J2", 500, timedelta(days=2), location="W2"),
        step(OrderDelivered, DAY)]),
    # webshop in USD: the carrier's currency not stated (the order's), its promise (made in
    # Shanghai time, on the log in UTC) missed by two hours; five mugs asked back, denied.
    history("b-7", "webshop", [mugs(5, 400)], [
        shipment("easypost:EP7", 700, timedelta(0), cost_currency=None,
                 promised_by=(PLACED + timedelta(days=1)).astimezone(ZoneInfo("Asia/Shanghai"))),
        step(OrderDelivered, DAY + HOUR - 10),
        step(ReturnRequested, HOUR, return_id="r-3", reason="changed_mind",
             lines=[ReturnLine(sku="MUG", quantity=5)]),
        step(ReturnDenied, HOUR, return_id="r-3", reason="used")], currency="USD"),
]  # fmt: skip


@pytest.fixture(scope="module")
def published(stack_settings: Settings) -> Settings:
    settings = isolated(stack_settings)
    publisher = Publisher(settings)
    for events in ORDERS:
        for event in events:
            publisher.publish(settings.topics.orders, event)
    publisher.flush()
    return settings


@pytest.fixture(scope="module", params=["server", "chdb"])
def store(
    request: pytest.FixtureRequest, published: Settings, chdb_path: Path
) -> Iterator[ClickHouseStore]:
    for _, projected in projected_on(published, request.param, chdb_path):
        yield projected


def report(store: ClickHouseStore, name: str, **params: Any) -> list[dict[str, Any]]:
    return run_report(store, name, **(WINDOW | params)).as_dicts()


def test_net_sales_take_the_refunds_of_sales_off_their_channel(store: ClickHouseStore) -> None:
    rows = report(store, "sales_net_of_refunds")
    got = [(r["channel"], r["currency"], r["gross_sales"], r["refunds"], r["refunded"],
            r["net_sales"]) for r in rows]  # fmt: skip
    # tmall: 3 × 9,900 + 2,500 + 9,900 gross, 19,800 + 5,000 refunded. webshop CNY: mugs of
    # b-3 and b-5, shirts of b-6 and b-8 (the cancelled b-4 and its refund are no sale).
    assert got == [
        ("webshop", "CNY", 27300, 0, 0, 27300),
        ("tmall", "CNY", 42100, 24800, 2, 17300),
        ("webshop", "USD", 2000, 0, 0, 2000),
    ]


def test_net_sales_count_refunds_paid_in_the_window(store: ClickHouseStore) -> None:
    # b-2's refund was paid two days and two hours after the sale: after this window.
    rows = report(store, "sales_net_of_refunds", until=T + timedelta(days=2))
    tmall = next(r for r in rows if r["channel"] == "tmall")
    assert (tmall["gross_sales"], tmall["refunds"], tmall["net_sales"]) == (42100, 19800, 22300)


def test_return_rate_per_sku_pairs_each_line_with_its_own_quantity(
    store: ClickHouseStore,
) -> None:
    rows = report(store, "return_rate_by_sku")
    got = [(r["sku"], r["units_sold"], r["units_returned"], r["returns"],
            float(r["return_rate"])) for r in rows]  # fmt: skip
    # Shirts: 3 + 1 + 1 + 1 sold, 2 + 1 back in two returns. Mugs: 1 + 2 + 1 + 5 sold (not the
    # cancelled one), one back; the five of the denied return do not count.
    assert got == [("SHIRT-M", 6, 3, 2, 0.5), ("MUG", 9, 1, 1, 0.1111)]


def test_returns_by_reason_take_a_lines_reason_else_the_returns(store: ClickHouseStore) -> None:
    rows = report(store, "returns_by_reason")
    got = [(r["reason"], r["returns"], r["units"], r["skus"]) for r in rows]
    # The shirt returned twice for two reasons; r-1's mug under r-1's own reason, "fit".
    assert got == [(TIGHT, 1, 2, 1), ("damaged", 1, 1, 1), ("fit", 1, 1, 1)]


def test_shipping_cost_per_carrier_counts_a_shared_parcel_once(store: ClickHouseStore) -> None:
    rows = report(store, "shipping_cost_by_carrier")
    got = [(r["carrier"], r["currency"], r["shipments"], r["orders"], r["total_cost"],
            r["cost_per_order"]) for r in rows]  # fmt: skip
    assert got == [
        ("sf", "CNY", 2, 2, 2700, 1350),
        ("zto", "CNY", 2, 3, 1800, 600),  # Z3 alone, Z9 for two orders
        ("jdl", "CNY", 2, 1, 1000, 1000),  # one order from two warehouses
        ("easypost", "USD", 1, 1, 700, 700),  # no cost_currency: the order's
    ]


def test_on_time_per_carrier_against_each_shipments_promise(store: ClickHouseStore) -> None:
    rows = report(store, "carrier_on_time")
    got = {r["carrier"]: (r["shipments"], r["delivered"], r["on_time"], r["late"],
                          float(r["on_time_rate"]), r["on_the_way"]) for r in rows}  # fmt: skip
    assert got == {
        "easypost": (1, 1, 0, 1, 0.0, 0),  # two hours after 20:00 Shanghai time
        "jdl": (2, 2, 2, 0, 1.0, 0),
        "sf": (2, 2, 1, 1, 0.5, 0),
        "zto": (2, 1, 1, 0, 1.0, 1),  # the shared parcel once; Z3 on the way
    }
    assert [r["carrier"] for r in rows] == ["easypost", "jdl", "sf", "zto"]


def test_a_delivery_after_the_window_leaves_the_shipment_on_the_way(
    store: ClickHouseStore,
) -> None:
    rows = report(store, "carrier_on_time", until=T + timedelta(days=1, hours=12))
    sf = next(r for r in rows if r["carrier"] == "sf")
    assert (sf["shipments"], sf["delivered"], sf["on_time"], sf["on_the_way"]) == (2, 1, 1, 1)
