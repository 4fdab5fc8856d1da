"""The benchmarks' synthetic histories: what they say they wrote is what is on the topics (the
projector bench waits for exactly that many events, so a miscount makes it wait for good)."""

from __future__ import annotations

from confluent_kafka import Consumer, TopicPartition

from bench.projection import produce_history
from infra.settings import Settings


def _on_topic(settings: Settings, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "count"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        )
    finally:
        consumer.close()


def test_a_history_counts_every_event_it_produced(isolated_settings: Settings) -> None:
    produced = produce_history(isolated_settings, events=400, finished=0.5)
    topics = isolated_settings.topics
    on_topics = _on_topic(isolated_settings, topics.orders) + _on_topic(
        isolated_settings, topics.inventory
    )
    # 100 orders: half routed and prioritised (4 events, one in five with a reservation on
    # the ledger), half finished (9 events), and the ledger's receipt.
    assert on_topics > 400
    assert produced == on_topics
