"""How the pipeline is doing, for the dashboard's Operations section (`GET /pipeline`): how
far behind each consumer is, and how many messages each topic took per minute over the last
hour — intake, the order log, the dead letters.

Read from Kafka and ClickHouse as they are now, not from the processes' metrics, so it needs
no scraper and shows the same on both ClickHouse backends:
- the worker's lag: its consumer group's committed offsets against the partitions' ends;
- the projector's lag: the next offsets of its ledger in ClickHouse (`projector_offsets`,
  where the projector resumes from) against the ends of the order log and the stock ledger;
- messages per minute: the difference of the offsets Kafka finds for each minute's start
  (`offsets_for_times`), so no message is read.
The read models' own side (order events and rejections per minute) is the report
`order_events_per_minute`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from confluent_kafka import Consumer, KafkaException

from infra import offsets
from infra.http import problem
from infra.kafka import client_security, consumer_config
from infra.settings import Settings
from projections.projector import next_offsets
from projections.read_api import READ_MODELS
from projections.store import StoreError

MINUTES = 60
TIMEOUT_S = 10.0


def consumers(settings: Settings) -> dict[str, tuple[str, ...]]:
    """The pipeline's consumers and the topics each takes."""
    topics = settings.topics
    return {
        "worker": (topics.intake, topics.order_commands, topics.stock_commands),
        "projector": (topics.orders, topics.inventory),
    }


def flows(settings: Settings) -> dict[str, str]:
    """The topics whose messages per minute are shown, by the name the page shows."""
    topics = settings.topics
    return {"intake": topics.intake, "orders": topics.orders, "dead_letters": topics.dlq}


def minute_starts(now: datetime, minutes: int = MINUTES) -> list[datetime]:
    """The starts of the last `minutes` minutes, the current one last."""
    this = now.replace(second=0, microsecond=0)
    return [this - timedelta(minutes=n) for n in range(minutes - 1, -1, -1)]


def lag_rows(
    name: str, behind: Mapping[offsets.Partition, int], topics: tuple[str, ...]
) -> list[dict[str, Any]]:
    """One row per topic: its lag, and each partition's."""
    rows = []
    for topic in topics:
        partitions = {p: n for (t, p), n in sorted(behind.items()) if t == topic}
        if partitions:
            rows.append(
                {
                    "consumer": name,
                    "topic": topic,
                    "lag": sum(partitions.values()),
                    "partitions": {str(p): n for p, n in partitions.items()},
                }
            )
    return rows


def read(settings: Settings, projected: Mapping[offsets.Partition, int], now: datetime) -> Any:
    """The body of `GET /pipeline`, from Kafka; `projected`: the projector's next offsets."""
    probe = Consumer(
        consumer_config(settings.kafka_bootstrap, group_id=settings.consumer_group)
        | client_security(settings)
    )
    try:
        rows: list[dict[str, Any]] = []
        for name, topics in consumers(settings).items():
            partitions = offsets.partitions_of(probe, topics, timeout_s=TIMEOUT_S)
            if name == "worker":
                positions: dict[offsets.Partition, int | None] = dict.fromkeys(partitions)
            else:
                positions = {where: projected.get(where, 0) for where in partitions}
            behind = offsets.lag(probe, positions, timeout_s=TIMEOUT_S)
            rows += lag_rows(name, behind, topics)
        starts = minute_starts(now)
        per_minute = offsets.per_minute(
            probe,
            {
                name: offsets.partitions_of(probe, [topic], timeout_s=TIMEOUT_S)
                for name, topic in flows(settings).items()
            },
            starts,
            timeout_s=TIMEOUT_S,
        )
    finally:
        probe.close()
    return {
        "as_of": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lag": rows,
        "minutes": [start.strftime("%Y-%m-%dT%H:%M:%SZ") for start in starts],
        "per_minute": per_minute,
    }


async def get_pipeline(request: web.Request) -> web.Response:
    for name in request.query:
        return problem(400, f"/pipeline takes no parameters; not {name}", parameter=name)
    settings: Settings = request.app[PIPELINE_SETTINGS]
    topics = consumers(settings)["projector"]
    try:
        projected = await request.app[READ_MODELS].run(lambda store: next_offsets(store, topics))
    except StoreError as exc:
        return problem(503, f"ClickHouse could not answer: {' '.join(str(exc).split())}")
    try:
        body = await asyncio.to_thread(read, settings, projected, datetime.now(UTC))
    except KafkaException as exc:
        return problem(503, f"Kafka did not answer: {exc}")
    response = web.json_response(body)
    response.headers["Cache-Control"] = "no-store"
    return response


PIPELINE_SETTINGS = web.AppKey("pipeline_settings", Settings)


def add_routes(app: web.Application, settings: Settings) -> None:
    """`GET /pipeline`, over the read API's ClickHouse (read_api.add_routes first)."""
    app[PIPELINE_SETTINGS] = settings
    app.router.add_get("/pipeline", get_pipeline)
