"""Tracking (oms/tracking.py) on the real broker, against the local fakes of SF Express and
EasyPost: a shipment on the order log is polled at its carrier, a verified push is read off
the carrier updates topic, each new status becomes one ShipmentStatusUpdated command and the
delivery an OrderDelivered; a tracker started again sends nothing it already sent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import Consumer, TopicPartition
from pydantic import SecretStr

from connectors.carriers.base import Carrier
from connectors.carriers.sf_express import SfExpress
from connectors.carriers.testing import shipment_request
from events.models import (
    Actor,
    ActorKind,
    Event,
    OrderDelivered,
    ShipmentCreated,
    ShipmentStatusUpdated,
    utc_now,
)
from events.shipping import TrackingEvent, TrackingStatus
from infra.kafka import consumer_config
from infra.keystore import private_codec
from infra.publisher import Publisher
from infra.replay import read_partition
from infra.settings import Settings
from oms.tracking import Tracker, read_updates_record, updates_record
from tests.connectors.carriers.fake_easypost import API_KEY as EASYPOST_KEY
from tests.connectors.carriers.fake_easypost import WEBHOOK_SECRET as EASYPOST_SECRET
from tests.connectors.carriers.fake_easypost import FakeEasyPost, fake_easypost
from tests.connectors.carriers.fake_sf import CHECK_WORD, MONTHLY_CARD, PARTNER_ID, FakeSf, fake_sf

pytestmark = pytest.mark.integration
PACKER = Actor(kind=ActorKind.USER, id="packer-1")


@pytest.fixture
def fakes() -> Iterator[tuple[FakeSf, FakeEasyPost]]:
    with fake_sf() as sf, fake_easypost() as easypost:
        yield sf, easypost


def sf_client(fake: FakeSf) -> SfExpress:
    return SfExpress(
        partner_id=PARTNER_ID,
        check_word=SecretStr(CHECK_WORD),
        monthly_card=MONTHLY_CARD,
        api_url=fake.url,
    )


def created(order_id: str, carrier: str, tracking_number: str) -> ShipmentCreated:
    now = utc_now() - timedelta(hours=2)
    return ShipmentCreated(
        event_id=f"s-{order_id}", order_id=order_id, sequence=4, occurred_at=now,
        recorded_at=now, correlation_id=order_id, actor=PACKER, channel="tmall",
        external_id=order_id.upper(), shipment_id=f"{carrier}:{tracking_number}",
        carrier=carrier, service="2", tracking_number=tracking_number, location="W01",
    )  # fmt: skip


def logged_commands(settings: Settings) -> list[Event]:
    codec = private_codec(settings)
    found: list[Event] = []
    for partition in range(settings.kafka_partitions):
        found += read_partition(
            settings.kafka_bootstrap, settings.topics.order_commands, partition, codec=codec
        )
    return found


def test_polled_and_pushed_statuses_become_commands_once_and_delivery_is_told(
    isolated_settings: Settings, fakes: tuple[FakeSf, FakeEasyPost]
) -> None:
    settings = isolated_settings
    sf, _ = fakes
    client = sf_client(sf)
    shipment = client.create(shipment_request("o-track-1@W01"), "2")
    waybill = shipment.tracking_number
    # (SF's fake records two routes with each order: picked up, then sorted in transit.)
    publisher = Publisher(settings)
    publisher.publish(settings.topics.orders, created("o-track-1", "sf", waybill))
    # A push for a shipment not on the log yet waits for it (verified as the API route does).
    other = client.create(shipment_request("o-track-2@W01"), "2")
    push_body, push_headers = sf.signed_push(other.tracking_number)
    pushed = client.parse_push(push_body, push_headers)  # as the API route does
    publisher.produce(
        settings.topics.carrier_updates, f"sf:{other.tracking_number}", updates_record("sf", pushed)
    )
    publisher.flush(30)
    carriers: dict[str, Carrier] = {"sf": client}

    tracker = Tracker(settings, carriers=carriers, poll_every_s=3600)
    assert tracker.health.why_not_ready() is not None  # (/readyz) nothing read yet
    tracker.run(until=lambda t: t.stats.polled >= 1 and t.stats.pushed >= 1)
    assert tracker.health.why_not_ready() is None  # it polled: it had read the logs to their end
    assert tracker.stats.commands == 2  # picked up, in transit; the push waits
    publisher.publish(settings.topics.orders, created("o-track-2", "sf", other.tracking_number))
    publisher.flush(30)
    tracker.run(until=lambda t: t.stats.commands >= 4)

    commands = logged_commands(settings)
    statuses = [(c.order_id, c.status) for c in commands if isinstance(c, ShipmentStatusUpdated)]
    assert sorted(statuses) == [
        ("o-track-1", "in_transit"),
        ("o-track-1", "picked_up"),
        ("o-track-2", "delivered"),
    ]
    delivered = [c for c in commands if isinstance(c, OrderDelivered)]
    assert [d.order_id for d in delivered] == ["o-track-2"]
    first = next(c for c in commands if isinstance(c, ShipmentStatusUpdated))
    assert first.carrier == "sf" and first.carrier_status and first.actor.id == "tracker"

    # What the agent logged is seen: a new tracker (a restart) sends nothing again...
    for command in commands:
        publisher.publish(settings.topics.orders, command)
    publisher.flush(30)
    again = Tracker(settings, carriers=carriers, poll_every_s=0)
    again.run(until=lambda t: t.stats.polled >= 1)
    assert again.stats.commands == 0
    # ... and a new route is told (o-track-2 is delivered: no longer followed).
    sf.add_route(waybill, "80", "已签收", at=utc_now() - timedelta(minutes=5))
    again.run(until=lambda t: t.stats.commands >= 2)
    told = {c.event_id for c in commands}
    latest = [c for c in logged_commands(settings) if c.event_id not in told]
    assert sorted(type(c).__name__ for c in latest) == ["OrderDelivered", "ShipmentStatusUpdated"]
    assert {c.order_id for c in latest} == {"o-track-1"}


def updates_on_the_topic(settings: Settings) -> list[tuple[str, list[TrackingEvent]]]:
    consumer = Consumer(consumer_config(settings.kafka_bootstrap, group_id="test-updates"))
    topic = settings.topics.carrier_updates
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        found = []
        for message in consumer.consume(100, timeout=3):
            if message.error() is None:
                found.append(read_updates_record(message.value() or b""))
        return found
    finally:
        consumer.close()


async def test_a_push_that_verifies_goes_on_the_updates_topic_and_one_that_does_not_is_refused(
    isolated_settings: Settings, fakes: tuple[FakeSf, FakeEasyPost], tmp_path: Path
) -> None:
    from connectors.dead_letters import read_dead_letters
    from oms.api import create_app

    _, easypost = fakes
    shipping = tmp_path / "shipping.json"
    shipping.write_text('{"origins": {}}', encoding="utf-8")
    settings = isolated_settings.model_copy(
        update={
            "carriers": ["easypost"],
            "shipping_file": shipping,
            "easypost_api_key": SecretStr(EASYPOST_KEY),
            "easypost_webhook_secret": SecretStr(EASYPOST_SECRET),
            "easypost_api_url": easypost.url,
        }
    )
    body, headers = easypost.signed_push(status="delivered")
    tracking = json.loads(body)["result"]["tracking_code"]
    async with TestClient(TestServer(create_app(settings))) as client:
        answer = await client.post("/carriers/easypost/push", data=body, headers=headers)
        assert answer.status == 200, await answer.text()
        tampered = body.replace(b"delivered", b"returned!", 1)
        refused = await client.post("/carriers/easypost/push", data=tampered, headers=headers)
        assert refused.status == 401
        unknown = await client.post("/carriers/dhl/push", data=body, headers=headers)
        assert unknown.status == 404
    [(carrier, events)] = updates_on_the_topic(settings)
    assert carrier == "easypost"
    assert [(e.tracking_number, e.status) for e in events][-1] == (
        tracking,
        TrackingStatus.DELIVERED,
    )
    letters = [
        d for d in read_dead_letters(settings, timeout_s=10) if d.source == "carrier:easypost"
    ]
    assert [d.raw for d in letters] == [tampered]
