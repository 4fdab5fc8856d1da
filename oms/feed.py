"""`GET /events`: the order log and the stock ledger as JSON pages, for systems that cannot run
a Kafka consumer (an ERP, a spreadsheet script, a low-code tool).

    GET /events?log=orders&after=CURSOR&types=OrderReady,OrderDelivered&limit=100&wait=20

Each answer holds up to `limit` events after the cursor, in log order per partition (so an
order's events in their sequence), and `next`, the cursor to ask with next time; a follower
keeps `next` and asks again, and after a restart it asks with the last `next` it kept. No
`after` starts at the beginning of the log, `after=end` at its end (only what comes next).
`wait` (seconds, up to 30) holds an empty answer open until an event comes (long polling).

A caller sees only its own: a caller held to channels sees the events of those channels, one
held to stores the events that name one of its stores (`location`), so store staff see no
stock or order event before their store is chosen. Personal fields are empty, as on the log,
and their ciphertext (`sealed`, `platform_ciphertext`) is left out: a follower that needs a
customer's details reads them through `GET /customers/{customer}/export` with the right role.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from events.codec import AvroCodec
from events.models import ORDER_EVENTS, STOCK_EVENTS, Event
from events.privacy import personal_paths
from infra.feed import Cursor, FeedError, FeedUnavailable, Page, describe, read_page
from infra.http import problem
from infra.principals import Principal
from infra.settings import Settings
from oms.access import principal_of

LOGS: dict[str, tuple[str, tuple[type[Event], ...]]] = {
    # log name: (the Topics field it reads, the event types on it)
    "orders": ("orders", ORDER_EVENTS),
    "stock": ("inventory", STOCK_EVENTS),
}
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_WAIT_S = 30
SCAN_PER_EVENT = 20  # records a page may read per event it may return (a narrow filter)
WAIT_STEP_S = 0.5
HIDDEN = ("sealed", "platform_ciphertext")

SETTINGS = web.AppKey("feed_settings", Settings)
CODEC = web.AppKey("feed_codec", AvroCodec)


def _whole(request: web.Request, name: str, default: int, least: int, top: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not least <= int(raw) <= top:
        raise FeedError(name, f"a whole number from {least} to {top}, not {raw!r}")
    return int(raw)


EVENT_TYPES = tuple(sorted({kind.__name__ for _, kinds in LOGS.values() for kind in kinds}))


def _types(raw: str | None) -> frozenset[str] | None:
    """The event types asked for (None: all). A type of the other log matches nothing."""
    if raw is None or raw == "":
        return None
    names = frozenset(raw.split(","))
    unknown = sorted(names - set(EVENT_TYPES))
    if unknown:
        raise FeedError("types", f"not event types: {', '.join(unknown)}")
    return names


def visible_to(who: Principal, types: frozenset[str] | None) -> Callable[[Event], bool]:
    """Whether the caller may see an event and asked for its type."""

    def keep(event: Event) -> bool:
        if types is not None and event.event_type not in types:
            return False
        if who.channels is not None and getattr(event, "channel", None) not in who.channels:
            return False
        return who.stores is None or getattr(event, "location", None) in who.stores

    return keep


def shown(partition: int, offset: int, event: Event) -> dict[str, Any]:
    """The event as a follower sees it: personal fields and their ciphertext left empty."""
    entry = describe(partition, offset, event)
    body = entry["event"]
    for name in HIDDEN:
        body.pop(name, None)
    for path in personal_paths(type(event)):
        parent = body
        for name in path[:-1]:
            parent = parent.get(name) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and parent.get(path[-1]) not in (None, ""):
            parent[path[-1]] = None
    return entry


async def events(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    codec = request.app[CODEC]
    name = request.query.get("log", "orders")
    if name not in LOGS:
        return problem(400, f"log: one of {', '.join(sorted(LOGS))}", parameter="log")
    topic_field, _ = LOGS[name]
    topic = getattr(settings.topics, topic_field)
    try:
        limit = _whole(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        wait_s = min(_whole(request, "wait", 0, 0, MAX_WAIT_S), settings.feed_max_wait_s)
        keep = visible_to(principal_of(request), _types(request.query.get("types")))
        after = request.query.get("after")
        if after == "end":
            cursor = await asyncio.to_thread(_end, settings, topic, name)
        else:
            cursor = Cursor(name, ()) if after is None else Cursor.decode(after, log=name)
        page = await _page(settings, topic, cursor, codec, limit, keep, wait_s)
    except FeedError as exc:
        return problem(400, str(exc), parameter=exc.field)
    except FeedUnavailable as exc:
        return problem(503, f"Kafka did not answer: {exc}")
    assert page.cursor is not None
    return web.json_response(
        {
            "log": name,
            "events": [shown(p, o, event) for p, o, event in page.events],
            "next": page.cursor.encode(),
            "caught_up": page.caught_up,
            "gap": page.gap,
        }
    )


async def _page(
    settings: Settings,
    topic: str,
    cursor: Cursor,
    codec: AvroCodec,
    limit: int,
    keep: Callable[[Event], bool],
    wait_s: int,
) -> Page:
    """A page; with `wait`, read again until it holds an event or the wait is over."""
    deadline = time.monotonic() + wait_s
    while True:
        page = await asyncio.to_thread(
            read_page,
            settings.kafka_bootstrap,
            topic,
            cursor,
            codec=codec,
            limit=limit,
            scan=limit * SCAN_PER_EVENT,
            keep=keep,
        )
        if page.events or not page.caught_up or time.monotonic() >= deadline:
            return page
        assert page.cursor is not None
        cursor = page.cursor
        await asyncio.sleep(WAIT_STEP_S)


def _end(settings: Settings, topic: str, name: str) -> Cursor:
    """The cursor at the log's end now: a follower that starts there sees only what comes."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from infra.kafka import consumer_config

    consumer = Consumer(consumer_config(settings.kafka_bootstrap, group_id="oms-feed-end"))
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise FeedUnavailable(f"topic {topic} is missing")
        return Cursor(
            name,
            tuple(
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in sorted(metadata.partitions)
            ),
        )
    except KafkaException as exc:
        raise FeedUnavailable(str(exc)) from exc
    finally:
        consumer.close()


def add_routes(app: web.Application, settings: Settings) -> None:
    app[SETTINGS] = settings
    app[CODEC] = AvroCodec.for_registry(settings.schema_registry_url)
    app.router.add_get("/events", events)
