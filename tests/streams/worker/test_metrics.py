"""`oms worker` on the real broker, scraped as Prometheus would: readiness before and after it
is ready, the counters moved by exactly what went through it, the lag gauge equal to the
group's real lag, and JSON log lines carrying the ids of the input being decided."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from events.models import Actor, ActorKind, OrderLine, OrderModified
from infra import offsets
from infra.publisher import Publisher
from infra.settings import Settings
from tests.conftest import settings_env, wait_consumed
from tests.factories import T0, received
from tests.infra.scrape import first_answer, free_port, scrape, series, value, wait_for_status

pytestmark = pytest.mark.integration
ORDERS = 5


@pytest.fixture
def worker(isolated_settings: Settings, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`oms worker` with its metrics on a port of its own and JSON logs; its base URL and log."""
    port = free_port()
    log = tmp_path / "worker.log"
    env = settings_env(isolated_settings) | {"OMS_LOG_FORMAT": "json"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "oms.cli", "worker", "--metrics-port", str(port),
             "--loglevel", "info"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            yield f"http://127.0.0.1:{port}", log
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def orphan_revision() -> OrderModified:
    """A revision of an order the log does not have: refused, to the dead-letter topic."""
    order_id = f"orphan-{uuid.uuid4().hex[:8]}"
    return OrderModified(
        event_id=f"rev-{order_id}", order_id=order_id, sequence=1, occurred_at=T0,
        recorded_at=T0, correlation_id=f"corr-{order_id}",
        actor=Actor(kind=ActorKind.CHANNEL, id="webshop"), channel="webshop",
        external_id=order_id, revision=2,
        lines=[OrderLine(sku="DUMPLING-12", name="水饺", quantity=1, unit_price=2800)],
        total=2800,
    )  # fmt: skip


def real_lag(settings: Settings, topic: str) -> dict[tuple[str, str], float]:
    """The group's lag per partition as Kafka has it: end offset less committed offset."""
    probe = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                      "group.id": settings.consumer_group})  # fmt: skip
    try:
        partitions = offsets.partitions_of(probe, [topic], timeout_s=10)
        ends = offsets.ends(probe, partitions, timeout_s=10)
        done = offsets.committed(probe, partitions, timeout_s=10)
        return {
            (t, str(p)): float(ends[(t, p)][1] - (done[(t, p)] or ends[(t, p)][0]))
            for t, p in partitions
        }
    finally:
        probe.close()


def on_topic(settings: Settings, topic: str) -> int:
    """How many messages `topic` holds (none of its messages is deleted: the test's own)."""
    probe = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "counting"})
    try:
        partitions = offsets.partitions_of(probe, [topic], timeout_s=10)
        return sum(
            high - low for low, high in offsets.ends(probe, partitions, timeout_s=10).values()
        )
    finally:
        probe.close()


def json_lines(log: Path) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            parsed = json.loads(line)
        except ValueError:
            continue  # Faust's banner, printed rather than logged
        if isinstance(parsed, dict):
            found.append(parsed)
    return found


def test_a_worker_is_ready_once_it_can_decide_and_its_metrics_count_what_went_through(
    isolated_settings: Settings, worker: tuple[str, Path]
) -> None:
    settings, (url, log) = isolated_settings, worker
    topics = settings.topics
    status, body = first_answer(f"{url}/readyz")
    assert status == 503 and body["status"] == "unavailable" and body["reason"], body
    wait_for_status(f"{url}/readyz", 200)
    assert first_answer(f"{url}/livez") == (200, {"status": "ok"})

    publisher = Publisher(settings)
    for _ in range(ORDERS):
        order_id = f"m-{uuid.uuid4().hex[:8]}"
        publisher.intake(
            received(event_id=f"e-{order_id}", order_id=order_id, correlation_id=order_id,
                     external_id=order_id)
        )  # fmt: skip
    orphan = orphan_revision()
    publisher.intake(orphan)
    publisher.produce(topics.intake, "garbage", b"\x00\x00\x00\x00\x01garbage")
    publisher.flush(30)
    wait_consumed(settings, topics.intake)

    metrics = scrape(f"{url}/metrics")
    assert value(metrics, "oms_consumed_total", topic=topics.intake) == ORDERS + 2
    assert value(metrics, "oms_produced_total", topic=topics.orders) == on_topic(
        settings, topics.orders
    )
    assert value(metrics, "oms_produced_total", topic=topics.dlq) == 2
    assert on_topic(settings, topics.dlq) == 2
    assert value(metrics, "oms_dead_letters_total", source=topics.intake) == 2
    # Every input that decoded was decided (the garbage was not): one observation each.
    assert value(metrics, "oms_decide_seconds_count", agent="orders") == ORDERS + 1
    assert value(metrics, "oms_decide_batch_seconds_count", agent="orders") >= 1
    assert value(metrics, "oms_ready") == 1
    lag = {
        (dict(labels)["topic"], dict(labels)["partition"]): v
        for labels, v in series(metrics, "oms_consumer_lag").items()
    }
    intake_lag = {where: v for where, v in lag.items() if where[0] == topics.intake}
    assert intake_lag == real_lag(settings, topics.intake)
    assert len(intake_lag) == settings.kafka_partitions
    # Only the agents' inputs: not Faust's own assignor topic.
    inputs = {topics.intake, topics.order_commands, topics.stock_commands}
    assert {topic for topic, _ in lag} == inputs

    lines = json_lines(log)
    assert lines and all({"time", "level", "logger", "message", "process"} <= set(line)
                         for line in lines)  # fmt: skip
    refused = [line for line in lines if line.get("correlation_id") == orphan.correlation_id]
    assert refused, "no log line carries the refused revision's correlation id"
    (line,) = [line for line in refused if line["message"].startswith("dead-lettered")]
    assert (line["event_id"], line["order_id"], line["process"], line["level"]) == (
        orphan.event_id, orphan.order_id, "worker", "INFO")  # fmt: skip
    # The undecodable input after it is logged without the ids of the input before.
    (garbage,) = [line for line in lines if line["message"].startswith("dead-lettered")
                  and "corrupt" in line["message"]]  # fmt: skip
    assert "correlation_id" not in garbage and "event_id" not in garbage, garbage
