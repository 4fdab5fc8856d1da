"""`oms stack` on a second, private stack (own home and ports) so the shared one keeps running."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException

from infra.settings import Settings
from oms.stack import (
    ClickHouseService,
    KafkaCluster,
    KafkaService,
    StackError,
    kafka_nodes,
    process_alive,
)
from tests.faults.brokers import SUITE_PARTITIONS, free_ports

pytestmark = pytest.mark.integration


def oms(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oms.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_up_twice_status_and_down_leave_no_process_behind(
    stack_settings: Settings, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")} | {
        "OMS_HOME": str(tmp_path / "home"),
        "OMS_KAFKA_BOOTSTRAP": "localhost:19092",
        "OMS_KAFKA_CONTROLLER_PORT": "19093",
        "OMS_KAFKA_LIBS": str(stack_settings.kafka_libs_dir),
        "OMS_CLICKHOUSE_PORT": "19000",
        "OMS_CLICKHOUSE_HTTP_PORT": "18123",
    }
    private = Settings(
        home=tmp_path / "home",
        kafka_bootstrap="localhost:19092",
        kafka_controller_port=19093,
        kafka_libs=stack_settings.kafka_libs_dir,
        clickhouse_port=19000,
        clickhouse_http_port=18123,
    )
    services = [KafkaService(private), ClickHouseService(private)]
    try:
        first = oms("stack", "up", env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "kafka: started" in first.stdout
        second = oms("stack", "up", env=env)
        assert second.returncode == 0, second.stderr
        assert "kafka: already running" in second.stdout

        status = oms("stack", "status", env=env)
        assert status.returncode == 0, status.stdout
        assert "localhost:19092" in status.stdout and "answering" in status.stdout
        pids = [s.process.pid() for s in services if s.process.pid() is not None]
        assert pids, "no pid files were written"
    finally:
        down = oms("stack", "down", env=env)
    assert down.returncode == 0, down.stderr
    assert "kafka: stopped" in down.stdout
    for pid in pids:
        assert not process_alive(pid), f"process {pid} is still running"
    after = oms("stack", "status", env=env)
    assert after.returncode == 1
    assert "down" in after.stdout


def test_one_broker_is_the_stack_as_it_always_was(tmp_path: Path) -> None:
    (node,) = kafka_nodes(Settings(home=tmp_path, kafka_bootstrap="localhost:9092"), 1)
    assert (node.node_id, node.address, node.controller_port) == (1, "localhost:9092", 9093)
    assert node.dir == tmp_path / "kafka"


def test_three_brokers_take_the_listed_addresses_else_steps_of_100(tmp_path: Path) -> None:
    listed = Settings(home=tmp_path, kafka_bootstrap="localhost:9092,localhost:9094")
    nodes = kafka_nodes(listed, 3)
    assert [n.address for n in nodes] == ["localhost:9092", "localhost:9094", "localhost:9292"]
    assert [n.controller_port for n in nodes] == [9093, 9193, 9293]
    assert [n.voter for n in nodes] == ["1@localhost:9093", "2@localhost:9193", "3@localhost:9293"]
    assert [n.dir.name for n in nodes] == ["node-1", "node-2", "node-3"]
    clash = Settings(home=tmp_path, kafka_bootstrap="localhost:9092,localhost:9093")
    with pytest.raises(StackError, match="ports are the same"):
        kafka_nodes(clash, 3)


def _controller_base() -> int:
    """A port p with p + 100 and p + 200 free too: the controllers of a 3-broker stack."""
    for base in free_ports(20):
        if base + 200 < 65536 and all(not _taken(base + step) for step in (100, 200)):
            return base
    raise AssertionError("no free controller ports")


def _taken(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_three_brokers_up_status_and_down_through_the_cli(
    stack_settings: Settings, tmp_path: Path
) -> None:
    brokers = ",".join(f"localhost:{port}" for port in free_ports(3))
    native, http = free_ports(2)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")} | {
        "OMS_HOME": str(home),
        "OMS_KAFKA_LIBS": str(stack_settings.kafka_libs_dir),
        "OMS_KAFKA_PARTITIONS": str(SUITE_PARTITIONS),  # the suite's, for speed (see there)
        "OMS_CLICKHOUSE_PORT": str(native),
        "OMS_CLICKHOUSE_HTTP_PORT": str(http),
    }
    first_up = env | {
        "OMS_KAFKA_BOOTSTRAP": brokers,
        "OMS_KAFKA_CONTROLLER_PORT": str(_controller_base()),
    }
    pids: list[int] = []
    try:
        up = oms("stack", "up", "--brokers", "3", env=first_up)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"kafka: started nodes 1, 2, 3 ({brokers})" in up.stdout
        # From now on the stack says where its brokers are: OMS_KAFKA_BOOTSTRAP unset.
        assert Settings(home=home).kafka_bootstrap == brokers
        assert Settings(home=home).replication_factor == 3
        again = oms("stack", "up", env=env)
        assert again.returncode == 0, again.stderr
        assert f"kafka: already running (3 brokers: {brokers})" in again.stdout
        resized = oms("stack", "up", "--brokers", "1", env=env)
        assert resized.returncode != 0 and "not resized in place" in resized.stderr

        status = oms("stack", "status", env=env)
        assert status.returncode == 0, status.stdout
        for n, address in enumerate(brokers.split(","), start=1):
            assert any(
                line.startswith(f"kafka-{n} ") and address in line and line.endswith("answering")
                for line in status.stdout.splitlines()
            ), status.stdout
        cluster = KafkaCluster(Settings(home=home))
        pids = [pid for node in cluster.nodes if (pid := node.process.pid()) is not None]
        assert len(pids) == 3
    finally:
        down = oms("stack", "down", env=env)
    assert down.returncode == 0, down.stderr
    assert "kafka: stopped" in down.stdout
    for pid in pids:
        assert not process_alive(pid), f"broker {pid} is still running"
    after = oms("stack", "status", env=env)
    assert after.returncode == 1
    assert (
        sum(line.startswith("kafka-") and "down" in line for line in after.stdout.splitlines()) == 3
    )


def test_missing_java_gives_a_clear_message(stack_settings: Settings, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")} | {
        "OMS_HOME": str(tmp_path / "home"),
        "OMS_KAFKA_BOOTSTRAP": "localhost:19192",
        "OMS_KAFKA_LIBS": str(tmp_path / "no-libs"),
        "PATH": str(Path(sys.executable).parent),  # neither java nor mvn on it
    }
    result = oms("stack", "up", env=env)
    assert result.returncode != 0
    assert "java and mvn not found" in result.stderr
    assert "docker compose -f docker-compose.kafka.yml up -d" in result.stderr


# The broker outlives the Popen that started it (as under `oms stack up`), which Python flags.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_every_topic_answers_for_its_offsets_once_up_returns(
    stack_settings: Settings, tmp_path: Path
) -> None:
    """A broker that has just started names partition leaders a moment before they serve: the
    demo's first read (right after `up`) failed with NOT_LEADER_FOR_PARTITION."""
    from confluent_kafka import Consumer, TopicPartition

    private = Settings(
        home=tmp_path / "home",
        kafka_bootstrap="localhost:19292",
        kafka_controller_port=19293,
        kafka_libs=stack_settings.kafka_libs_dir,
        clickhouse_port=19200,
        clickhouse_http_port=18323,
    )
    kafka = KafkaService(private)
    try:
        assert kafka.up() == "started"
        consumer = Consumer({"bootstrap.servers": kafka.address, "group.id": "offsets"})
        try:
            for topic in private.topics.all():
                for partition in range(private.kafka_partitions):
                    consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        finally:
            consumer.close()
    finally:
        kafka.down()


def _eventually(read: Any, wanted: Any = ("1000", "delete"), timeout_s: float = 15) -> Any:
    """What `read()` gives once it is `wanted`, or at the timeout: a config change reaches
    the broker's view of the topic a moment after the admin call returns."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = read()
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            continue
        if found == wanted or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _retention(settings: Settings) -> dict[str, tuple[str, str]]:
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in settings.topics.all()]
    found = {}
    for resource, future in admin.describe_configs(resources).items():
        config = future.result(timeout=30)
        found[resource.name] = (config["retention.ms"].value, config["cleanup.policy"].value)
    return found


@pytest.mark.integration
def test_topics_are_created_with_their_retention_and_a_changed_one_is_set_back(
    isolated_settings: Settings,
) -> None:
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
    )

    topics = isolated_settings.topics
    day = 24 * 3600 * 1000
    expected = {
        topics.orders: ("-1", "delete"),
        topics.inventory: ("-1", "delete"),
        topics.catalogue: ("-1", "delete"),
        topics.intake: (str(7 * day), "delete"),
        topics.order_commands: (str(7 * day), "delete"),
        topics.stock_commands: (str(7 * day), "delete"),
        topics.dlq: (str(30 * day), "delete"),
        topics.notifications: (str(30 * day), "delete"),
        topics.privacy_keys: ("-1", "compact"),  # a forgotten key's tombstone replaces it
        topics.audit: ("-1", "delete"),  # a chain with an entry compacted away breaks
        topics.eta_models: ("-1", "compact"),  # only the newest model counts
        topics.outbox: ("-1", "compact"),  # a call's newest record (its outcome) counts
        topics.webhook_subscriptions: ("-1", "compact"),  # a subscription's newest record
        topics.webhook_deliveries: (str(30 * day), "compact,delete"),  # newest, 30 days
        topics.staff_alerts: ("-1", "compact"),  # an alert's newest record (its outcome)
        topics.carrier_updates: (str(7 * day), "delete"),  # verified pushes on their way
        topics.snapshots: ("-1", "compact"),  # a partition's newest snapshot and its chunks
    }
    # A topic just made can be unknown to the broker asked for a moment: asked again.
    assert _eventually(lambda: _retention(isolated_settings), expected) == expected

    admin = AdminClient({"bootstrap.servers": isolated_settings.kafka_bootstrap})
    changed = ConfigResource(
        ConfigResource.Type.TOPIC,
        topics.orders,
        incremental_configs=[
            ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    for future in admin.incremental_alter_configs([changed]).values():
        future.result(timeout=30)
    assert _eventually(lambda: _retention(isolated_settings)[topics.orders]) == ("1000", "delete")
    KafkaService(isolated_settings).ensure_topics()
    assert _eventually(lambda: _retention(isolated_settings), expected) == expected
