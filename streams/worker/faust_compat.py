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

Second, a paused partition stays paused. The worker holds back an intake partition while its
orders in flight drain (`hold_back`, Faust's public `pause_partitions`), but Faust's own flow
control (`Consumer.on_buffer_drop`, when a stream's buffer has room again) put a partition
back among the fetched ones without asking whether it was paused.
"""

from __future__ import annotations

from typing import Any

import aiokafka
import faust
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

    def on_buffer_drop(self, tp: Any) -> None:
        super().on_buffer_drop(tp)
        if tp in self._paused_partitions:  # paused by `hold_back`: stays out
            self._get_active_partitions().discard(tp)


def hold_back(
    consumer: Any, topic: str, *, paused: set[int], resumed: set[int], assigned: set[int]
) -> None:
    """Stop fetching `topic`'s partitions `paused`, fetch `resumed` again (only partitions
    this worker is assigned: Faust would fetch a resumed partition it does not hold)."""
    if resumed & assigned:
        consumer.resume_partitions({faust.types.TP(topic, p) for p in resumed & assigned})
    if paused & assigned:
        consumer.pause_partitions({faust.types.TP(topic, p) for p in paused & assigned})


class _Transport(faust_kafka.Transport):
    Consumer = _Consumer


class App(faust.App):
    """Faust's app on the aiokafka transport, with a short fetch wait (FETCH_MAX_WAIT_MS)."""

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
