"""`oms worker` as a process: how it ends, for whatever supervises it (docs/operations.md)."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from infra.exit_codes import ExitCode
from infra.publisher import Publisher
from infra.settings import Settings, Topics
from oms.stack import KafkaService
from tests.conftest import settings_env
from tests.factories import received

pytestmark = pytest.mark.integration


def isolated(stack_settings: Settings) -> Settings:
    uid = uuid.uuid4().hex[:10]
    topics = Topics(**{name: f"w{uid}.{name}" for name in Topics.model_fields})
    return stack_settings.model_copy(
        update={"topics": topics, "consumer_group": f"w-{uid}", "kafka_partitions": 1}
    )


def worker(settings: Settings) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "oms.cli", "worker", "--loglevel", "warn"],
        env=settings_env(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_a_worker_whose_topics_do_not_exist_exits_78_naming_them(stack_settings: Settings) -> None:
    settings = isolated(stack_settings)  # topics never created
    process = worker(settings)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == ExitCode.CONFIG, output[-2000:]
    assert settings.topics.intake in output and "topics missing" in output


def test_a_worker_whose_output_kafka_refuses_stops_instead_of_going_on(
    stack_settings: Settings,
) -> None:
    settings = isolated(stack_settings)
    KafkaService(settings).ensure_topics()
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    entry = ConfigEntry("max.message.bytes", "200", incremental_operation=AlterConfigOpType.SET)
    topic = ConfigResource.Type.TOPIC
    tiny = ConfigResource(topic, settings.topics.orders, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([tiny]).values():
        future.result(timeout=30)
    process = worker(settings)
    publisher = Publisher(settings)
    publisher.intake(received(order_id=f"o-{uuid.uuid4().hex[:6]}"))
    publisher.flush(30)
    try:
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    # Not restarted in-process with states ahead of the log: the whole worker ends, non-zero.
    assert process.returncode == ExitCode.BUG, output[-2000:]
    assert "MSG_SIZE_TOO_LARGE" in output
