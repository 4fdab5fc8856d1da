"""A projector that dies between any two of a batch's INSERTs, restarted, ends with exactly the
tables of a run that never crashed — on both backends."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from infra.settings import Settings
from projections.projector import Projector
from projections.schema import READ_MODEL_NAMES
from projections.store import ClickHouseStore, Row, connect
from tests.projections.conftest import contents, physical_rows, project_all
from tests.projections.scenario import build

pytestmark = [pytest.mark.integration, pytest.mark.fault]


class SimulatedCrash(Exception):
    """The process died here."""


class CrashBeforeInsert:
    """The real store, except that the process 'dies' just before it inserts into `table` in
    the `batch`-th batch (counted by the offset-ledger inserts, written last in each)."""

    def __init__(self, store: ClickHouseStore, *, table: str, batch: int) -> None:
        self.store, self.table, self.batch = store, table, batch
        self.database = store.database
        self.batches = 1

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        self._crash_before(table)
        self.store.insert(table, columns, rows)
        if table == "projector_offsets":
            self.batches += 1

    def insert_rowbinary(self, table: str, columns: Sequence[str], data: bytes) -> None:
        self._crash_before(table)  # the native fold's tables
        self.store.insert_rowbinary(table, columns, data)

    def _crash_before(self, table: str) -> None:
        if table == self.table and self.batches == self.batch:
            raise SimulatedCrash(f"before {table} in batch {self.batch}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_crash_between_any_two_inserts_never_double_counts(
    backend_settings: Settings,
) -> None:
    settings = backend_settings
    scenario = build(orders=60, stock_events=160, seed=11, duplicates=0.03)
    scenario.publish(settings)
    store = connect(settings.resolved_clickhouse_url)
    for table in READ_MODEL_NAMES:  # each crash point once, each in a later part of the log
        crashing = CrashBeforeInsert(store, table=table, batch=2)
        projector = Projector(
            settings=settings,
            store=crashing,
            batch_size=60,
            batch_seconds=0.2,
            lease=False,
        )
        with pytest.raises(SimulatedCrash):
            projector.run(until=lambda _: False)
    project_all(settings, store)

    clean = store.with_database(store.database + "_clean")
    try:
        project_all(settings, clean)
        assert physical_rows(store) == physical_rows(clean)
        assert contents(store) == contents(clean)
        assert physical_rows(clean)["stock"] == len({e.event_id for e in scenario.stock_log})
    finally:
        clean.execute(f"DROP DATABASE IF EXISTS {clean.database}")
        clean.close()
        store.close()
