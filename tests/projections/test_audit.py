"""The audit projection (projections/audit.py) on each ClickHouse backend: every entry of the
audit topic once in `audit_log`, across restarts and a batch cut short; and the `audit` report
over it, filtered by principal, action, outcome and time."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from confluent_kafka import Producer

from infra.audit import AuditEntry, AuditWriter
from infra.settings import Settings
from projections.audit import AuditProjection
from projections.reports import run_report
from projections.schema import migrate
from projections.store import ClickHouseStore, connect

pytestmark = pytest.mark.integration


def entry(n: int, **changes: object) -> AuditEntry:
    fields: dict[str, object] = {
        "principal": "user:ana",
        "principal_kind": "user",
        "role": "operator",
        "action": "POST /orders/{id}/cancel",
        "resource": f"order-{n}",
        "outcome": "allowed",
        "at": datetime(2026, 12, 5, 8, n // 60, n % 60, tzinfo=UTC),
        "client_ip": "198.51.100.4",
        "request_id": f"req-{n}",
    }
    return AuditEntry.model_validate(fields | changes)


def project(settings: Settings, store: ClickHouseStore, *, batch_size: int = 1000) -> int:
    projection = AuditProjection(settings=settings, store=store, batch_size=batch_size, lease=False)
    try:
        return projection.run(until=lambda p: p.caught_up())
    finally:
        projection.close()


def audit_rows(store: ClickHouseStore) -> list[tuple[object, ...]]:
    return store.query(
        f"SELECT _partition, seq, resource, outcome, status FROM {store.database}.audit_log "
        "ORDER BY _partition, _offset"
    )


def test_every_entry_is_in_the_table_once_across_restarts(backend_settings: Settings) -> None:
    settings = backend_settings
    store = connect(settings.resolved_clickhouse_url)
    one, two = AuditWriter(settings, partition=0), AuditWriter(settings, partition=1)
    try:
        one.write([entry(n) for n in range(5)])
        two.write([entry(n, outcome="denied", status=403) for n in range(10, 13)])

        # A projection that wrote one batch of 3 and stopped (as a crash would leave it).
        cut = AuditProjection(settings=settings, store=store, batch_size=3, lease=False)
        cut.start()
        while cut.step() == 0:
            pass
        cut.close()
        assert len(audit_rows(store)) == 3

        assert project(settings, store, batch_size=2) == 5
        one.record(entry(5, outcome="completed", status=200))
        junk = Producer({"bootstrap.servers": settings.kafka_bootstrap})
        junk.produce(settings.topics.audit, value=b"\x00junk", partition=2)
        junk.flush(10)
        assert project(settings, store) == 2
        assert project(settings, store) == 0  # nothing new: nothing written again
    finally:
        one.close()
        two.close()
    rows = audit_rows(store)
    assert [r for r in rows if r[0] == 0] == [
        (0, n + 1, f"order-{n}", "allowed", 0) for n in range(5)
    ] + [(0, 6, "order-5", "completed", 200)]
    assert [r for r in rows if r[0] == 1] == [
        (1, n - 9, f"order-{n}", "denied", 403) for n in range(10, 13)
    ]
    assert [r for r in rows if r[0] == 2] == [(2, 0, "", "unreadable", 0)]
    store.close()


def test_the_audit_report_filters_by_principal_action_outcome_and_time(
    backend_settings: Settings,
) -> None:
    settings = backend_settings
    store = connect(settings.resolved_clickhouse_url)
    writer = AuditWriter(settings, partition=0)
    try:
        writer.write(
            [
                entry(1),
                entry(
                    2,
                    principal="key:k_feed",
                    principal_kind="api_key",
                    role="integration",
                    action="POST /stock/adjust",
                    resource="SKU-1@S1",
                ),
                entry(3, outcome="denied", status=403, action="POST /orders/{id}/approve"),
                entry(4, action="read personal data", resource="cust-key-9"),
                entry(70),
            ]
        )
    finally:
        writer.close()
    project(settings, store)
    window = {"since": "2026-12-05 08:00:00", "until": "2026-12-05 08:00:59"}

    def report(**params: object) -> list[tuple[object, ...]]:
        rows = run_report(store, "audit", **window, **params).as_dicts()
        return [(r["principal"], r["action"], r["resource"], r["outcome"]) for r in rows]

    assert [r[2] for r in report()] == ["cust-key-9", "order-3", "SKU-1@S1", "order-1"]
    assert report(principal="key:k_feed") == [
        ("key:k_feed", "POST /stock/adjust", "SKU-1@S1", "allowed")
    ]
    assert [r[2] for r in report(action="POST /orders")] == ["order-3", "order-1"]
    assert [r[2] for r in report(outcome="denied")] == ["order-3"]
    assert [r[2] for r in report(limit=1)] == ["cust-key-9"]
    everything = run_report(
        store, "audit", since="2026-12-05 08:00:00", until="2026-12-05 08:02:00"
    ).as_dicts()
    assert everything[0]["resource"] == "order-70" and everything[0]["status"] == 0
    assert everything[0]["at"] == datetime(2026, 12, 5, 8, 1, 10)
    store.close()


def test_a_running_projection_takes_entries_as_they_are_written(
    backend_settings: Settings,
) -> None:
    settings = backend_settings
    store = connect(settings.resolved_clickhouse_url)
    reader = connect(settings.resolved_clickhouse_url)  # a connection is not for two threads
    migrate(reader)  # the table is there before the thread makes it: the test reads it at once
    projection = AuditProjection(settings=settings, store=store, batch_seconds=0.1, lease=False)
    stop = threading.Event()
    running = threading.Thread(target=projection.run, kwargs={"until": lambda _: stop.is_set()})
    running.start()
    writer = AuditWriter(settings, partition=0)
    try:
        for n in range(3):
            writer.record(entry(n))
            deadline = time.monotonic() + 30
            while len(audit_rows(reader)) < n + 1:
                assert time.monotonic() < deadline, f"entry {n} not projected within 30 s"
                time.sleep(0.05)
    finally:
        stop.set()
        running.join(30)
        projection.close()
        writer.close()
    assert [row[1:3] for row in audit_rows(reader)] == [
        (1, "order-0"),
        (2, "order-1"),
        (3, "order-2"),
    ]
    reader.close()
    store.close()
