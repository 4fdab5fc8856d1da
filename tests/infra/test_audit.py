"""The audit trail (infra/audit.py): the hash chain, checked without Kafka; and its writers on
the real broker — a restarted writer continues the chain from the topic, a writer that died
mid-transaction leaves nothing a reader sees, two writers of one partition never fork it,
concurrent entries share a transaction, and a writer without Kafka fails closed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from confluent_kafka import Producer

from infra.audit import (
    GENESIS,
    AuditEntry,
    AuditTrail,
    AuditUnavailable,
    AuditWriter,
    SealedEntry,
    Tail,
    canonical,
    check_chain,
    entry_hash,
    read_records,
    seal,
    verify,
)
from infra.settings import PROJECT_ROOT, Settings


def entry(n: int, **changes: object) -> AuditEntry:
    fields: dict[str, object] = {
        "principal": "key:k_ops",
        "principal_kind": "api_key",
        "role": "operator",
        "action": "POST /orders/{id}/cancel",
        "resource": f"order-{n}",
        "outcome": "allowed",
        "at": datetime(2026, 12, 5, 8, 0, n % 60, 250_000, tzinfo=UTC),
        "client_ip": "203.0.113.7",
        "user_agent": "curl/8.5",
        "request_id": f"req-{n}",
    }
    return AuditEntry.model_validate(fields | changes)


def chain(count: int) -> list[SealedEntry]:
    sealed: list[SealedEntry] = []
    tail = Tail()
    for n in range(count):
        sealed.append(seal(entry(n), after=tail, writer="host:1"))
        tail = Tail(sealed[-1].hash, sealed[-1].seq)
    return sealed


def stored(sealed: list[SealedEntry]) -> list[tuple[int, bytes | None]]:
    return [(offset * 2, item.value) for offset, item in enumerate(sealed)]  # markers between


def changed(value: bytes, **fields: object) -> bytes:
    document = json.loads(value) | fields
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


# -- the chain, without Kafka ------------------------------------------------------------------


def test_the_hash_is_sha256_of_the_sorted_compact_json_of_every_other_field() -> None:
    first, second = chain(2)
    stored_fields = json.loads(second.value)
    assert stored_fields["prev_hash"] == first.hash and first.fields["prev_hash"] == GENESIS
    assert [first.seq, second.seq] == [1, 2]
    del stored_fields["hash"]
    recomputed = hashlib.sha256(
        json.dumps(
            stored_fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    ).hexdigest()
    assert recomputed == second.hash
    assert stored_fields["at"] == "2026-12-05T08:00:01.250000Z"
    # prev_hash is part of what is hashed: the same entry after another one hashes differently.
    assert seal(entry(1), after=Tail("f" * 64, 1), writer="host:1").hash != second.hash


def test_an_intact_chain_passes() -> None:
    report = check_chain(0, stored(chain(5)))
    assert report.intact and report.entries == 5 and report.tail.seq == 5
    assert report.last_offset == 8


def test_a_changed_entry_is_named_by_its_offset() -> None:
    records = stored(chain(5))
    records[2] = (4, changed(records[2][1] or b"", resource="order-999"))
    report = check_chain(1, records)
    assert [(b.partition, b.offset) for b in report.breaks] == [(1, 4)]
    assert "the entry was changed" in report.breaks[0].problem


def test_a_changed_entry_with_its_hash_recomputed_breaks_the_link_after_it() -> None:
    records = stored(chain(5))
    document = json.loads(records[2][1] or b"") | {"outcome": "denied"}
    document["hash"] = entry_hash(document)
    records[2] = (4, canonical(document))
    report = check_chain(0, records)
    assert [b.offset for b in report.breaks] == [6]
    assert "prev_hash" in report.breaks[0].problem and "offset 4" in report.breaks[0].problem


def test_a_removed_entry_is_named_at_the_entry_after_the_gap() -> None:
    records = stored(chain(5))
    del records[2]
    report = check_chain(0, records)
    assert [b.offset for b in report.breaks] == [6]
    assert "1 entry missing" in report.breaks[0].problem
    assert "removed or changed" in report.breaks[0].problem


def test_entries_removed_from_the_start_are_named() -> None:
    report = check_chain(0, stored(chain(4))[2:])
    assert [b.offset for b in report.breaks] == [4]
    assert "the start of the partition" in report.breaks[0].problem
    assert "2 entries missing" in report.breaks[0].problem


def test_bytes_that_are_not_an_entry_are_named_and_the_chain_goes_on_around_them() -> None:
    records = stored(chain(3))
    records.insert(1, (1, b"\x00\x00garbage"))
    records.insert(3, (3, b'{"hash": "x"}'))
    report = check_chain(0, records)
    assert [(b.offset, b.problem.split(" (")[0]) for b in report.breaks] == [
        (1, "not an audit entry"),
        (3, "not an audit entry"),
    ]
    assert report.entries == 3


def test_client_text_is_cut_and_a_time_must_be_aware() -> None:
    long = entry(1, user_agent="x" * 5000, reason="r" * 2000)
    assert len(long.user_agent) == 1000 and len(long.reason) == 1000
    with pytest.raises(ValueError, match="timezone-aware"):
        entry(1, at=datetime(2026, 12, 5, 8, 0))
    with pytest.raises(ValueError, match="principal_kind"):
        entry(1, principal_kind="robot")


# -- writers on the real broker ------------------------------------------------------------------


def entries_on(settings: Settings, partition: int) -> list[dict[str, object]]:
    return [
        json.loads(value or b"")
        for _, value in read_records(settings, settings.topics.audit, partition)
    ]


@pytest.mark.integration
def test_a_restarted_writer_continues_the_chain_from_the_topic(
    isolated_settings: Settings,
) -> None:
    settings = isolated_settings
    first = AuditWriter(settings, partition=1)
    first.write([entry(1), entry(2)])
    first.record(entry(3))
    first.close()

    again = AuditWriter(settings, partition=1)
    again.open()
    assert again.tail.seq == 3
    again.record(entry(4))
    again.close()

    on_topic = entries_on(settings, 1)
    assert [e["seq"] for e in on_topic] == [1, 2, 3, 4]
    assert [e["resource"] for e in on_topic] == ["order-1", "order-2", "order-3", "order-4"]
    (report,) = verify(settings, partitions=[1])
    assert report.intact and report.entries == 4
    assert [r.entries for r in verify(settings)] == [0, 4, 0]


@pytest.mark.integration
def test_what_a_writer_left_uncommitted_when_it_died_is_never_read(
    isolated_settings: Settings,
) -> None:
    settings = isolated_settings
    writer = AuditWriter(settings, partition=0)
    writer.write([entry(1), entry(2)])
    writer.close()
    # A writer of partition 0 that died after producing, before committing.
    transactional_id = f"oms-audit.{settings.topics.audit}.0"
    dead = Producer(
        {"bootstrap.servers": settings.kafka_bootstrap, "transactional.id": transactional_id}
    )
    dead.init_transactions(10)
    dead.begin_transaction()
    lost = seal(entry(3, resource="never-committed"), after=writer.tail, writer="dead:1")
    dead.produce(settings.topics.audit, value=lost.value, partition=0)
    dead.flush(10)

    successor = AuditWriter(settings, partition=0)
    successor.record(entry(4))
    successor.close()

    assert [(e["seq"], e["resource"]) for e in entries_on(settings, 0)] == [
        (1, "order-1"),
        (2, "order-2"),
        (3, "order-4"),
    ]
    assert verify(settings, partitions=[0])[0].intact


@pytest.mark.integration
def test_two_writers_of_one_partition_never_fork_its_chain(isolated_settings: Settings) -> None:
    settings = isolated_settings
    a = AuditWriter(settings, partition=2)
    b = AuditWriter(settings, partition=2)
    a.record(entry(1))
    b.record(entry(2))  # starting b fenced a
    with pytest.raises(AuditUnavailable):
        a.record(entry(3))  # fenced: not written, the caller must not go on
    a.record(entry(4))  # a starts over: fences b, continues after b's entry
    with pytest.raises(AuditUnavailable):
        b.record(entry(5))
    b.record(entry(6))
    a.close()
    b.close()

    on_topic = entries_on(settings, 2)
    assert [(e["seq"], e["resource"]) for e in on_topic] == [
        (1, "order-1"),
        (2, "order-2"),
        (3, "order-4"),
        (4, "order-6"),
    ]
    assert verify(settings, partitions=[2])[0].intact


@pytest.mark.integration
def test_writers_on_one_host_take_partitions_of_their_own(isolated_settings: Settings) -> None:
    settings = isolated_settings  # 3 partitions
    writers = [AuditWriter(settings) for _ in range(3)]
    try:
        for writer in writers:
            writer.open()
        assert sorted(w.partition for w in writers if w.partition is not None) == [0, 1, 2]
        with pytest.raises(AuditUnavailable, match="every partition .* has a writer"):
            AuditWriter(settings).open()
        for n, writer in enumerate(writers):
            writer.record(entry(n))
    finally:
        for writer in writers:
            writer.close()
    reports = verify(settings)
    assert [(r.entries, r.intact) for r in reports] == [(1, True)] * 3
    reused = AuditWriter(settings)  # a closed writer's partition is free again
    reused.open()
    assert reused.partition == 0
    reused.close()


@pytest.mark.integration
def test_concurrent_entries_of_a_trail_are_all_chained(isolated_settings: Settings) -> None:
    settings = isolated_settings

    async def scenario() -> list[SealedEntry]:
        trail = AuditTrail.from_settings(settings, partition=0)
        await trail.start()
        try:
            return await asyncio.gather(*(trail.record(entry(n)) for n in range(60)))
        finally:
            await trail.close()

    sealed = asyncio.run(scenario())
    assert sorted(s.seq for s in sealed) == list(range(1, 61))
    on_topic = entries_on(settings, 0)
    assert len(on_topic) == 60
    assert {e["request_id"] for e in on_topic} == {f"req-{n}" for n in range(60)}
    assert verify(settings, partitions=[0])[0].intact


@pytest.mark.integration
def test_a_trail_without_kafka_fails_closed(isolated_settings: Settings) -> None:
    settings = isolated_settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})

    async def scenario() -> None:
        trail = AuditTrail.from_settings(settings, partition=0)
        trail.writer.timeout_s = 1.0
        with pytest.raises(AuditUnavailable):
            await trail.record(entry(1))

    asyncio.run(scenario())


WRITE_FOREVER = """
import sys
from datetime import UTC, datetime
from infra.audit import AuditEntry, AuditWriter
from infra.settings import Settings
writer = AuditWriter(Settings(), partition=0)
n = 0
while True:
    n += 1
    writer.write([AuditEntry(principal="system:killed", principal_kind="system", role="admin",
                             action="tick", resource=str(n), outcome="allowed")] * 3)
"""


@pytest.mark.integration
def test_a_writer_killed_mid_stream_is_continued_by_its_successor(
    isolated_settings: Settings,
) -> None:
    from tests.conftest import settings_env

    settings = isolated_settings
    process = subprocess.Popen(
        [sys.executable, "-c", WRITE_FOREVER], env=settings_env(settings), cwd=PROJECT_ROOT
    )
    try:
        deadline = time.monotonic() + 60
        while len(entries_on(settings, 0)) < 30:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        process.kill()
        process.wait()
    successor = AuditWriter(settings, partition=0)
    successor.open()
    written_before = successor.tail.seq
    successor.record(entry(1))
    successor.close()

    on_topic = entries_on(settings, 0)
    assert written_before >= 30 and written_before % 3 == 0  # whole transactions only
    assert [e["seq"] for e in on_topic] == list(range(1, written_before + 2))
    assert on_topic[-1]["resource"] == "order-1"
    assert verify(settings, partitions=[0])[0].intact


@pytest.mark.integration
def test_the_tail_is_found_behind_many_records_that_are_not_entries(
    isolated_settings: Settings,
) -> None:
    settings = isolated_settings
    first = AuditWriter(settings, partition=1)
    first.write([entry(1), entry(2)])
    first.close()
    junk = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for n in range(200):
        junk.produce(settings.topics.audit, value=b"junk %d" % n, partition=1)
    assert junk.flush(10) == 0

    second = AuditWriter(settings, partition=1)
    second.record(entry(3))
    second.close()

    (report,) = verify(settings, partitions=[1])
    assert report.entries == 3 and report.tail.seq == 3
    assert len(report.breaks) == 200
    assert all(b.problem.startswith("not an audit entry") for b in report.breaks)
