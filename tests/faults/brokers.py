"""A Kafka cluster of three brokers for one test, and what a fault test does to it.

Started as `oms stack up --brokers 3` starts one (`oms.stack.KafkaCluster`: three KRaft nodes,
each broker and controller, from the stack's pinned jars), but under a home of its own and on
free ports, so the shared stack keeps running beside it. `kill` is kill -9 of one broker;
`restart` starts it again the way `oms stack up` does (every node not running); `in_sync`
reads each partition's in-sync replicas from the cluster's metadata.

    with broker_cluster(tmp_path / "brokers", kafka_libs=libs) as cluster:
        cluster.kill(2)
        ...
        cluster.restart(2)
        cluster.wait_for_in_sync(topic, replicas=3)

or the `three_brokers` fixture (tests/faults/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient

from infra.kafka import admin_config
from infra.settings import Settings
from oms.stack import KafkaCluster, KafkaNode, process_alive

# The suite's own topics on a test cluster have 4 partitions, not the product's 12 (new
# stacks): 17 topics x 12 partitions x 3 copies is 612 replicas for three brokers on two
# cores to create, elect leaders for and replicate, which slows every start for nothing a
# test looks at. A test that needs the product's count passes `partitions=12`.
SUITE_PARTITIONS = 4
IN_SYNC_TIMEOUT_S = 60.0


def free_ports(count: int) -> list[int]:
    """`count` distinct ports the system has just handed out as free."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class BrokerCluster:
    """A running cluster: `settings` reach it (OMS_KAFKA_BOOTSTRAP lists every broker)."""

    kafka: KafkaCluster

    @property
    def settings(self) -> Settings:
        return self.kafka.settings

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    def admin(self) -> AdminClient:
        return AdminClient(admin_config(self.bootstrap))

    def pid(self, node_id: int) -> int:
        pid = self.kafka.node(node_id).process.pid()
        if pid is None:
            raise AssertionError(f"broker {node_id} is not running")
        return pid

    def kill(self, node_id: int) -> None:
        """kill -9 broker `node_id` and wait until it is gone."""
        pid = self.pid(node_id)
        os.kill(pid, signal.SIGKILL)
        while process_alive(pid):
            time.sleep(0.05)

    def restart(self, node_id: int) -> None:
        """Start broker `node_id` again (as `oms stack up` does); returns once every broker
        is registered and the stack's topics answer."""
        if self.kafka.node(node_id).process.pid() is not None:
            raise AssertionError(f"broker {node_id} is still running")
        with _detached():
            self.kafka.up()

    def start_one(self, node_id: int) -> None:
        """Start broker `node_id` alone, without waiting for the others (with two of three
        down, `restart` would wait for a quorum this one restores)."""
        node = self.kafka.node(node_id)
        if node.process.pid() is not None:
            raise AssertionError(f"broker {node_id} is still running")
        with _detached():
            node.start(cluster_id=self.kafka.cluster_id)

    def in_sync(self, topic: str) -> dict[int, list[int]]:
        """Each partition of `topic`: the ids of its in-sync replicas, as the metadata says
        (none while the metadata does not have the topic yet)."""
        found = self.admin().list_topics(topic, timeout=10).topics[topic]
        if found.error is not None:
            return {}
        return {p: sorted(meta.isrs) for p, meta in found.partitions.items()}

    def wait_for_in_sync(
        self, topic: str, *, replicas: int, timeout_s: float = IN_SYNC_TIMEOUT_S
    ) -> dict[int, list[int]]:
        """Until every partition of `topic` has `replicas` in-sync replicas; what it saw last
        if not within `timeout_s` (the caller's assertion says what was missing)."""
        deadline = time.monotonic() + timeout_s
        while True:
            seen = self.in_sync(topic)
            if seen and all(len(isr) == replicas for isr in seen.values()):
                return seen
            if time.monotonic() > deadline:
                return seen
            time.sleep(0.5)


@contextlib.contextmanager
def broker_cluster(
    home: Path, *, kafka_libs: Path, brokers: int = 3, partitions: int = SUITE_PARTITIONS
) -> Iterator[BrokerCluster]:
    """`brokers` KRaft nodes under `home` on free ports, the stack's topics created; every
    node stopped afterwards, whatever happened (SIGKILL after 45 s)."""
    ports = free_ports(2 * brokers)
    nodes = [
        KafkaNode(
            node_id=i + 1,
            host="localhost",
            port=ports[2 * i],
            controller_port=ports[2 * i + 1],
            dir=home / "kafka" / f"node-{i + 1}",
        )
        for i in range(brokers)
    ]
    settings = Settings(home=home, kafka_libs=kafka_libs, kafka_partitions=partitions)
    kafka = KafkaCluster(settings, brokers=brokers, nodes=nodes)
    try:
        with _detached():
            kafka.up()
        yield BrokerCluster(kafka)
    finally:
        kafka.down()


@contextlib.contextmanager
def _detached() -> Iterator[None]:
    """The stack keeps a broker's pid file, not its `Popen`: the object is dropped while the
    broker runs, which warns (ResourceWarning). That is by design there."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        yield
