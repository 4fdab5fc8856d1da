"""The projector's metrics and health on the real broker and ClickHouse, scraped as Prometheus
would: not ready before it starts nor after it stops, ready while it projects; the messages
it projected, their delays, the dead letters it wrote; and its lag gauge equal to the real
lag (the partitions' ends less the next offsets of its ledger in ClickHouse)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer

from infra import offsets
from infra.metrics import MetricsServer
from infra.publisher import Publisher
from infra.settings import Settings
from projections.projector import Projector, next_offsets
from projections.queries import event_count
from projections.store import ClickHouseStore, connect
from tests.factories import received
from tests.infra.scrape import Samples, first_answer, scrape, series, value, wait_for_status

pytestmark = pytest.mark.integration


def publish(settings: Settings, count: int, *, prefix: str) -> None:
    publisher = Publisher(settings)
    for n in range(count):
        order_id = f"{prefix}-{n}"
        publisher.publish(
            settings.topics.orders,
            received(event_id=f"e-{order_id}", order_id=order_id, external_id=order_id),
        )
    publisher.flush(30)


def real_lag(settings: Settings, store: ClickHouseStore) -> dict[tuple[str, str], float]:
    """Per partition of the order log: its end less where the ledger says to go on."""
    topic = settings.topics.orders
    resume = next_offsets(store, [topic])
    probe = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "lag-check"})
    try:
        partitions = offsets.partitions_of(probe, [topic], timeout_s=10)
        ends = offsets.ends(probe, partitions, timeout_s=10)
    finally:
        probe.close()
    return {
        (t, str(p)): float(high - max(resume.get((t, p), low), low))
        for (t, p), (low, high) in ends.items()
    }


def lag_gauge(samples: Samples, topic: str) -> dict[tuple[str, str], float]:
    found = {}
    for labels, messages in series(samples, "oms_consumer_lag").items():
        named = dict(labels)
        if named["topic"] == topic:
            found[(named["topic"], named["partition"])] = messages
    return found


@pytest.fixture
def projector(isolated_settings: Settings, store: ClickHouseStore) -> Iterator[Projector]:
    yield Projector(settings=isolated_settings, store=store, batch_seconds=0.2, lease=False)


def test_the_projector_counts_what_it_projects_and_its_lag_gauge_is_the_real_lag(
    isolated_settings: Settings, store: ClickHouseStore, projector: Projector
) -> None:
    settings = isolated_settings
    topics = settings.topics
    reader = connect(settings.resolved_clickhouse_url)  # the projector's own is busy
    server = MetricsServer(
        host="127.0.0.1", port=0, health=projector.health, collectors=[projector.consumer_lag()]
    )
    url = f"http://127.0.0.1:{server.port}"
    try:
        status, body = first_answer(f"{url}/readyz")
        assert (status, body["reason"]) == (503, "not started")
        before = scrape(f"{url}/metrics")

        publish(settings, 6, prefix="a")
        publisher = Publisher(settings)
        publisher.produce(topics.orders, "x", b"\x00\x00\x00\x00\x01\xff\xff")  # no event
        publisher.flush(30)
        stop = threading.Event()
        running = threading.Thread(target=projector.run, kwargs={"until": lambda _: stop.is_set()})
        running.start()
        try:
            wait_for_status(f"{url}/readyz", 200)  # migrated, connected, projecting
            deadline = time.monotonic() + 60
            while event_count(reader) < 6 or projector.lag() > 0:
                assert time.monotonic() < deadline, "not projected within a minute"
                time.sleep(0.1)
            during = scrape(f"{url}/metrics")
        finally:
            stop.set()
            running.join(60)

        def moved(name: str, **labels: str) -> float:
            return value(during, name, **labels) - value(before, name, **labels)

        assert moved("oms_consumed_total", topic=topics.orders) == 7
        assert moved("oms_projector_event_delay_seconds_count", topic=topics.orders) == 7
        assert moved("oms_dead_letters_total", source=topics.orders) == 1
        assert moved("oms_produced_total", topic=topics.dlq) == 1
        freshness = value(during, "oms_projector_freshness_seconds", topic=topics.orders)
        # The gauge is the oldest event of the last batch: never more than all delays summed.
        assert 0 < freshness <= moved("oms_projector_event_delay_seconds_sum", topic=topics.orders)
        assert lag_gauge(during, topics.orders) == real_lag(settings, reader)
        assert sum(lag_gauge(during, topics.orders).values()) == 0

        status, body = first_answer(f"{url}/readyz")
        assert (status, body["reason"]) == (503, "stopped")
        publish(settings, 5, prefix="b")  # nobody projects them: the lag is theirs
        after = scrape(f"{url}/metrics")
        assert lag_gauge(after, topics.orders) == real_lag(settings, reader)
        assert sum(lag_gauge(after, topics.orders).values()) == 5
        assert first_answer(f"{url}/livez") == (200, {"status": "ok"})
    finally:
        server.close()
        reader.close()
