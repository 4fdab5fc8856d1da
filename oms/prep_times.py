"""Learning and publishing the prep-time model (`oms eta learn`): the history comes from the
read models (projections/eta.py), the learning is streams/eta.py's, and the model goes to the
compacted eta-models topic, where every worker's shared views pick up the newest one.

Run it after a day's trading (docs/operations.md, "Prep-time estimates"): the model is a
fold of the last `days` of finished orders, so learning twice from the same history gives the
same model (its version is a hash of its content and the time it was learned).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from infra.kafka import consumer_config, producer_config
from infra.settings import Settings
from projections.eta import prep_facts
from projections.store import ClickHouseStore
from streams import eta


def learn_from(
    store: ClickHouseStore,
    *,
    now: datetime,
    days: int = 28,
    min_samples: int = eta.MIN_SAMPLES,
) -> eta.PrepTimeModel:
    """The model of the orders accepted in the `days` before `now`."""
    since = (now - timedelta(days=days)).replace(microsecond=0)
    until = now.replace(microsecond=0)
    rows = prep_facts(store, since=since, until=until)
    return eta.learn(
        eta.facts_from_rows(rows),
        since=since,
        until=until,
        learned_at=until,
        min_samples=min_samples,
    )


class PublishFailed(RuntimeError):
    """Kafka did not take the model."""


def publish(settings: Settings, model: eta.PrepTimeModel) -> None:
    """The model onto the eta-models topic under its one key (waits for Kafka's answer)."""
    producer = Producer(producer_config(settings.kafka_bootstrap))
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer.produce(
        settings.topics.eta_models,
        key=eta.MODEL_KEY,
        value=model.model_dump_json().encode(),
        on_delivery=delivered,
    )
    if producer.flush(30) or failures:
        raise PublishFailed(
            f"the model did not reach {settings.topics.eta_models}: {failures or 'timed out'}"
        )


def latest(settings: Settings, *, timeout_s: float = 10.0) -> eta.PrepTimeModel | None:
    """The newest model on the topic (None when none was published)."""
    consumer = Consumer(consumer_config(settings.kafka_bootstrap, group_id="oms-eta-show"))
    newest: eta.PrepTimeModel | None = None
    try:
        topic = settings.topics.eta_models
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return None
        for partition in metadata.partitions:
            low, high = _watermarks(consumer, TopicPartition(topic, partition), timeout_s)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, partition, low)])
            following = low  # the offset of the next message to read
            while following < high:
                message = consumer.poll(timeout_s)
                if message is None:
                    raise PublishFailed(f"{topic}[{partition}] did not answer in {timeout_s} s")
                if message.error() is not None:
                    raise KafkaException(message.error())
                following = (message.offset() or 0) + 1
                if message.value():
                    model = eta.parse_model(message.value() or b"")
                    if newest is None or model.learned_at >= newest.learned_at:
                        newest = model
    finally:
        consumer.close()
    return newest


_SETTLING = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
}


def _watermarks(consumer: Consumer, partition: TopicPartition, timeout_s: float) -> tuple[int, int]:
    """The partition's offsets, asked again while its leader is still being elected (a topic
    created a moment ago answers NOT_LEADER_FOR_PARTITION)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=timeout_s)
            return int(low), int(high)
        except KafkaException as exc:
            fault = exc.args[0]
            if not (fault.retriable() or fault.code() in _SETTLING) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
