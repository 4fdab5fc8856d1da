"""`oms stack` on a second, private stack (own home and ports) so the shared one keeps running."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from infra.settings import Settings
from oms.stack import ClickHouseService, KafkaService, process_alive

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
    while (found := read()) != wanted and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


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
    }
    assert _retention(isolated_settings) == expected

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
