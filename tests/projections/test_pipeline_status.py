"""The dashboard's Operations section's data (`GET /pipeline`, projections/pipeline_status.py,
and the report `order_events_per_minute`) on the real broker and each ClickHouse backend: the
worker's lag is its group's, the projector's is its ledger's, and the messages per minute are
those Kafka has at those times."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import Consumer, Producer, TopicPartition

import oms.api
from events.codec import AvroCodec
from events.models import DeadLetter
from infra import offsets
from infra.publisher import Publisher
from infra.settings import Settings
from oms.access import LogAudit
from projections.reports import run_report
from projections.store import connect
from streams.validation import decide
from tests.conftest import ADMIN
from tests.connectors.conftest import FakePublisher
from tests.factories import received
from tests.projections.conftest import project_all

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(
    backend_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[TestClient[Any, Any]]:
    monkeypatch.setattr(oms.api, "AsyncPublisher", FakePublisher)
    app = oms.api.create_app(backend_settings, audit=LogAudit())
    async with TestClient(TestServer(app), headers=ADMIN) as test_client:
        yield test_client


def orders(publisher: Publisher, settings: Settings, *, prefix: str, count: int,
           at: datetime) -> int:  # fmt: skip
    """`count` orders and their verdicts on the order log (every third rejected); events."""
    written = 0
    for n in range(count):
        order = received(event_id=f"{prefix}-e{n}", order_id=f"{prefix}-o{n}",
                         external_id=f"{prefix}-{n}", occurred_at=at, recorded_at=at,
                         placed_at=at, total=6100 if n % 3 else 1)  # fmt: skip
        for event in decide(order, now=at):
            publisher.publish(settings.topics.orders, event)
            written += 1
    return written


async def test_the_pipeline_shows_each_consumers_lag_and_the_messages_per_minute(
    backend_settings: Settings, client: TestClient[Any, Any]
) -> None:
    settings = backend_settings
    topics = settings.topics
    now = datetime.now(UTC)
    publisher = Publisher(settings)
    projected = orders(publisher, settings, prefix="a", count=6, at=now - timedelta(minutes=10))
    publisher.flush(30)
    store = connect(settings.resolved_clickhouse_url)
    try:
        project_all(settings, store)
        report = run_report(store, "order_events_per_minute").as_dicts()
    finally:
        store.close()
    assert sum(r["order_events"] for r in report) == projected == 12
    assert sum(r["rejected"] for r in report) == 2  # orders 0 and 3
    waiting = orders(publisher, settings, prefix="b", count=2, at=now)  # nobody projects them
    for n in range(5):
        publisher.intake(received(event_id=f"i-e{n}", order_id=f"i-o{n}", external_id=f"i{n}"))
    publisher.flush(30)

    # The worker's group (no worker runs) has taken one message of each partition it holds.
    taken = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                      "group.id": settings.consumer_group})  # fmt: skip
    try:
        intake = offsets.partitions_of(taken, [topics.intake], timeout_s=10)
        filled = [p for p, (_, high) in offsets.ends(taken, intake, timeout_s=10).items() if high]
        taken.commit(offsets=[TopicPartition(t, p, 1) for t, p in filled], asynchronous=False)
    finally:
        taken.close()
    # Two dead letters five minutes ago.
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    five_ago = now - timedelta(minutes=5)
    for n in range(2):
        letter = DeadLetter.of(source="test", source_ref=f"r{n}", reason="test", raw=b"x")
        producer.produce(topics.dlq, value=AvroCodec().encode(letter),
                         timestamp=int(five_ago.timestamp() * 1000))  # fmt: skip
    assert producer.flush(30) == 0

    answer = await client.get("/pipeline")
    assert answer.status == 200, await answer.text()
    body = await answer.json()
    lag = {(r["consumer"], r["topic"]): r["lag"] for r in body["lag"]}
    assert lag == {
        ("worker", topics.intake): 5 - len(filled),
        ("worker", topics.order_commands): 0,
        ("worker", topics.stock_commands): 0,
        ("projector", topics.orders): waiting,
        ("projector", topics.inventory): 0,
    }
    for row in body["lag"]:
        assert sum(row["partitions"].values()) == row["lag"]
        assert len(row["partitions"]) == settings.kafka_partitions
    minutes = body["minutes"]
    assert len(minutes) == 60 and minutes == sorted(minutes)
    assert minutes[-1] == now.strftime("%Y-%m-%dT%H:%M:00Z") or minutes[-2] == now.strftime(
        "%Y-%m-%dT%H:%M:00Z"
    )  # (the minute may have turned since)
    flows = body["per_minute"]
    assert sum(flows["intake"]) == 5 and sum(flows["orders"]) == projected + waiting
    assert sum(flows["dead_letters"]) == 2
    assert flows["dead_letters"][minutes.index(five_ago.strftime("%Y-%m-%dT%H:%M:00Z"))] == 2

    refused = await client.get("/pipeline?minutes=5")
    assert refused.status == 400 and (await refused.json())["parameter"] == "minutes"
