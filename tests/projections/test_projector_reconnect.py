"""Fault tests: the projector rides out ClickHouse going away and ends with every table exactly
what the log says.

- In process, on both backends: the connection breaks at each INSERT of a batch in turn,
  before the INSERT reached the server or after the server took it.
- `oms project` while its ClickHouse server, then its Kafka broker, is killed (SIGKILL) and
  stopped cleanly mid-run, each for a few seconds; then stopped by SIGTERM, with exit 0. The
  server and the broker that go away are this test's own (own home and ports): the stack's
  are shared.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from events.models import Event
from infra.publisher import Publisher
from infra.settings import Settings
from oms.stack import ClickHouseService, KafkaService, process_alive
from projections.projector import Projector
from projections.reconnect import Backoff
from projections.schema import READ_MODEL_NAMES
from projections.store import ClickHouseStore, Row, StoreUnavailable, connect
from tests.conftest import settings_env
from tests.projections.conftest import contents, isolated, physical_rows, project_all
from tests.projections.scenario import build
from tests.projections.test_projector_kill import (
    CORRUPT,
    assert_tables_match_the_log,
    projected,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault]


class ConnectionLost:
    """The real store, except that at each of `points` — (batch, table, landed) — the
    connection breaks at that table's INSERT in that batch (counted by the offset-ledger
    INSERTs, written last in each): before the INSERT reached the server, or once the server
    took it and before its answer came back (`landed`)."""

    def __init__(self, store: ClickHouseStore, points: list[tuple[int, str, bool]]) -> None:
        self.store, self.points = store, set(points)
        self.database = store.database
        self.batches = 1
        self.lost: list[tuple[int, str, bool]] = []

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        self._around(table, lambda: self.store.insert(table, columns, rows))

    def insert_rowbinary(self, table: str, columns: Sequence[str], data: bytes) -> None:
        self._around(table, lambda: self.store.insert_rowbinary(table, columns, data))

    def _around(self, table: str, insert: Callable[[], None]) -> None:
        for landed in (False, True):
            point = (self.batches, table, landed)
            if point in self.points:
                self.points.remove(point)
                self.lost.append(point)
                if landed:
                    insert()
                raise StoreUnavailable(f"connection lost at {point}")
        insert()
        if table == "projector_offsets":
            self.batches += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


# The native fold on the server is the subprocess test's; here each backend has one fold.
@pytest.mark.parametrize(
    ("backend_settings", "native"),
    [("server", False), ("chdb", True)],
    ids=["server-python", "chdb-native"],
    indirect=["backend_settings"],
)
def test_a_connection_lost_at_any_insert_is_resumed_in_process_and_nothing_doubles(
    backend_settings: Settings, native: bool
) -> None:
    settings = backend_settings
    build(orders=60, stock_events=160, seed=11, duplicates=0.03).publish(settings)
    store = connect(settings.resolved_clickhouse_url)
    # Each table, before and after its INSERT, each in a batch of its own.
    points = [
        (2 + n, table, landed)
        for n, (table, landed) in enumerate(
            (table, landed) for table in READ_MODEL_NAMES for landed in (False, True)
        )
    ]
    losing = ConnectionLost(store, points)
    projector = Projector(settings=settings, store=losing, batch_size=30, batch_seconds=0.2,
                          lease=False, native=native,
                          retry=Backoff(first_s=0.001, cap_s=0.01))  # fmt: skip
    deadline = time.monotonic() + 60
    projector.run(until=lambda _: projector.lag() == 0 or time.monotonic() > deadline)
    assert time.monotonic() <= deadline, "the projector never caught up"
    assert sorted(losing.lost) == sorted(points), "the log was too short to reach every point"

    clean = store.with_database(store.database + "_clean")
    try:
        project_all(settings, clean)
        assert physical_rows(store) == physical_rows(clean)
        assert contents(store) == contents(clean)
    finally:
        clean.execute(f"DROP DATABASE IF EXISTS {clean.database}")
        clean.close()
        store.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


Service = ClickHouseService | KafkaService


def start(service: Service) -> None:
    """`service.up()`, in a process of its own as `oms stack up` does: the server outlives the
    process that started it, which a test process must not leave to its garbage collector."""
    settings = service.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")} | {
        "OMS_HOME": str(settings.home),
        "OMS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "OMS_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
        "OMS_KAFKA_LIBS": str(settings.kafka_libs_dir),
        "OMS_KAFKA_PARTITIONS": str(settings.kafka_partitions),
        "OMS_CLICKHOUSE_PORT": str(settings.clickhouse_port),
        "OMS_CLICKHOUSE_HTTP_PORT": str(settings.clickhouse_http_port),
    }
    kind = type(service).__name__
    script = (
        "from infra.settings import Settings; "
        f"from oms.stack import {kind}; {kind}(Settings()).up()"
    )
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=180)


def kill(service: Service) -> None:
    pid = service.process.pid()
    assert pid is not None, f"the test's {service.name} is not running"
    os.kill(pid, signal.SIGKILL)
    while process_alive(pid):
        time.sleep(0.05)


@pytest.fixture
def own_clickhouse(tmp_path: Path) -> Iterator[ClickHouseService]:
    """A ClickHouse server of this test only, started; stopped after it."""
    service = ClickHouseService(
        Settings(
            home=tmp_path / "clickhouse-home",
            clickhouse_port=free_port(),
            clickhouse_http_port=free_port(),
        )
    )
    if service.binary is None:
        pytest.fail("clickhouse-server is not installed; make test installs it (as root)")
    start(service)
    yield service
    service.down()


@pytest.fixture
def own_kafka(stack_settings: Settings, tmp_path: Path) -> Iterator[KafkaService]:
    """A Kafka broker of this test only (the stack's jars), started with the topics; stopped
    after it."""
    service = KafkaService(
        Settings(
            home=tmp_path / "kafka-home",
            kafka_bootstrap=f"localhost:{free_port()}",
            kafka_controller_port=free_port(),
            kafka_libs=stack_settings.kafka_libs_dir,
            kafka_partitions=3,
        )
    )
    start(service)
    yield service
    service.down()


def publish(settings: Settings, events: list[Event], topic: str) -> None:
    publisher = Publisher(settings)
    for event in events:
        publisher.publish(topic, event)
    assert publisher.flush().acknowledged[topic] == len(events)


def project_through(
    settings: Settings, service: Service, *, fold: str, log: Path, reconnects: int
) -> None:
    """Run `oms project` over a scenario while `service` is killed (SIGKILL) a third of the way
    through its first two thirds and stopped cleanly at two thirds of them, each time for a
    few seconds; publish the last third, stop the projector with SIGTERM, and check it never
    exited before, exited 0 then, reconnected at least `reconnects` times, and left every
    table exactly what the log says."""
    scenario = build(orders=300, stock_events=700, seed=19)
    orders_topic, stock_topic = settings.topics.orders, settings.topics.inventory
    first_orders = len(scenario.order_log) * 2 // 3
    first_stock = len(scenario.stock_log) * 2 // 3
    publish(settings, scenario.order_log[:first_orders], orders_topic)
    publish(settings, scenario.stock_log[:first_stock], stock_topic)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for raw in CORRUPT:
        producer.produce(orders_topic, key=b"bad", value=raw)
    assert producer.flush(10) == 0
    first = first_orders + first_stock + len(CORRUPT)

    env = settings_env(settings) | {"OMS_NATIVE_FOLD": "1" if fold == "native" else "0"}
    with open(log, "wb") as out:
        projector = subprocess.Popen(
            [sys.executable, "-m", "oms.cli", "project", "--batch-size", "200",
             "--batch-seconds", "0.1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    store = connect(settings.resolved_clickhouse_url)
    try:
        for fault, at in (("SIGKILL", 0.3), ("clean stop", 0.6)):
            wait_for(lambda at=at: projected(store) >= at * first, timeout_s=60,
                     what=f"{at:.0%} projected before the {fault}")  # fmt: skip
            if fault == "SIGKILL":
                kill(service)
            else:
                service.down()
            time.sleep(2)
            assert projector.poll() is None, f"exited when {service.name} went away ({fault})"
            start(service)
        publish(settings, scenario.order_log[first_orders:], orders_topic)
        publish(settings, scenario.stock_log[first_stock:], stock_topic)
        wait_for(lambda: projected(store) >= scenario.messages + len(CORRUPT), timeout_s=60,
                 what="everything projected after the restarts")  # fmt: skip
        assert projector.poll() is None
        projector.send_signal(signal.SIGTERM)
        assert projector.wait(timeout=30) == 0, "SIGTERM is a stop on request: exit 0"
        output = log.read_text(errors="replace")
        assert output.count("reconnected after") >= reconnects, output
        assert_tables_match_the_log(store, scenario, seed=19)
    finally:
        if projector.poll() is None:
            os.killpg(projector.pid, signal.SIGKILL)
            projector.wait()
        store.close()


@pytest.mark.parametrize("fold", ["native", "python"])
def test_projector_rides_out_clickhouse_restarts_and_every_table_stays_exact(
    stack_settings: Settings, own_clickhouse: ClickHouseService, tmp_path: Path, fold: str
) -> None:
    settings = isolated(stack_settings).model_copy(
        update={
            "clickhouse_url": own_clickhouse.url.replace("/oms?", "/oms_reconnect?"),
            "home": tmp_path / "projector-home",
        }
    )
    project_through(
        settings, own_clickhouse, fold=fold, log=tmp_path / "projector.log", reconnects=2
    )


def test_projector_rides_out_broker_restarts_and_every_table_stays_exact(
    isolated_settings: Settings, own_kafka: KafkaService, tmp_path: Path
) -> None:
    broker = own_kafka.settings
    settings = isolated_settings.model_copy(
        update={
            "kafka_bootstrap": broker.kafka_bootstrap,
            "topics": broker.topics,
            "home": tmp_path / "projector-home",
        }
    )
    # No reconnect is required: librdkafka reconnects by itself, and the projector starts
    # again from ClickHouse only when it finds no broker answering (see Projector._check_kafka).
    project_through(
        settings, own_kafka, fold="native", log=tmp_path / "projector.log", reconnects=0
    )
