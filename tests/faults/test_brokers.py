"""Three brokers, one killed (kill -9): writes with `acks=all` still land and are read back
while it is away, and it rejoins every partition's in-sync replicas when it is back. Two
killed: nothing is acknowledged (the quorum and `min.insync.replicas` are gone), nothing
acknowledged before is lost, and writes go on once one of them is back."""

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


def produce(
    cluster: BrokerCluster, topic: str, values: list[bytes], *, timeout_s: float = 60.0
) -> list[str]:
    """Send `values` with acks=all (the suite's one producer configuration); the errors of
    those Kafka did not acknowledge within `timeout_s` each (none, when all went well)."""
    errors: list[str] = []

    def report(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            errors.append(f"{message.value()!r}: {error}")

    timeout_ms = round(timeout_s * 1000)
    producer = Producer(producer_config(cluster.bootstrap, **{"message.timeout.ms": timeout_ms}))
    for value in values:
        producer.produce(topic, key=value, value=value, on_delivery=report)
        producer.poll(0)
    left = producer.flush(timeout_s + 30)
    return errors + [f"{left} not acknowledged in time"] * bool(left)


def consume(
    cluster: BrokerCluster, topic: str, *, expect: int = 0, wanted: set[bytes] | None = None
) -> set[bytes]:
    """What a consumer group reads from the start of `topic`: until it has `expect` values (or
    every one of `wanted`), or what it had after 60 s."""
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
        while time.monotonic() < deadline and (
            not wanted <= found if wanted is not None else len(found) < expect
        ):
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


def test_two_brokers_killed_acknowledge_nothing_lose_nothing_and_resume_with_one_back(
    three_brokers: BrokerCluster,
) -> None:
    cluster = three_brokers
    admin = cluster.admin()
    topic = f"t{uuid.uuid4().hex[:8]}.replicated"
    admin.create_topics([NewTopic(topic, num_partitions=3)])[topic].result(timeout=30)
    assert cluster.wait_for_in_sync(topic, replicas=3) == {0: ALL, 1: ALL, 2: ALL}
    before = [f"before-{n}".encode() for n in range(200)]
    assert produce(cluster, topic, before) == []

    first, second = ALL[:2]
    try:
        cluster.kill(first)
        cluster.kill(second)
        # One copy left: no write may count as written (acks=all, min.insync.replicas=2, and
        # the KRaft quorum is gone with two of three controllers). Each one fails, in time.
        during = [f"during-{n}".encode() for n in range(100)]
        failed = produce(cluster, topic, during, timeout_s=10)
        assert len(failed) == len(during), failed[:5]

        cluster.start_one(first)  # a quorum again: leaders, in-sync replicas, writes
        survivors = sorted([first, ALL[2]])
        in_sync = cluster.wait_for_in_sync(topic, replicas=2)
        assert in_sync == {0: survivors, 1: survivors, 2: survivors}
        after = [f"after-{n}".encode() for n in range(200)]
        assert produce(cluster, topic, after) == []
        # (Read until every acknowledged value is in: failed writes that landed come too.)
        seen = consume(cluster, topic, wanted=set(before + after))
        assert set(before + after) <= seen, "an acknowledged write was lost"
        # A write that failed may still have reached the one broker left (it was never
        # acknowledged): at most those, nothing else.
        assert seen - set(before + after) <= set(during)
    finally:
        for node in (first, second):
            if cluster.kafka.node(node).process.pid() is None:
                cluster.start_one(node)
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
