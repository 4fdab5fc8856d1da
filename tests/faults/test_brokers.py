"""Three brokers, one killed (kill -9): writes with `acks=all` still land and are read back
while it is away, and it rejoins every partition's in-sync replicas when it is back."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import ConfigResource, NewTopic

from infra.kafka import consumer_config, producer_config
from tests.faults.brokers import SUITE_PARTITIONS, BrokerCluster

pytestmark = [pytest.mark.integration, pytest.mark.fault]
ALL = [1, 2, 3]


def produce(cluster: BrokerCluster, topic: str, values: list[bytes]) -> list[str]:
    """Send `values` with acks=all (the suite's one producer configuration); the errors of
    those Kafka did not acknowledge (none, when all went well)."""
    errors: list[str] = []

    def report(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            errors.append(f"{message.value()!r}: {error}")

    producer = Producer(producer_config(cluster.bootstrap, **{"message.timeout.ms": 60_000}))
    for value in values:
        producer.produce(topic, key=value, value=value, on_delivery=report)
        producer.poll(0)
    left = producer.flush(90)
    return errors + [f"{left} not acknowledged within 90 s"] * bool(left)


def consume(cluster: BrokerCluster, topic: str, *, expect: int) -> set[bytes]:
    """What a consumer group reads from the start of `topic`: `expect` values, or what it had
    after 60 s."""
    consumer = Consumer(
        consumer_config(
            cluster.bootstrap,
            group_id=f"g{uuid.uuid4().hex[:8]}",
            **{"auto.offset.reset": "earliest"},
        )
    )
    found: set[bytes] = set()
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while len(found) < expect and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                found.add(message.value() or b"")
    finally:
        consumer.close()
    return found


def test_one_broker_killed_keeps_acks_all_writes_and_reads_and_rejoins_the_isr(
    three_brokers: BrokerCluster,
) -> None:
    cluster = three_brokers
    admin = cluster.admin()
    topic = f"t{uuid.uuid4().hex[:8]}.replicated"
    # No replication factor given: the brokers' defaults (`oms stack up --brokers 3`'s).
    admin.create_topics([NewTopic(topic, num_partitions=3)])[topic].result(timeout=30)
    assert cluster.wait_for_in_sync(topic, replicas=3) == {0: ALL, 1: ALL, 2: ALL}

    metadata = _metadata(admin, topic)
    assert {p: sorted(m.replicas) for p, m in metadata.partitions.items()} == {
        0: ALL,
        1: ALL,
        2: ALL,
    }
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    config = admin.describe_configs([resource])[resource].result(timeout=30)
    assert config["min.insync.replicas"].value == "2"
    assert config["unclean.leader.election.enable"].value == "false"
    # The stack's own topics: 3 copies of each of the suite's partitions.
    orders = admin.list_topics(timeout=10).topics[cluster.settings.topics.orders]
    assert len(orders.partitions) == SUITE_PARTITIONS
    assert all(sorted(m.replicas) == ALL for m in orders.partitions.values())

    before = [f"before-{n}".encode() for n in range(300)]
    assert produce(cluster, topic, before) == []

    victim = metadata.partitions[0].leader  # so at least one partition must change leader
    cluster.kill(victim)
    during = [f"during-{n}".encode() for n in range(300)]
    assert produce(cluster, topic, during) == []  # 2 copies left: min.insync.replicas is met
    survivors = [b for b in ALL if b != victim]
    assert cluster.wait_for_in_sync(topic, replicas=2) == {0: survivors, 1: survivors, 2: survivors}
    assert consume(cluster, topic, expect=600) == set(before + during)

    cluster.restart(victim)
    assert cluster.wait_for_in_sync(topic, replicas=3) == {0: ALL, 1: ALL, 2: ALL}


def _metadata(admin: Any, topic: str, timeout_s: float = 30.0) -> Any:
    """The topic's metadata once the broker asked knows its partitions (a broker's metadata
    cache can lag the controller by a moment after the topic is made)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = admin.list_topics(topic, timeout=10).topics[topic]
        if found.partitions or time.monotonic() > deadline:
            return found
        time.sleep(0.2)
