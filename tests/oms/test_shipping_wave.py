"""A shipping wave (oms/shipping.py) on the real broker, against the local fakes of SF Express
and JD Logistics: the orders ready to ship at the location are rate-shopped, their labels
bought, the print file written with a packing slip and a 4 × 6 in label per order whose Code
128 and QR codes read back (pdftoppm + zbarimg), and a ShipmentCreated per order sent to the
order agent with the alternatives it beat. Run again, it buys nothing new and sends the same
commands."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from connectors.carriers.base import Carrier
from connectors.carriers.jd_logistics import JdLogistics
from connectors.carriers.sf_express import SfExpress
from connectors.carriers.testing import SENDER
from events.models import (
    Actor,
    ActorKind,
    Address,
    Customer,
    Event,
    FulfilmentGroup,
    LineQuantity,
    OrderLine,
    OrderMode,
    OrderReady,
    OrderRouted,
    ShipmentCreated,
    utc_now,
)
from events.shipping import Temperature
from infra.keystore import private_codec
from infra.publisher import Publisher
from infra.replay import read_partition
from infra.settings import Settings
from oms.shipping import ProductShipping, ShippingConfig, run_wave, tracking_token
from oms.tracking_page import tracking_key
from tests.connectors.carriers.fake_jdl import (
    ACCESS_TOKEN,
    APP_KEY,
    APP_SECRET,
    CUSTOMER_CODE,
    FakeJdl,
    fake_jdl,
)
from tests.connectors.carriers.fake_sf import CHECK_WORD, MONTHLY_CARD, PARTNER_ID, FakeSf, fake_sf
from tests.factories import received

pytestmark = pytest.mark.integration
OPERATOR = Actor(kind=ActorKind.USER, id="packer-1")
TRACK = "https://shop.example/track/{token}"


@pytest.fixture
def carriers() -> Iterator[tuple[FakeSf, FakeJdl, dict[str, Carrier]]]:
    with fake_sf() as sf, fake_jdl() as jd:
        clients: dict[str, Carrier] = {
            "sf": SfExpress(
                partner_id=PARTNER_ID,
                check_word=SecretStr(CHECK_WORD),
                monthly_card=MONTHLY_CARD,
                api_url=sf.url,
            ),
            "jdl": JdLogistics(
                app_key=APP_KEY,
                app_secret=SecretStr(APP_SECRET),
                access_token=SecretStr(ACCESS_TOKEN),
                customer_code=CUSTOMER_CODE,
                api_url=jd.url,
            ),
        }
        yield sf, jd, clients


def order(
    n: int,
    *,
    location: str,
    ready: bool = True,
    sku: str = "TEA-250",
    buyer: int | None = None,
    groups: list[FulfilmentGroup] | None = None,
    lines: list[OrderLine] | None = None,
) -> list[Event]:
    """Order `n` routed to `location` (and ready); `buyer`: whose (default its own) name,
    phone and address; `groups`: split across locations."""
    now = utc_now() - timedelta(hours=1)
    order_id = f"ship-{n}"
    who = n if buyer is None else buyer
    placed = received(
        event_id=f"r-{order_id}",
        order_id=order_id,
        correlation_id=order_id,
        external_id=f"TB{n:05d}",
        channel="tmall",
        mode=OrderMode.SHIP,
        placed_at=now,
        occurred_at=now,
        recorded_at=now,
        delivery_fee=0,
        total=5600,
        lines=lines or [OrderLine(sku=sku, name="龙井茶 250g", quantity=2, unit_price=2800)],
        customer=Customer(name=f"买家{who}", phone=f"1390000{who:04d}"),
        address=Address(
            text=f"科技园南区 {who} 栋",
            province="广东省",
            city="深圳市",
            district="南山区",
            postal_code="518057",
            country="CN",
        ),
    )
    envelope = {
        "order_id": order_id,
        "occurred_at": now,
        "recorded_at": now,
        "correlation_id": order_id,
        "actor": OPERATOR,
        "channel": "tmall",
        "external_id": placed.external_id,
    }
    events: list[Event] = [
        placed,
        OrderRouted(
            event_id=f"t-{order_id}",
            sequence=2,
            location=location,
            groups=groups or [],
            reasons=[],
            **envelope,
        ),
    ]
    if ready:
        events.append(
            OrderReady(event_id=f"y-{order_id}", sequence=3, location=location, **envelope)
        )
    return events


def commands(settings: Settings) -> list[ShipmentCreated]:
    codec = private_codec(settings)
    topic = settings.topics.order_commands
    found: list[ShipmentCreated] = []
    for partition in range(settings.kafka_partitions):
        for event in read_partition(settings.kafka_bootstrap, topic, partition, codec=codec):
            if isinstance(event, ShipmentCreated):
                found.append(event)
    return sorted(found, key=lambda e: e.order_id)


def barcodes(pdf: Path, tmp_path: Path) -> list[list[str]]:
    """Per page, what zbarimg reads off it rendered at 150 dpi."""
    subprocess.run(["pdftoppm", "-r", "150", "-png", str(pdf), str(tmp_path / "page")], check=True)
    pages = []
    for image in sorted(tmp_path.glob("page-*.png")):
        read = subprocess.run(["zbarimg", "-q", str(image)], capture_output=True, text=True)
        pages.append(sorted(read.stdout.splitlines()))
    return pages


@pytest.mark.skipif(
    not (shutil.which("pdftoppm") and shutil.which("zbarimg")),
    reason="pdftoppm and zbarimg are installed by `make label-deps` (make test runs it)",
)
def test_a_wave_buys_the_ready_orders_labels_prints_readable_barcodes_and_tells_the_agent(
    isolated_settings: Settings,
    carriers: tuple[FakeSf, FakeJdl, dict[str, Carrier]],
    tmp_path: Path,
) -> None:
    sf, jd, clients = carriers
    settings = isolated_settings
    publisher = Publisher(settings)
    history = (
        order(1, location="W01")
        + order(2, location="W01")
        + order(3, location="W01", sku="ICE-CREAM")  # chilled: nobody here keeps it cold
        + order(4, location="W02")  # another location's
        + order(5, location="W01", ready=False)  # not packed yet
    )
    for event in history:
        publisher.publish(settings.topics.orders, event)
    publisher.flush(30)
    config = ShippingConfig(
        origins={"W01": SENDER},
        products={"ICE-CREAM": ProductShipping(weight_g=600, temperature=Temperature.CHILLED)},
        tracking_url=TRACK,
    )

    report = run_wave(
        settings, "W01", carriers=clients, config=config, by=OPERATOR, out_dir=tmp_path / "waves"
    )

    assert sorted(s.order.placed.order_id for s in report.shipped) == ["ship-1", "ship-2"]
    assert list(report.skipped) == ["ship-3"]
    assert "no carrier quoted for 1200 g, chilled to CN" in report.skipped["ship-3"]
    assert report.carriers_failed == {}
    created = commands(settings)
    assert [e.order_id for e in created] == ["ship-1", "ship-2"]
    for event, shipped in zip(
        created, sorted(report.shipped, key=lambda s: s.order.placed.order_id), strict=True
    ):
        assert event.tracking_number == shipped.shipment.tracking_number
        assert event.carrier in {"sf", "jdl"} and event.location == "W01"
        assert event.wave == report.wave and event.actor == OPERATOR
        assert event.cost is not None and event.cost > 0 and event.cost_currency == "CNY"
        # The quotes it beat, each with why; none cheaper among those on time.
        assert event.alternatives and all(a.lost in {"price", "late"} for a in event.alternatives)
        assert all(a.price >= event.cost for a in event.alternatives if a.lost == "price")
    # The print file: a slip and a label per order; the label's barcodes read back.
    assert report.pdf is not None and report.pdf.exists()
    pages = barcodes(report.pdf, tmp_path)
    assert len(pages) == 4 and pages[0] == [] and pages[2] == []
    key = tracking_key(settings)
    for page, shipped in zip((pages[1], pages[3]), report.shipped, strict=True):
        shipment, order_id = shipped.shipment, shipped.order.placed.order_id
        token = tracking_token(shipment, order_id=order_id, key=key)
        assert token.startswith(f"{order_id}.")  # the page finds the order by it
        assert page == sorted(
            [
                f"CODE-128:{shipment.tracking_number}",
                f"QR-Code:{TRACK.format(token=token)}",
            ]
        )
    # Run again: the carriers answer the same shipments, the agent gets the same commands.
    bought = len(sf.orders) + len(jd.orders)
    again = run_wave(
        settings, "W01", carriers=clients, config=config, by=OPERATOR, out_dir=tmp_path / "waves"
    )
    assert len(sf.orders) + len(jd.orders) == bought == 2
    assert {s.shipment.tracking_number for s in again.shipped} == {
        e.tracking_number for e in created
    }
    assert {e.event_id for e in commands(settings)} == {e.event_id for e in created}


@pytest.mark.skipif(
    not (shutil.which("pdftoppm") and shutil.which("zbarimg")),
    reason="pdftoppm and zbarimg are installed by `make label-deps` (make test runs it)",
)
def test_one_customers_orders_share_a_parcel_and_a_split_order_ships_from_each_location(
    isolated_settings: Settings,
    carriers: tuple[FakeSf, FakeJdl, dict[str, Carrier]],
    tmp_path: Path,
) -> None:
    sf, jd, clients = carriers
    settings = isolated_settings
    tea = OrderLine(sku="TEA-250", name="龙井茶 250g", quantity=2, unit_price=2800)
    cups = OrderLine(sku="CUP-6", name="茶杯六件套", quantity=1, unit_price=12800)
    split = [
        FulfilmentGroup(location="W01", lines=[LineQuantity(sku="TEA-250", quantity=2)]),
        FulfilmentGroup(location="W02", lines=[LineQuantity(sku="CUP-6", quantity=1)]),
    ]
    history = (
        order(11, location="W01")
        + order(12, location="W01", buyer=11)  # one buyer, twice
        + order(13, location="W01", groups=split, lines=[tea, cups])
    )
    publisher = Publisher(settings)
    for event in history:
        publisher.publish(settings.topics.orders, event)
    publisher.flush(30)
    config = ShippingConfig(
        origins={"W01": SENDER, "W02": SENDER.model_copy(update={"name": "W02"})},
        products={"CUP-6": ProductShipping(weight_g=2000)},
        default_item_g=500,
        tracking_url=TRACK,
    )

    first = run_wave(
        settings, "W01", carriers=clients, config=config, by=OPERATOR, out_dir=tmp_path / "w1"
    )
    parcels = {s.order.placed.order_id: s for s in first.shipped}
    assert sorted(parcels) == ["ship-11", "ship-13"]  # 12 rides with 11
    together = parcels["ship-11"]
    assert [o.placed.order_id for o in together.orders] == ["ship-11", "ship-12"]
    assert together.request.weight_g == 2000  # 2 × 500 g each
    assert parcels["ship-13"].request.weight_g == 1000  # W01's part only: the tea
    created = {e.order_id: e for e in commands(settings)}
    assert created["ship-11"].tracking_number == created["ship-12"].tracking_number
    assert created["ship-11"].orders == ["ship-11", "ship-12"] == created["ship-12"].orders
    assert created["ship-11"].cost + created["ship-12"].cost == together.shipment.price or (
        together.choice.price
    )
    assert len(sf.orders) + len(jd.orders) == 2  # two labels for three orders

    # As the order agent logs it; then W02 ships its part of the split order.
    for event in commands(settings):
        publisher.publish(settings.topics.orders, event)
    publisher.flush(30)
    second = run_wave(
        settings, "W02", carriers=clients, config=config, by=OPERATOR, out_dir=tmp_path / "w2"
    )
    [part] = second.shipped
    assert part.order.placed.order_id == "ship-13" and part.request.weight_g == 2000
    assert part.shipment.reference == "ship-13@W02"
    again = run_wave(
        settings, "W01", carriers=clients, config=config, by=OPERATOR, out_dir=tmp_path / "w3"
    )
    assert again.shipped == []  # shipped from W01 already
