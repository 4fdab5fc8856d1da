"""Kafka's own perf tools from the broker's jars: the limit our figures are compared to."""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from confluent_kafka.admin import AdminClient

from infra.kafka import admin_config
from infra.settings import Settings, Topics
from oms.stack import KafkaService


def producer_perf_test(settings: Settings, *, topic: str, records: int, record_size: int) -> float:
    """records/s of `kafka-producer-perf-test` (ProducerPerformance) with our producer settings."""
    result = subprocess.run(
        [
            "java",
            "-Xmx512m",
            "-cp",
            f"{settings.kafka_libs_dir}/*",
            "org.apache.kafka.tools.ProducerPerformance",
            "--topic",
            topic,
            "--num-records",
            str(records),
            "--record-size",
            str(record_size),
            "--throughput",
            "-1",
            "--producer-props",
            f"bootstrap.servers={settings.kafka_bootstrap}",
            "acks=all",
            "enable.idempotence=true",
            "compression.type=lz4",
            "linger.ms=5",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    final = [line for line in result.stdout.splitlines() if "records sent" in line][-1]
    match = re.search(r"([\d.]+) records/sec", final)
    if match is None:
        raise RuntimeError(f"unexpected ProducerPerformance output: {final}")
    return float(match.group(1))


@contextmanager
def scratch_topics(settings: Settings, prefix: str) -> Iterator[Settings]:
    """Settings whose topics exist only for this run; deleted afterwards."""
    uid = uuid.uuid4().hex[:8]
    topics = Topics(**{name: f"{prefix}.{uid}.{name}" for name in Topics.model_fields})
    scratch = settings.model_copy(update={"topics": topics, "consumer_group": f"{prefix}-{uid}"})
    KafkaService(scratch).ensure_topics()
    try:
        yield scratch
    finally:
        admin = AdminClient(admin_config(settings.kafka_bootstrap))
        for future in admin.delete_topics(topics.all(), operation_timeout=30).values():
            future.result(timeout=60)
