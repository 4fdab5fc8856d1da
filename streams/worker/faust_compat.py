"""Every patch of Faust's (and aiokafka's) internals, in one place.

Written against faust-streaming 0.15.3 and aiokafka 0.14.0 (`PINNED`; pyproject.toml bounds
faust-streaming to 0.15.x and aiokafka to 0.14.x). `tests/streams/worker/test_faust_compat.py`
fails when the installed versions or the private names below change — read the new sources
before moving the pins.

Two patches. First, how long the broker may hold a fetch that finds no new data. Faust fixes it at
1.5 s, and aiokafka has one fetch in flight per broker, leaving out partitions whose last
records are still being processed: with one broker, a partition that runs dry waits for the
others' long poll — up to 1.5 s with no input at all (seen as gaps in the agents' batches).
Faust builds its consumer deep inside its transport, so the app, the transport, the consumer
and its thread are each subclassed to reach it:
- `faust.App._new_transport` builds the transport;
- `faust.transport.drivers.aiokafka.Consumer._new_consumer_thread` builds the thread;
- `AIOKafkaConsumerThread._create_worker_consumer` builds the `aiokafka.AIOKafkaConsumer`,
  whose private `_fetch_max_wait_ms` its fetcher reads when it starts.

Second, holding back an intake partition (`hold_back`) pauses it in aiokafka's consumer, on
the consumer thread's own loop (Faust's `_thread`, its `_consumer` and `thread_loop`). Faust's
public `pause_partitions` only takes a partition out of the set its fetcher asks for, and
Faust then drops the records of it already fetched and being handed out: they were lost to
the process (a backlog test found ~900 orders never read after a resume). Paused in aiokafka,
a partition keeps its position; what it had fetched is dropped and fetched again on resume.
"""

from __future__ import annotations

from typing import Any

import aiokafka
import faust
from aiokafka.structs import TopicPartition
from faust.transport.drivers import aiokafka as faust_kafka

PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}
FETCH_MAX_WAIT_MS = 20


class _ConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when its fetcher starts
        return consumer


class _Consumer(faust_kafka.Consumer):
    def _new_consumer_thread(self) -> faust_kafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


def hold_back(
    consumer: Any, topic: str, *, paused: set[int], resumed: set[int], assigned: set[int]
) -> None:
    """Stop fetching `topic`'s partitions `paused`, fetch `resumed` again: in aiokafka's
    consumer, on its thread's loop (only partitions it is assigned; nothing before it has
    started). Called after every batch: a rebalance's new assignment starts unpaused."""
    thread = getattr(consumer, "_thread", None)
    kafka = getattr(thread, "_consumer", None)
    loop = getattr(thread, "thread_loop", None)
    if kafka is None or loop is None:
        return
    pause = {TopicPartition(topic, p) for p in paused & assigned}
    resume = {TopicPartition(topic, p) for p in resumed & assigned}

    def apply() -> None:
        held = kafka.assignment()
        if resume & held:
            kafka.resume(*(resume & held))
        if pause & held:
            kafka.pause(*(pause & held))

    if pause or resume:
        loop.call_soon_threadsafe(apply)


class _Transport(faust_kafka.Transport):
    Consumer = _Consumer


class App(faust.App):
    """Faust's app on the aiokafka transport, with a short fetch wait (FETCH_MAX_WAIT_MS)."""

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
