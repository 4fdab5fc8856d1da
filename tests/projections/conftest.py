"""Fixtures for the read-model tests: a published scenario on topics of its own, projected
into each ClickHouse backend (the server, 18.16 in CI, and embedded chDB)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.keystore import KafkaKeys
from infra.settings import Settings, Topics
from oms.stack import ClickHouseService, KafkaService
from projections.store import ClickHouseStore, connect, with_database_url
from tests.conftest import delete_topics
from tests.projections.scenario import Scenario, build

_MADE: list[Settings] = []  # isolated topics made in this module, deleted after it


def isolated(settings: Settings) -> Settings:
    """The stack's settings with topics and a consumer group of their own (created here, and
    deleted once the test module is done: module fixtures share them)."""
    uid = uuid.uuid4().hex[:10]
    topics = Topics(**{name: f"t{uid}.{name}" for name in Topics.model_fields})
    isolated = settings.model_copy(
        update={"topics": topics, "consumer_group": f"oms-test-{uid}", "kafka_partitions": 3}
    )
    KafkaService(isolated).ensure_topics()
    _MADE.append(isolated)
    return isolated


@pytest.fixture(scope="module", autouse=True)
def _isolated_topics_deleted() -> Iterator[None]:
    yield
    while _MADE:
        settings = _MADE.pop()
        KafkaKeys.close_all(settings)  # its key stores stop following the topic
        delete_topics(settings)


def backend_url(settings: Settings, backend: str, chdb_path: Path) -> str:
    """A fresh database on `backend` ("server" or "chdb")."""
    database = f"oms_test_{uuid.uuid4().hex[:10]}"
    if backend == "server":
        service = ClickHouseService(settings)
        if service.binary is None:
            pytest.fail("clickhouse-server is not installed; make test installs it (as root)")
        return with_database_url(service.url, database)
    return f"chdb://{chdb_path}?database={database}"


@dataclass
class Projected:
    settings: Settings
    store: ClickHouseStore
    scenario: Scenario


def drop(store: ClickHouseStore) -> None:
    for database in (store.database, f"{store.database}__rebuild"):
        store.execute(f"DROP DATABASE IF EXISTS {database}")
    store.close()


@pytest.fixture(params=["server", "chdb"])
def backend_settings(
    request: pytest.FixtureRequest, stack_settings: Settings, chdb_path: Path
) -> Iterator[Settings]:
    """Isolated topics, and a fresh database on each backend in turn."""
    settings = isolated(stack_settings)
    url = backend_url(settings, request.param, chdb_path)
    settings = settings.model_copy(update={"clickhouse_url": url})
    yield settings
    drop(connect(url))


# Append-only tables (MergeTree, never collapsed by a merge) with one row per source event: a
# replay that wrote anything twice shows in their count() — and in the aggregate's sum.
PER_EVENT_TABLES = ("dead_letters", "stock")


def contents(store: ClickHouseStore) -> dict[str, list[tuple[object, ...]]]:
    """What every read model holds (`ReadModel.content`: FINAL applied, per-batch rows summed)."""
    from projections.schema import READ_MODELS

    return {
        model.name: store.query(model.content.replace("{table}", f"{store.database}.{model.name}"))
        for model in READ_MODELS
    }


def physical_rows(store: ClickHouseStore) -> dict[str, int]:
    counts = {
        table: int(store.query(f"SELECT count() FROM {store.database}.{table}")[0][0])
        for table in PER_EVENT_TABLES
    }
    counts["order_activity_per_minute.events"] = int(
        store.query(f"SELECT sum(events) FROM {store.database}.order_activity_per_minute")[0][0]
    )
    return counts


def project_all(settings: Settings, store: ClickHouseStore, *, batch_size: int = 1000) -> None:
    """Run a projector until every message on the topics is in `store`."""
    from projections.projector import Projector

    projector = Projector(
        settings=settings, store=store, batch_size=batch_size, batch_seconds=0.2, lease=False
    )
    projector.run(until=lambda _: projector.lag() == 0)


def publish_scenario(stack_settings: Settings, *, orders: int, stock_events: int,
                     seed: int) -> tuple[Settings, Scenario]:  # fmt: skip
    """A scenario built and published to topics of its own (module fixtures share it)."""
    scenario = build(orders=orders, stock_events=stock_events, seed=seed)
    settings = isolated(stack_settings)
    scenario.publish(settings)
    return settings, scenario


def projected_on(
    settings: Settings, backend: str, chdb_path: Path
) -> Iterator[tuple[Settings, ClickHouseStore]]:
    """The published scenario projected into a fresh database on `backend`; dropped after."""
    settings = settings.model_copy(
        update={"clickhouse_url": backend_url(settings, backend, chdb_path)}
    )
    store = connect(settings.resolved_clickhouse_url)
    project_all(settings, store)
    yield settings, store
    drop(store)
