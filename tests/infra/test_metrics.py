"""infra/metrics.py, infra/offsets.py and infra/structured_logs.py: the bulk histogram counts as
prometheus_client's own does, liveness goes stale, the lag collector and the per-minute counts
agree with what is on the real broker, and JSON log lines carry the ids of their context —
also through the logging set-up the Faust worker does itself."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from infra import offsets
from infra.kafka import admin_config
from infra.metrics import BatchHistogram, ConsumerLag, Health, MetricsServer
from infra.settings import Settings
from infra.structured_logs import (
    JsonFormatter,
    event_ids,
    faust_logging_config,
    log_context,
    use_log_ids,
)
from tests.factories import received
from tests.infra.scrape import get, parse, series


def test_a_batch_histogram_counts_exactly_as_one_observation_at_a_time_does() -> None:
    values = [0.0, 0.05, 0.07, 0.1, 0.3, 2.5, 2.6, 9.0, 100.0, 0.1, 1e-9]
    buckets = (0.05, 0.1, 1.0, 2.5, 10.0)
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    one_by_one = Histogram("delay_seconds", "d", ["topic"], buckets=buckets, registry=theirs)
    for v in values:
        one_by_one.labels("t").observe(v)
    batched = BatchHistogram("delay_seconds", "d", ["topic"], buckets=buckets, registry=ours)
    batched.observe_many(values[:4], "t")
    batched.observe_many(values[4:], "t")
    batched.observe_many([], "t")

    def samples(registry: CollectorRegistry) -> dict[object, float]:
        found = parse(generate_latest(registry).decode())
        return {key: v for key, v in found.items() if not key[0].endswith("_created")}

    assert samples(ours) == pytest.approx(samples(theirs))
    assert parse(generate_latest(ours).decode())[
        ("delay_seconds_count", frozenset({("topic", "t")}))
    ] == len(values)


def test_a_process_is_live_while_its_loop_beats_and_ready_when_it_says_so() -> None:
    now = [100.0]
    waiting: list[str | None] = ["views"]
    health = Health(why_not_ready=lambda: waiting[0], stale_after_s=30, clock=lambda: now[0])
    server = MetricsServer(host="127.0.0.1", port=0, health=health)
    url = f"http://127.0.0.1:{server.port}"
    try:
        assert get(f"{url}/livez") == (200, b'{"status": "ok"}')
        assert get(f"{url}/readyz") == (503, b'{"status": "unavailable", "reason": "views"}')
        assert parse(get(f"{url}/metrics")[1].decode())[("oms_ready", frozenset())] == 0
        now[0] += 31
        status, body = get(f"{url}/livez")
        assert status == 503 and "not come round for 31 s" in json.loads(body)["reason"]
        assert get(f"{url}/healthz")[0] == 503
        health.beat()
        waiting[0] = None
        assert get(f"{url}/livez")[0] == get(f"{url}/readyz")[0] == 200
        assert parse(get(f"{url}/metrics")[1].decode())[("oms_ready", frozenset())] == 1
        assert get(f"{url}/nothing")[0] == 404
    finally:
        server.close()


@pytest.fixture
def topic(stack_settings: Settings) -> Iterator[str]:
    name = f"metrics-{uuid.uuid4().hex[:10]}"
    admin = AdminClient(admin_config(stack_settings.kafka_bootstrap))
    for future in admin.create_topics([NewTopic(name, 3, 1)]).values():
        future.result(timeout=30)
    yield name
    for future in admin.delete_topics([name], operation_timeout=30).values():
        future.result(timeout=60)


@pytest.mark.integration
def test_the_lag_gauge_is_the_end_less_the_groups_commit_or_the_position_given(
    stack_settings: Settings, topic: str
) -> None:
    producer = Producer({"bootstrap.servers": stack_settings.kafka_bootstrap})
    for partition, count in ((0, 5), (1, 3), (2, 4)):
        for n in range(count):
            producer.produce(topic, value=b"%d" % n, partition=partition)
    assert producer.flush(30) == 0
    group = f"g-{uuid.uuid4().hex[:8]}"
    committer = Consumer({"bootstrap.servers": stack_settings.kafka_bootstrap, "group.id": group})
    committer.commit(offsets=[TopicPartition(topic, 0, 2), TopicPartition(topic, 1, 3)],
                     asynchronous=False)  # fmt: skip
    committer.close()
    # Partition 0: committed 2 of 5; 1: all 3; 2: nothing committed, so all 4.
    positions: dict[offsets.Partition, int | None] = {(topic, p): None for p in range(3)}
    lag = ConsumerLag(stack_settings, group=group, positions=lambda: positions)
    registry = CollectorRegistry()
    registry.register(lag)
    try:
        found = series(parse(generate_latest(registry).decode()), "oms_consumer_lag")
        assert {dict(labels)["partition"]: v for labels, v in found.items()} == {
            "0": 3, "1": 0, "2": 4}  # fmt: skip
        positions[(topic, 2)] = 1  # a position of the process's own (the projector's ledger)
        found = series(parse(generate_latest(registry).decode()), "oms_consumer_lag")
        assert {dict(labels)["partition"]: v for labels, v in found.items()}["2"] == 3
    finally:
        lag.close()


@pytest.mark.integration
def test_messages_per_minute_are_counted_from_the_offsets_of_their_times(
    stack_settings: Settings, topic: str
) -> None:
    now = datetime.now(UTC)
    this_minute = now.replace(second=0, microsecond=0)
    starts = [this_minute - timedelta(minutes=n) for n in range(5, -1, -1)]
    producer = Producer({"bootstrap.servers": stack_settings.kafka_bootstrap})
    # 2 messages 4 minutes back, 3 two minutes back, on several partitions; 1 in this minute.
    for minutes, count in ((4, 2), (2, 3), (0, 1)):
        at = this_minute - timedelta(minutes=minutes) + timedelta(seconds=1)
        for n in range(count):
            producer.produce(topic, value=b"x", partition=n % 3,
                             timestamp=int(at.timestamp() * 1000))  # fmt: skip
    assert producer.flush(30) == 0
    probe = Consumer({"bootstrap.servers": stack_settings.kafka_bootstrap, "group.id": "count"})
    try:
        partitions = offsets.partitions_of(probe, [topic], timeout_s=10)
        counted = offsets.per_minute(
            probe, {"all": partitions, "first": partitions[:1]}, starts, timeout_s=10
        )
    finally:
        probe.close()
    assert counted["all"] == [0, 2, 0, 3, 0, 1]
    assert counted["first"] == [0, 1, 0, 1, 0, 1]


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("worker"))
    logger = logging.getLogger(f"test.json.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_carries_the_ids_of_its_context_and_only_while_it_lasts(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    order = received(event_id="e-9", order_id="o-9", correlation_id="c-9")
    logger.info("before")
    with log_context(request_id="r-1"):
        use_log_ids(**event_ids(order))  # replaces what the context had
        logger.warning("deciding %s", "o-9")
        use_log_ids()
        try:
            raise ValueError("no")
        except ValueError:
            logger.exception("failed")
    logger.info("after")
    before, deciding, failed, after = lines(stream)
    assert set(before) == {"time", "level", "logger", "message", "process", "pid"}
    assert deciding["message"] == "deciding o-9" and deciding["level"] == "WARNING"
    assert (deciding["correlation_id"], deciding["order_id"], deciding["event_id"]) == (
        "c-9", "o-9", "e-9")  # fmt: skip
    assert "request_id" not in deciding and "correlation_id" not in failed
    assert "ValueError: no" in str(failed["exception"]) and failed["process"] == "worker"
    assert "request_id" not in after and str(after["time"]).endswith("+00:00")


def test_the_faust_workers_own_logging_set_up_writes_json_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """mode (under Faust) replaces the root handlers when the worker starts; the config the
    app is given makes its formatter the JSON one."""
    from mode.utils.logging import setup_logging

    settings = Settings(log_format="json")
    config = faust_logging_config(settings, process="worker")
    assert config is not None and faust_logging_config(Settings(), process="w") is None
    saved = logging.root.handlers[:], logging.root.level
    try:
        setup_logging(loglevel="INFO", logging_config=dict(config))  # its handler: stderr
        with log_context(correlation_id="c-1"):
            logging.getLogger("faust.worker").info("starting")
    finally:
        logging.root.handlers, level = saved
        logging.root.setLevel(level)
    (line,) = [json.loads(text) for text in capsys.readouterr().err.splitlines()]
    assert (line["message"], line["correlation_id"], line["process"]) == (
        "starting", "c-1", "worker")  # fmt: skip
