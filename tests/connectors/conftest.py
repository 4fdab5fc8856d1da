"""`oms api` with a fake publisher, for webhook tests that need no broker.

`create_app` builds the whole app (routes, middleware, the webhooks' body reading and parser
threads); only the publisher is swapped for `FakePublisher`, which encodes every message with
the real codec and refuses one larger than the producer's `message.max.bytes`, as librdkafka
does, so "it fits on the topic" is checked the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import KafkaError, KafkaException

import oms.api
from events.codec import AvroCodec
from events.models import DeadLetter, Event, OrderModified, OrderReceived
from infra.kafka import MAX_MESSAGE_BYTES
from infra.settings import Settings, get_settings

# librdkafka counts the key, the value and at most this much framing against the limit
# (measured: 36 bytes for one record).
RECORD_FRAMING = 64


class FakePublisher:
    """What `AsyncPublisher` does up to the broker: encode, refuse what is too large, keep."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.codec = AvroCodec()
        self.intake_events: list[OrderReceived | OrderModified] = []
        self.dead_letters: list[DeadLetter] = []

    def _fit(self, key: str, value: bytes) -> None:
        if len(key.encode()) + len(value) + RECORD_FRAMING > MAX_MESSAGE_BYTES:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))

    async def intake(self, event: OrderReceived | OrderModified) -> None:
        self._fit(event.aggregate_id, self.codec.encode(event))
        self.intake_events.append(event)

    async def dead_letter(self, letter: DeadLetter) -> None:
        self._fit(letter.source_ref, self.codec.encode(letter))
        self.dead_letters.append(letter)

    async def publish(self, topic: str, event: Event) -> None:
        self.codec.encode(event)

    def close(self) -> None:
        return None


@contextmanager
def fake_publisher_app(**env: str) -> Iterator[tuple[web.Application, FakePublisher]]:
    """`oms api`'s app whose publisher is a `FakePublisher`; `env` (e.g. OMS_INTAKE_WINDOW) is
    set while it is made."""
    made: list[FakePublisher] = []

    def publisher(settings: Settings) -> FakePublisher:
        made.append(FakePublisher(settings))
        return made[0]

    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        patch.setattr(oms.api, "AsyncPublisher", publisher)
        get_settings.cache_clear()
        app = oms.api.create_app(Settings())
    get_settings.cache_clear()
    yield app, made[0]


@pytest.fixture
def app_and_publisher() -> Iterator[tuple[web.Application, FakePublisher]]:
    with fake_publisher_app() as made:
        yield made


@pytest.fixture
async def client(
    app_and_publisher: tuple[web.Application, FakePublisher],
) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(app_and_publisher[0])) as test_client:
        yield test_client


@pytest.fixture
def publisher(app_and_publisher: tuple[web.Application, FakePublisher]) -> FakePublisher:
    return app_and_publisher[1]
