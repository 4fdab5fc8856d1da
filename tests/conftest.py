"""Shared fixtures. Integration tests use the real broker and ClickHouse started by
`oms stack up` (make test does that) and isolate themselves with their own topics and database."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException
from confluent_kafka.admin import AdminClient
from hypothesis import settings as hypothesis_settings

from infra.kafka import admin_config
from infra.keystore import KafkaKeys
from infra.principals import AccessFile, Role
from infra.settings import Settings, Topics
from oms.stack import ClickHouseService, KafkaService
from projections.store import ClickHouseStore, connect, with_database_url

# No per-example time limit: on 2 shared cores (broker, ClickHouse, workers) an example can
# take longer than hypothesis's default 200 ms, and a test must fail on behaviour, not time.
hypothesis_settings.register_profile("orderstream", deadline=None)
hypothesis_settings.load_profile("orderstream")

# Every process a test starts seals personal data under this master key (infra/keystore.py);
# the suite's own, so a stale local stack key never matters. Tests of a missing or wrong key
# take it away explicitly.
TEST_MASTER_KEY = "b3JkZXJzdHJlYW0gdGVzdCBtYXN0ZXIga2V5IDMyISE="
os.environ.setdefault("OMS_MASTER_KEY", TEST_MASTER_KEY)

# `oms api` admits nobody without credentials (oms/access.py). The suite has its own access
# file (never the local stack's) and session secret, and an admin key every API test may send
# as ADMIN; tests of access itself make their own keys, users and tokens.
os.environ.setdefault(
    "OMS_ACCESS_FILE", str(Path(tempfile.mkdtemp(prefix="oms-access-")) / "a.json")
)
os.environ.setdefault("OMS_SESSION_SECRET", "orderstream test suite session secret, not for use")
_, ADMIN_KEY = AccessFile(Path(os.environ["OMS_ACCESS_FILE"])).create_key(Role.ADMIN, name="tests")
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

FIXTURES = Path(__file__).parent / "fixtures"
# A separate package with its own tests, run by tests/connectors/test_third_party.py once installed.
collect_ignore = ["example_connector"]


@pytest.fixture(scope="session")
def stack_settings() -> Settings:
    """The running local stack; fails (does not skip) when it is not up."""
    settings = Settings()
    if not KafkaService(settings).answering():
        pytest.fail(f"Kafka does not answer at {settings.kafka_bootstrap}: run `oms stack up`")
    return settings


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """chDB allows one data path per process: every embedded store in the tests shares it."""
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def isolated_settings(stack_settings: Settings, chdb_path: Path) -> Iterator[Settings]:
    """The real stack, with topics, consumer group and ClickHouse database of this test only."""
    uid = uuid.uuid4().hex[:10]
    topics = Topics(**{name: f"t{uid}.{name}" for name in Topics.model_fields})
    url = stack_settings.resolved_clickhouse_url
    if url.startswith("clickhouse://"):
        url = with_database_url(url, f"oms_test_{uid}")
    else:
        url = f"chdb://{chdb_path}?database=oms_test_{uid}"
    settings = stack_settings.model_copy(
        update={
            "topics": topics,
            "consumer_group": f"oms-test-{uid}",
            "clickhouse_url": url,
            "kafka_partitions": 3,
        }
    )
    KafkaService(settings).ensure_topics()
    yield settings
    store = connect(url)
    store.execute(f"DROP DATABASE IF EXISTS {store.database}")
    store.close()
    KafkaKeys.close_all(settings)  # its key stores stop following the topic
    delete_topics(settings)


def delete_topics(settings: Settings) -> None:
    """Delete the settings' topics, and wait for it. A broker that keeps every test's
    partitions runs out of file handles, and thousands of leftover partitions halved its
    throughput for the benchmarks. Waited for: a request left to an admin client that is then
    collected is never sent."""
    admin = AdminClient(admin_config(settings.kafka_bootstrap))
    for future in admin.delete_topics(settings.topics.all(), operation_timeout=30).values():
        with contextlib.suppress(KafkaException):  # never made (a test did not need it)
            future.result(timeout=60)


@pytest.fixture
def store(isolated_settings: Settings) -> Iterator[ClickHouseStore]:
    """The isolated test's ClickHouse database."""
    opened = connect(isolated_settings.resolved_clickhouse_url)
    yield opened
    opened.close()


@pytest.fixture(params=["server", "chdb"])
def any_store(
    request: pytest.FixtureRequest, stack_settings: Settings, chdb_path: Path
) -> Iterator[ClickHouseStore]:
    """Each ClickHouse backend in turn: the local server (18.16 in CI) and embedded chDB."""
    database = f"oms_test_{uuid.uuid4().hex[:10]}"
    if request.param == "server":
        service = ClickHouseService(stack_settings)
        if service.binary is None:
            pytest.fail("clickhouse-server is not installed; make test installs it (as root)")
        store = connect(with_database_url(service.url, database))
    else:
        store = connect(f"chdb://{chdb_path}?database={database}")
    yield store
    store.execute(f"DROP DATABASE IF EXISTS {database}")
    store.close()


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment for an `oms` subprocess that should use exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")}
    env.update(
        {
            "OMS_HOME": str(settings.home),
            "OMS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "OMS_KAFKA_PARTITIONS": str(settings.kafka_partitions),
            "OMS_CONSUMER_GROUP": settings.consumer_group,
            "OMS_SNAPSHOT_EVERY": str(settings.snapshot_every),
            "OMS_EXPIRY_CHECK_S": str(settings.expiry_check_s),
            "OMS_ORDERS_IN_MEMORY": str(settings.orders_in_memory),
            "OMS_ORDERS_IN_FLIGHT": str(settings.orders_in_flight),
            "OMS_CLICKHOUSE_URL": settings.resolved_clickhouse_url,
            "OMS_MASTER_KEY": (
                settings.master_key.get_secret_value() if settings.master_key else TEST_MASTER_KEY
            ),
            "OMS_ACCESS_FILE": str(settings.access_file or settings.home / "access.json"),
        }
    )
    if settings.session_secret:
        env["OMS_SESSION_SECRET"] = settings.session_secret.get_secret_value()
    if settings.catalogue_file:
        env["OMS_CATALOGUE_FILE"] = str(settings.catalogue_file)
    env.update({f"OMS_TOPIC_{k.upper()}": v for k, v in settings.topics.model_dump().items()})
    return env


def read_topic(
    settings: Settings, topic: str, *, expect: int, timeout_s: float = 30.0
) -> list[Any]:
    """Read `expect` messages from the start of `topic` (or fail after `timeout_s`)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expect and time.monotonic() < deadline:
            messages.extend(m for m in consumer.consume(100, timeout=0.5) if m.error() is None)
    finally:
        consumer.close()
    assert len(messages) >= expect, f"only {len(messages)} of {expect} messages on {topic}"
    return messages


def wait_consumed(settings: Settings, topic: str, *, timeout_s: float = 60.0) -> None:
    """Wait until the worker's consumer group has committed to the end of `topic`."""
    from confluent_kafka import TopicPartition

    probe = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.consumer_group,
         "enable.auto.commit": False}
    )  # fmt: skip
    try:
        partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
        deadline = time.monotonic() + timeout_s
        ends = {p: _high_watermark(probe, TopicPartition(topic, p), deadline) for p in partitions}
        while time.monotonic() < deadline:
            committed = probe.committed([TopicPartition(topic, p) for p in ends], timeout=10)
            if all(tp.offset >= ends[tp.partition] for tp in committed if ends[tp.partition]):
                return
            time.sleep(0.5)
    finally:
        probe.close()
    pytest.fail(f"the worker did not consume {topic} to its end within {timeout_s}s")


def _high_watermark(probe: Consumer, partition: Any, deadline: float) -> int:
    """The partition's end offset, asked again while the broker answers with a retriable
    error (a leader still being elected after a broker restart says NOT_LEADER_FOR_PARTITION)."""
    from confluent_kafka import KafkaError, KafkaException

    settling = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                KafkaError._TIMED_OUT, KafkaError._TRANSPORT}  # fmt: skip
    while True:
        try:
            return int(probe.get_watermark_offsets(partition, timeout=10)[1])
        except KafkaException as error:
            fault = error.args[0]
            if not (fault.retriable() or fault.code() in settling) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Every key store still open stops following its topic before the interpreter ends: a
    store left on a test's private broker that is gone kept librdkafka threads calling back
    into Python during finalization, which crashed the process (SIGSEGV) after all passed."""
    from infra.keystore import KafkaKeys

    for keys in list(KafkaKeys.open):
        keys.close()
