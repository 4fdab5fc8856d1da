"""The validation agent in Faust's test context: no broker, the topic sends are captured."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from events.codec import AvroCodec
from events.models import DeadLetter, OrderAccepted, OrderReceived, OrderRejected
from oms.settings import Settings
from streams.app import create_app
from tests.factories import received

CODEC = AvroCodec()


@pytest.fixture
def app_and_sent(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[tuple[Any, list[Any]]]:
    app = create_app(Settings(home=tmp_path))
    sent: list[tuple[str, bytes, bytes]] = []

    async def capture(
        self: Any, key: bytes | None = None, value: bytes | None = None, **_: Any
    ) -> Any:
        sent.append((self.get_topic_name(), key, value))
        future: Any = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    monkeypatch.setattr(type(app.topic("x")), "send", capture)
    yield app, sent
    # The test context never starts Faust's consumer thread; close the loop it made for it.
    consumer = app.__dict__.get("_consumer")
    thread = getattr(consumer, "_thread", None)
    loop = getattr(thread, "thread_loop", None)
    if loop is not None and not loop.is_closed():
        loop.close()


async def test_valid_order_goes_to_the_order_log_with_its_acceptance(app_and_sent: Any) -> None:
    app, sent = app_and_sent
    order = received()
    async with app.agents["intake"].test_context() as agent:
        result = await agent.put(CODEC.encode(order))
        assert agent.results[result.message.offset] == ["OrderReceived", "OrderAccepted"]
    topics = {topic for topic, _, _ in sent}
    assert topics == {"oms.orders.v1"}
    decoded = [CODEC.decode(value) for _, _, value in sent]
    assert isinstance(decoded[0], OrderReceived) and isinstance(decoded[1], OrderAccepted)
    assert all(key == order.order_id.encode() for _, key, _ in sent)


async def test_invalid_order_is_rejected_with_reasons(app_and_sent: Any) -> None:
    app, sent = app_and_sent
    async with app.agents["intake"].test_context() as agent:
        await agent.put(CODEC.encode(received(total=1)))
    verdict = CODEC.decode(sent[-1][2])
    assert isinstance(verdict, OrderRejected)
    assert verdict.reasons[0].code == "TOTAL_MISMATCH"


async def test_corrupt_message_goes_to_the_dlq_and_the_agent_keeps_going(app_and_sent: Any) -> None:
    app, sent = app_and_sent
    async with app.agents["intake"].test_context() as agent:
        await agent.put(b"\x00\x00\x00\x00\x01garbage")
        await agent.put(CODEC.encode(received()))
    assert sent[0][0] == "oms.dlq.v1"
    letter = CODEC.decode(sent[0][2])
    assert isinstance(letter, DeadLetter)
    assert letter.raw == b"\x00\x00\x00\x00\x01garbage"
    assert "corrupt Avro body" in letter.reason
    assert [topic for topic, _, _ in sent[1:]] == ["oms.orders.v1", "oms.orders.v1"]


async def test_a_redelivered_order_is_written_once(app_and_sent: Any) -> None:
    app, sent = app_and_sent
    async with app.agents["intake"].test_context() as agent:
        first = await agent.put(CODEC.encode(received()))
        second = await agent.put(CODEC.encode(received()))
        assert agent.results[first.message.offset] == ["OrderReceived", "OrderAccepted"]
        assert agent.results[second.message.offset] == []
    assert len(sent) == 2
