"""`oms audit` on the real broker and ClickHouse: `verify` passes an intact chain and names the
offset of a changed or a missing entry (exit 3); `log` shows the latest entries; `project`
fills the table `oms report audit` reads."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from infra.audit import AuditEntry, AuditWriter, read_records
from infra.settings import Settings
from tests.conftest import settings_env
from tests.oms.test_cli import oms

pytestmark = pytest.mark.integration


def entry(n: int) -> AuditEntry:
    return AuditEntry(
        principal="key:k_ops",
        principal_kind="api_key",
        role="operator",
        action="POST /stock/adjust",
        resource=f"SKU-{n}@S1",
        outcome="completed",
        status=202,
        at=datetime(2026, 12, 5, 8, 30, n, tzinfo=UTC),
        client_ip="192.0.2.10",
        request_id=f"req-{n}",
    )


def scratch_topic(settings: Settings, values: list[bytes]) -> str:
    """A one-partition topic holding `values` at offsets 0, 1, 2 ..."""
    name = f"t{uuid.uuid4().hex[:10]}.audit-copy"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result(30)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for value in values:
        producer.produce(name, value=value, partition=0)
    assert producer.flush(10) == 0
    return name


@pytest.fixture
def written(isolated_settings: Settings) -> list[bytes]:
    """Five entries on partition 0 of the test's audit topic, as stored."""
    writer = AuditWriter(isolated_settings, partition=0)
    writer.write([entry(n) for n in range(5)])
    writer.close()
    values = [
        v or b"" for _, v in read_records(isolated_settings, isolated_settings.topics.audit, 0)
    ]
    assert len(values) == 5
    return values


def test_verify_passes_an_intact_chain_and_names_a_changed_or_missing_entry(
    isolated_settings: Settings, written: list[bytes]
) -> None:
    env = settings_env(isolated_settings)
    intact = oms("audit", "verify", env=env)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "partition 0: 5 entries, intact, last entry 5" in intact.stdout
    assert "partition 1: 0 entries, intact" in intact.stdout

    tampered = [json.loads(v) for v in written]
    tampered[2]["resource"] = "SKU-99@S1"
    changed_topic = scratch_topic(
        isolated_settings,
        [json.dumps(e, sort_keys=True, separators=(",", ":")).encode() for e in tampered],
    )
    changed = oms("audit", "verify", "--topic", changed_topic, env=env)
    assert changed.returncode == 3, changed.stdout + changed.stderr
    assert "BROKEN at 1 place(s)" in changed.stdout
    assert "partition 0 offset 2: its hash is not the hash of its content" in changed.stderr

    missing_topic = scratch_topic(isolated_settings, written[:3] + written[4:])
    missing = oms("audit", "verify", "--topic", missing_topic, "--partition", "0", env=env)
    assert missing.returncode == 3, missing.stdout + missing.stderr
    assert "partition 0 offset 3: its prev_hash" in missing.stderr
    assert "1 entry missing" in missing.stderr

    copied_topic = scratch_topic(isolated_settings, written)
    copied = oms("audit", "verify", "--topic", copied_topic, env=env)
    assert copied.returncode == 0, copied.stdout + copied.stderr


def test_log_shows_the_latest_entries_oldest_first(
    isolated_settings: Settings, written: list[bytes]
) -> None:
    result = oms("audit", "log", "--limit", "2", env=settings_env(isolated_settings))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert "SKU-3@S1" in lines[0] and "SKU-4@S1" in lines[1]
    assert lines[1].startswith("2026-12-05T08:30:04.000000Z  0:")
    assert "key:k_ops (operator)  POST /stock/adjust  SKU-4@S1  completed 202" in lines[1]


def test_project_fills_the_table_the_audit_report_reads(
    isolated_settings: Settings, written: list[bytes]
) -> None:
    env = settings_env(isolated_settings)
    projected = oms("audit", "project", "--once", env=env)
    assert projected.returncode == 0, projected.stdout + projected.stderr
    assert "5 audit entries projected" in projected.stdout
    again = oms("audit", "project", "--once", env=env)
    assert "0 audit entries projected" in again.stdout
    window = ("--since", "2026-12-05", "--until", "2026-12-06")
    report = oms("report", "audit", *window, "--principal", "key:k_ops", "--csv", env=env)
    assert report.returncode == 0, report.stdout + report.stderr
    rows = report.stdout.splitlines()
    assert rows[0].startswith("at,principal,principal_kind,role,action,resource,outcome,status")
    assert [row.split(",")[5] for row in rows[1:]] == [f"SKU-{n}@S1" for n in (4, 3, 2, 1, 0)]


def test_verify_without_kafka_says_so_and_exits_75(isolated_settings: Settings) -> None:
    env = settings_env(isolated_settings) | {"OMS_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    result = oms("audit", "verify", env=env)
    assert result.returncode == 75, result.stdout + result.stderr
    assert "oms audit verify: Kafka does not answer" in result.stderr
