"""Where a consumer stands on Kafka: the ends of partitions, a group's committed offsets, how
far a position is behind the end (lag), and how many messages a topic took per minute (from
the offsets of times). The metrics' lag gauge and the dashboard's operations view both read
them here, so a lag means one thing wherever it is shown.

Every function takes a consumer that is only asked, never subscribed: created with the group
whose committed offsets are wanted, it never joins that group.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from confluent_kafka import Consumer, TopicPartition

Partition = tuple[str, int]  # topic, partition


def partitions_of(
    consumer: Consumer, topics: Iterable[str], *, timeout_s: float
) -> list[Partition]:
    """Every partition of `topics` the cluster has (a topic it does not have: none)."""
    found: list[Partition] = []
    for topic in topics:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None:
            continue
        found += [(topic, partition) for partition in sorted(metadata.partitions)]
    return found


def ends(
    consumer: Consumer, partitions: Iterable[Partition], *, timeout_s: float
) -> dict[Partition, tuple[int, int]]:
    """Each partition's first offset and the offset after its last message, as the broker has
    them now."""
    return {
        (topic, partition): consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout_s, cached=False
        )
        for topic, partition in partitions
    }


def committed(
    consumer: Consumer, partitions: Iterable[Partition], *, timeout_s: float
) -> dict[Partition, int | None]:
    """The consumer's group's committed offset of each partition (None: nothing committed)."""
    wanted = [TopicPartition(topic, partition) for topic, partition in partitions]
    if not wanted:
        return {}
    return {
        (tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None
        for tp in consumer.committed(wanted, timeout=timeout_s)
    }


def lag(
    consumer: Consumer, positions: Mapping[Partition, int | None], *, timeout_s: float
) -> dict[Partition, int]:
    """Messages between each position and its partition's end. A position given as None is
    the group's committed offset, and where the group committed nothing, the partition's
    first offset (a consumer that starts from the beginning has all of it before it)."""
    found = ends(consumer, positions, timeout_s=timeout_s)
    asked = committed(
        consumer, [p for p, offset in positions.items() if offset is None], timeout_s=timeout_s
    )
    behind: dict[Partition, int] = {}
    for where, (low, high) in found.items():
        position = positions[where]
        if position is None:
            position = asked.get(where)
        behind[where] = max(high - max(low if position is None else position, low), 0)
    return behind


def per_minute(
    consumer: Consumer,
    flows: Mapping[str, Sequence[Partition]],
    starts: Sequence[datetime],
    *,
    timeout_s: float,
) -> dict[str, list[int]]:
    """Per flow (a name for some partitions), the messages whose timestamps fall in each
    minute from each of `starts` (timezone-aware, one minute apart; the last minute ends now):
    the differences of the offsets Kafka finds for the minutes' starts, one request per
    minute for every flow. No message is read."""
    partitions = sorted({where for wanted in flows.values() for where in wanted})
    if not partitions:
        return {name: [0] * len(starts) for name in flows}
    top = ends(consumer, partitions, timeout_s=timeout_s)

    def offsets_at(ms: int) -> dict[Partition, int]:
        asked = [TopicPartition(topic, partition, ms) for topic, partition in partitions]
        found = consumer.offsets_for_times(asked, timeout=timeout_s)
        # -1: no message at or after that time, so the minute starts at the end.
        return {
            (tp.topic, tp.partition): tp.offset
            if tp.offset >= 0
            else top[(tp.topic, tp.partition)][1]
            for tp in found
        }

    marks = [offsets_at(int(start.timestamp() * 1000)) for start in starts]
    marks.append({where: high for where, (_, high) in top.items()})  # now: the ends
    return {
        name: [
            sum(max(marks[n + 1][where] - marks[n][where], 0) for where in wanted)
            for n in range(len(starts))
        ]
        for name, wanted in flows.items()
    }
