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
            "sf": SfExpress(partner_id=PARTNER_ID, check_word=SecretStr(CHECK_WORD),
                            monthly_card=MONTHLY_CARD, api_url=sf.url),
            "jdl": JdLogistics(app_key=APP_KEY, app_secret=SecretStr(APP_SECRET),
                               access_token=SecretStr(ACCESS_TOKEN), customer_code=CUSTOMER_CODE,
                               api_url=jd.url),
        }  # fmt: skip
        yield sf, jd, clients


def order(n: int, *, location: str, ready: bool = True, sku: str = "TEA-250") -> list[Event]:
    now = utc_now() - timedelta(hours=1)
    order_id = f"ship-{n}"
    placed = received(
        event_id=f"r-{order_id}", order_id=order_id, correlation_id=order_id,
        external_id=f"TB{n:05d}", channel="tmall", mode=OrderMode.SHIP, placed_at=now,
        occurred_at=now, recorded_at=now, delivery_fee=0, total=5600,
        lines=[OrderLine(sku=sku, name="龙井茶 250g", quantity=2, unit_price=2800)],
        customer=Customer(name=f"买家{n}", phone=f"1390000{n:04d}"),
        address=Address(text=f"科技园南区 {n} 栋", province="广东省", city="深圳市",
                        district="南山区", postal_code="518057", country="CN"),
    )  # fmt: skip
    envelope = {
        "order_id": order_id, "occurred_at": now, "recorded_at": now,
        "correlation_id": order_id, "actor": OPERATOR, "channel": "tmall",
        "external_id": placed.external_id,
    }  # fmt: skip
    events: list[Event] = [
        placed,
        OrderRouted(
            event_id=f"t-{order_id}",
            sequence=2,
            location=location,
            groups=[],
            reasons=[],
            **envelope,
        ),  # fmt: skip
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
        order(1, location="W01") + order(2, location="W01")
        + order(3, location="W01", sku="ICE-CREAM")  # chilled: nobody here keeps it cold
        + order(4, location="W02")  # another location's
        + order(5, location="W01", ready=False)  # not packed yet
    )  # fmt: skip
    for event in history:
        publisher.publish(settings.topics.orders, event)
    publisher.flush(30)
    config = ShippingConfig(
        origins={"W01": SENDER},
        products={"ICE-CREAM": ProductShipping(weight_g=600, temperature=Temperature.CHILLED)},
        tracking_url=TRACK,
    )

    report = run_wave(settings, "W01", carriers=clients, config=config, by=OPERATOR,
                      out_dir=tmp_path / "waves")  # fmt: skip

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
    for page, shipped in zip((pages[1], pages[3]), report.shipped, strict=True):
        shipment = shipped.shipment
        assert page == sorted([
            f"CODE-128:{shipment.tracking_number}",
            f"QR-Code:{TRACK.format(token=tracking_token(shipment))}",
        ])  # fmt: skip
    # Run again: the carriers answer the same shipments, the agent gets the same commands.
    bought = len(sf.orders) + len(jd.orders)
    again = run_wave(settings, "W01", carriers=clients, config=config, by=OPERATOR,
                     out_dir=tmp_path / "waves")  # fmt: skip
    assert len(sf.orders) + len(jd.orders) == bought == 2
    assert {s.shipment.tracking_number for s in again.shipped} == {
        e.tracking_number for e in created
    }
    assert {e.event_id for e in commands(settings)} == {e.event_id for e in created}
