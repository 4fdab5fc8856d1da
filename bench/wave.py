"""`oms bench wave`: a shipping wave of 1,000 orders with its labels and PDF (target ≤ 10 s,
docs/carriers.md). The orders (received with an address, routed to W01 and ready, mode ship)
are written to scratch topics first; the clock runs from the wave's start — reading the order
log with the keys, rate-shopping every order across SF Express and JD Logistics, buying each
label, writing the PDF of slips and labels, the ShipmentCreated commands acknowledged — to its
end. The carriers are the local fakes of tests/connectors/carriers (they check every signature
as the real ones do) in a process of their own (`bench/carrier_fakes.py`), as carriers are on
machines of their own; a real carrier's round trips are the network's, not ours, and would be
what a wave waits on most.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.kafka_tools import scratch_topics
from events.models import (
    Actor,
    ActorKind,
    Address,
    Customer,
    Event,
    OrderLine,
    OrderMode,
    OrderReady,
    OrderReceived,
    OrderRouted,
    utc_now,
)
from infra.publisher import Publisher
from infra.settings import Settings, get_settings

TARGET_S = 10.0
PACKER = Actor(kind=ActorKind.USER, id="bench")


def ready_orders(count: int, *, run: str) -> list[Event]:
    """`count` Tmall orders at W01: received (address, customer), routed, ready."""
    now = utc_now() - timedelta(hours=1)
    events: list[Event] = []
    for n in range(count):
        order_id = f"{run}-{n}"
        envelope: dict[str, Any] = {
            "order_id": order_id,
            "occurred_at": now,
            "recorded_at": now,
            "correlation_id": order_id,
            "channel": "tmall",
            "external_id": f"{run}{n:06d}",
        }
        events.append(
            OrderReceived(
                **envelope,
                event_id=f"r-{order_id}",
                sequence=1,
                actor=Actor(kind=ActorKind.CHANNEL, id="tmall"),
                mode=OrderMode.SHIP,
                currency="CNY",
                lines=[
                    OrderLine(
                        sku="TEA-250", name="龙井茶 250g", quantity=1 + n % 3, unit_price=8800
                    )
                ],
                total=8800 * (1 + n % 3),
                payment_status="paid",
                placed_at=now,
                customer=Customer(name=f"买家{n}", phone=f"139{n:08d}"),
                address=Address(
                    text=f"科技园南区 {n % 50} 栋 {n} 室",
                    province="广东省",
                    city="深圳市",
                    district="南山区",
                    postal_code="518057",
                    country="CN",
                ),
            )
        )
        events.append(
            OrderRouted(
                **envelope,
                event_id=f"t-{order_id}",
                sequence=2,
                actor=PACKER,
                location="W01",
                groups=[],
                reasons=[],
            )
        )
        events.append(
            OrderReady(
                **envelope, event_id=f"y-{order_id}", sequence=3, actor=PACKER, location="W01"
            )
        )
    return events


def run(*, orders: int = 1000) -> dict[str, Any]:
    settings = get_settings()
    fakes = subprocess.Popen(
        [sys.executable, "-m", "bench.carrier_fakes"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert fakes.stdout is not None
        sf_url, jd_url = fakes.stdout.readline().split()
        figures = _wave(settings, orders=orders, sf_url=sf_url, jd_url=jd_url)
    finally:
        fakes.terminate()
        fakes.wait(10)
    return figures


def _wave(settings: Settings, *, orders: int, sf_url: str, jd_url: str) -> dict[str, Any]:
    import tempfile

    from pydantic import SecretStr

    from connectors.carriers.base import Carrier
    from connectors.carriers.jd_logistics import JdLogistics
    from connectors.carriers.sf_express import SfExpress
    from connectors.carriers.testing import SENDER
    from oms.shipping import ShippingConfig, run_wave
    from tests.connectors.carriers import fake_jdl, fake_sf

    with (
        scratch_topics(settings, "bench-wave") as scratch,
        tempfile.TemporaryDirectory() as out,
    ):
        publisher = Publisher(scratch)
        for event in ready_orders(orders, run=f"w{int(time.time())}"):
            publisher.publish(scratch.topics.orders, event)
        publisher.flush(60)
        carriers: dict[str, Carrier] = {
            "sf": SfExpress(
                partner_id=fake_sf.PARTNER_ID,
                check_word=SecretStr(fake_sf.CHECK_WORD),
                monthly_card=fake_sf.MONTHLY_CARD,
                api_url=sf_url,
            ),
            "jdl": JdLogistics(
                app_key=fake_jdl.APP_KEY,
                app_secret=SecretStr(fake_jdl.APP_SECRET),
                access_token=SecretStr(fake_jdl.ACCESS_TOKEN),
                customer_code=fake_jdl.CUSTOMER_CODE,
                api_url=jd_url,
            ),
        }
        config = ShippingConfig(origins={"W01": SENDER})
        started = time.perf_counter()
        report = run_wave(
            scratch, "W01", carriers=carriers, config=config, by=PACKER, out_dir=Path(out)
        )
        elapsed = time.perf_counter() - started
        pdf_bytes = report.pdf.stat().st_size if report.pdf else 0
    return {
        "orders": orders,
        "shipped": len(report.shipped),
        "not_shipped": len(report.skipped),
        "seconds": round(elapsed, 2),
        "orders_per_s": round(len(report.shipped) / elapsed, 1),
        "pdf_pages": 2 * len(report.shipped),
        "pdf_bytes": pdf_bytes,
        "target_s": TARGET_S,
        "meets_target": elapsed <= TARGET_S and len(report.shipped) == orders,
    }


def report(figures: dict[str, Any]) -> list[str]:
    verdict = "met" if figures["meets_target"] else "BELOW target"
    return [
        f"wave of {figures['orders']:,} orders: {figures['shipped']:,} shipped in "
        f"{figures['seconds']} s ({figures['orders_per_s']:,.0f} orders/s; target <= "
        f"{figures['target_s']:.0f} s: {verdict}); PDF {figures['pdf_pages']:,} pages, "
        f"{figures['pdf_bytes'] / 1e6:.1f} MB",
    ]
