"""The Faust internals `streams.worker.faust_compat` patches are still there, as it expects."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_kafka

from streams.worker import faust_compat


def test_the_installed_faust_and_aiokafka_are_the_versions_the_patches_were_written_for() -> None:
    installed = {name: version(name) for name in faust_compat.PINNED}
    assert installed == faust_compat.PINNED, (
        "read faust_compat's docstring and the new sources, then move PINNED"
    )


def test_the_private_names_the_patches_override_still_exist_with_their_signatures() -> None:
    assert list(inspect.signature(faust.App._new_transport).parameters) == ["self"]
    new_thread = faust_kafka.Consumer._new_consumer_thread
    assert list(inspect.signature(new_thread).parameters) == ["self"]
    create = faust_kafka.AIOKafkaConsumerThread._create_worker_consumer
    assert list(inspect.signature(create).parameters)[:2] == ["self", "transport"]
    thread_init = inspect.signature(faust_kafka.AIOKafkaConsumerThread.__init__).parameters
    assert {"loop", "beacon"} <= set(thread_init) or "kwargs" in thread_init


def test_aiokafka_still_reads_the_fetch_wait_from_the_attribute_the_patch_sets() -> None:
    source = inspect.getsource(aiokafka.AIOKafkaConsumer)
    assert "self._fetch_max_wait_ms = fetch_max_wait_ms" in source
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in source  # handed to the fetcher


def test_the_patched_app_uses_the_patched_transport_and_consumer() -> None:
    app = faust_compat.App("compat-check", broker="kafka://localhost:1", web_enabled=False)
    transport = app._new_transport()
    assert type(transport) is faust_compat._Transport
    assert transport.Consumer is faust_compat._Consumer


def test_aiokafka_s_consumer_is_where_hold_back_reaches_for_it() -> None:
    """`hold_back` pauses aiokafka's consumer on the consumer thread's loop: Faust's consumer
    keeps its thread as `_thread`, the thread keeps the aiokafka consumer as `_consumer`, built
    on `thread_loop`; aiokafka pauses and resumes by TopicPartition."""
    from faust.transport import consumer as faust_consumer

    assert "self._thread = self._new_consumer_thread()" in inspect.getsource(
        faust_consumer.ThreadDelegateConsumer
    )
    thread_source = inspect.getsource(faust_kafka.AIOKafkaConsumerThread)
    assert "self._consumer = self._create_consumer(loop=self.thread_loop)" in thread_source
    assert list(inspect.signature(aiokafka.AIOKafkaConsumer.pause).parameters) == [
        "self",
        "partitions",
    ]
    assert list(inspect.signature(aiokafka.AIOKafkaConsumer.resume).parameters) == [
        "self",
        "partitions",
    ]
    # Paused, a partition's fetched records are dropped, not handed out (its position stays).
    fetcher_source = inspect.getsource(aiokafka.consumer.fetcher)
    assert "if tp_state.paused:\n                return_result = False" in fetcher_source
