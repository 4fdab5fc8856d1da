"""Several projectors of one database split the partitions (a Kafka consumer group), and a
claim per partition in ClickHouse fences every write: a projector whose partitions were taken
(paused past its session, killed and restarted) cannot write over its successor; a rebuild's
swap fences every projector of the old tables (projections/lease.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from infra.audit import AuditWriter
from infra.settings import Settings
from projections.audit import AuditProjection
from projections.lease import (
    LEASE_COLUMNS,
    PROJECTOR_LEASES,
    Claim,
    FencedStore,
    PartitionLease,
)
from projections.projector import BatchStats, Projector
from projections.schema import DEAD_LETTERS_COLUMNS, migrate
from projections.store import ClickHouseStore, connect
from tests.conftest import settings_env
from tests.projections.conftest import contents, physical_rows, project_all
from tests.projections.scenario import Scenario, build
from tests.projections.test_audit import entry as audit_entry

pytestmark = pytest.mark.integration

SESSION_S = 6.0  # the brokers' least session timeout: a lost projector's partitions move soon


def leased(settings: Settings) -> Settings:
    return settings.model_copy(update={"projector_session_timeout_s": SESSION_S})


def test_a_partition_is_held_by_its_newest_claim_and_a_tie_holds_nothing(
    any_store: ClickHouseStore, stack_settings: Settings
) -> None:
    store = any_store
    migrate(store)
    at = datetime(2026, 1, 1)
    store.insert(
        PROJECTOR_LEASES,
        LEASE_COLUMNS,
        [
            ("t", 0, 1, "old", at),
            ("t", 0, 2, "new", at),  # newer: "old" no longer holds t/0
            ("t", 1, 1, "old", at),
            ("t", 2, 3, "old", at),
            ("t", 2, 3, "new", at),  # two claims raced to one epoch: nobody holds t/2
        ],
    )
    lease = PartitionLease(settings=stack_settings, store=store, topics=["t"], group="unused")
    assert lease.held("old") == {("t", 1)}
    assert lease.held("new") == {("t", 0)}

    for holder in ("old", "new"):
        fenced = lease.fence(Claim(holder, frozenset(), 0))
        fenced.insert(
            "dead_letters",
            DEAD_LETTERS_COLUMNS,
            [(f"{holder}-{p}", "r", 1, "t", p, 7) for p in range(3)],
        )
    assert sorted(store.query(f"SELECT dead_letter_id FROM {store.database}.dead_letters")) == [
        ("new-0",),
        ("old-1",),
    ]


@pytest.mark.parametrize("fenced", [True, False], ids=["fenced", "without-the-fence"])
def test_a_projector_whose_partitions_were_taken_writes_nothing_when_it_wakes(
    backend_settings: Settings, fenced: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The zombie folds a batch, is 'paused' past its session (it leaves the group: Kafka
    gives its partitions to the successor, which projects the whole log), then writes that
    batch. Without the fence (the control) that batch doubles rows, which is what the test
    would catch if the fence did not hold."""
    settings = leased(backend_settings)
    scenario = build(orders=60, stock_events=300, seed=21)
    scenario.publish(settings)
    if not fenced:
        monkeypatch.setattr(FencedStore, "_and", lambda self, where: where or "1")
    store = connect(settings.resolved_clickhouse_url)
    zombie = Projector(settings=settings, store=store, batch_size=60, batch_seconds=0.2)
    assert zombie.lease is not None
    written: list[BatchStats] = []

    def on_batch(stats: BatchStats) -> None:
        written.append(stats)
        if len(written) == 2:  # the next batch is folded, not written yet: pause here
            assert zombie.lease is not None
            zombie.lease.leave()
            own = connect(settings.resolved_clickhouse_url)
            successor = Projector(settings=settings, store=own, batch_size=500, batch_seconds=0.2)
            try:
                successor.run(until=lambda _: successor.lag() == 0)
            finally:
                own.close()

    try:
        zombie.run(until=lambda _: len(written) >= 2, on_batch=on_batch)
        # What it had read when it was paused (the pipeline writes what it has read).
        woke = written[2:]
        assert woke, "the zombie wrote no batch after its pause"
        assert sum(sum(stats.rows.values()) for stats in woke) > 0
        with clean_projection(settings, store) as clean:
            if fenced:
                assert physical_rows(store) == physical_rows(clean)
                assert contents(store) == contents(clean)
            else:
                assert physical_rows(store) != physical_rows(clean)
    finally:
        store.close()


@contextmanager
def clean_projection(settings: Settings, store: ClickHouseStore) -> Iterator[ClickHouseStore]:
    """The whole log projected by one projector alone into a database beside `store`'s."""
    clean = store.with_database(store.database + "_clean")
    try:
        project_all(settings, clean)
        yield clean
    finally:
        clean.execute(f"DROP DATABASE IF EXISTS {clean.database}")
        clean.close()


# ---------------------------------------------------------------- `oms project` processes


def start_projector(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "oms.cli", "project", "--batch-size", "400"],
            env=settings_env(settings) | {"OMS_PROJECTOR_SESSION_TIMEOUT_S": str(SESSION_S)},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )


def holders(store: ClickHouseStore) -> dict[tuple[str, int], int]:
    """Per partition, the pid of the projector holding it (from its claim's holder token)."""
    try:
        rows = store.query(
            "SELECT _topic, _partition, holders[1] FROM (SELECT _topic, _partition, epoch, "
            f"groupUniqArray(holder) AS holders FROM {store.database}.{PROJECTOR_LEASES} "
            "GROUP BY _topic, _partition, epoch ORDER BY _topic, _partition, epoch DESC "
            "LIMIT 1 BY _topic, _partition) WHERE length(holders) = 1"
        )
    except Exception:  # noqa: BLE001 - not made yet
        return {}
    return {(str(t), int(p)): int(str(h).split(":")[1]) for t, p, h in rows}


def projected(store: ClickHouseStore) -> int:
    """Messages the offset ledger says are written."""
    try:
        rows = store.query(
            f"SELECT max(_offset) + 1 FROM {store.database}.projector_offsets "
            "GROUP BY _topic, _partition"
        )
    except Exception:  # noqa: BLE001 - not made yet
        return 0
    return sum(int(n) for (n,) in rows)


def wait_for(check: Callable[[], bool], *, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def parts(scenario: Scenario, n: int) -> list[Scenario]:
    """The scenario's logs cut in `n` consecutive parts, to publish one after another."""

    def cut(log: list[Any], i: int) -> list[Any]:
        return log[len(log) * i // n : len(log) * (i + 1) // n]

    histories = (scenario.order_histories, scenario.stock_histories)
    return [
        Scenario(*histories, cut(scenario.order_log, i), cut(scenario.stock_log, i))
        for i in range(n)
    ]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The `oms project` processes a test starts; each killed at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_two_projectors_split_the_partitions_and_take_over_from_a_paused_or_killed_one(
    isolated_settings: Settings,
    store: ClickHouseStore,
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    settings = isolated_settings
    if not settings.resolved_clickhouse_url.startswith("clickhouse://"):
        pytest.fail("this test needs the ClickHouse server (several processes share it)")
    scenario = build(orders=500, stock_events=1500, seed=31)
    first, second, third, fourth = parts(scenario, 4)
    every = frozenset(
        (topic, p)
        for topic in (settings.topics.orders, settings.topics.inventory)
        for p in range(3)
    )
    a = start_projector(settings, tmp_path / "a.log")
    b = start_projector(settings, tmp_path / "b.log")
    processes += [a, b]

    def split() -> bool:
        held = holders(store)
        return held.keys() == every and set(held.values()) == {a.pid, b.pid}

    wait_for(split, what="both projectors to hold partitions")
    before = holders(store)
    first.publish(settings)
    wait_for(lambda: projected(store) >= first.messages, what="the first part projected")
    # Each partition's part was written by the one projector holding it all along.
    assert holders(store) == before
    ledger = store.query(
        f"SELECT DISTINCT _topic, _partition FROM {store.database}.projector_offsets"
    )
    assert {(str(t), int(p)) for t, p in ledger} == every

    # A is paused in the middle of the second part, past its session: B takes its partitions.
    second.publish(settings)
    time.sleep(0.3)
    os.killpg(a.pid, signal.SIGSTOP)
    wait_for(lambda: set(holders(store).values()) == {b.pid}, what="B to take A's partitions")
    done = first.messages + second.messages
    wait_for(lambda: projected(store) >= done, what="the second part projected by B")
    # A wakes (what it sends now is dropped), finds it lost them, and takes its share again.
    os.killpg(a.pid, signal.SIGCONT)
    wait_for(split, what="A to rejoin and claim again")
    third.publish(settings)
    wait_for(lambda: projected(store) >= done + third.messages, what="the third part projected")

    # B is killed mid-batch: A takes every partition and projects the rest.
    fourth.publish(settings)
    time.sleep(0.3)
    os.killpg(b.pid, signal.SIGKILL)
    wait_for(lambda: set(holders(store).values()) == {a.pid}, what="A to take B's partitions")
    wait_for(lambda: projected(store) >= scenario.messages, what="everything projected")
    assert a.poll() is None

    with clean_projection(settings, store) as clean:
        assert physical_rows(store) == physical_rows(clean)
        assert contents(store) == contents(clean)


def test_a_rebuild_swaps_while_two_projectors_run_and_both_resume_on_the_new_tables(
    isolated_settings: Settings,
    store: ClickHouseStore,
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    settings = isolated_settings
    scenario = build(orders=150, stock_events=300, seed=9)
    first, second = parts(scenario, 2)
    first.publish(settings)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    processes += [start_projector(settings, log) for log in logs]
    pids = {process.pid for process in processes}
    wait_for(lambda: set(holders(store).values()) == pids, what="both projectors to hold")
    wait_for(lambda: projected(store) >= first.messages, what="the first part projected")
    db = store.database
    store.execute(f"INSERT INTO {db}.orders (order_id, status, version) SELECT 'ghost', 'held', 9")
    store.execute(f"INSERT INTO {db}.stock (sku, location, sequence) SELECT 'GHOST', 'W9', 1")

    done = subprocess.run(
        [sys.executable, "-m", "oms.cli", "project", "--rebuild"],
        env=settings_env(settings) | {"OMS_PROJECTOR_SESSION_TIMEOUT_S": str(SESSION_S)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"from {first.messages:,} messages" in done.stdout
    second.publish(settings)  # taken by the two projectors, on the swapped-in tables
    wait_for(lambda: projected(store) >= scenario.messages, what="the second part projected")
    assert all(process.poll() is None for process in processes)
    for log in logs:
        assert "a rebuild is swapping in new tables; pausing until it is done" in log.read_text()
    with clean_projection(settings, store) as clean:
        assert physical_rows(store) == physical_rows(clean)
        assert contents(store) == contents(clean)


def test_two_audit_projections_split_the_audit_topic_and_write_each_entry_once(
    isolated_settings: Settings, store: ClickHouseStore
) -> None:
    settings = leased(isolated_settings)
    writers = [AuditWriter(settings, partition=p) for p in range(3)]
    stop = threading.Event()
    own = [connect(settings.resolved_clickhouse_url) for _ in range(2)]  # one per thread
    projections = [AuditProjection(settings=settings, store=mine) for mine in own]
    threads = [
        threading.Thread(target=projection.run, kwargs={"until": lambda _: stop.is_set()})
        for projection in projections
    ]

    def entries(first: int) -> None:
        for p, writer in enumerate(writers):
            writer.write([audit_entry(first + 10 * p + n) for n in range(10)])

    def rows() -> tuple[int, int]:
        (counted,) = store.query(
            f"SELECT count(), uniqExact(_partition, _offset) FROM {store.database}.audit_log"
        )
        return int(counted[0]), int(counted[1])

    def holders() -> set[str]:
        return {
            str(holder)
            for (holder,) in store.query(
                f"SELECT argMax(holder, epoch) FROM {store.database}.audit_leases "
                "GROUP BY _topic, _partition"
            )
        }

    migrate(store)  # so that the checks below can ask before the projections have started
    try:
        entries(0)
        for thread in threads:
            thread.start()
        wait_for(lambda: rows() == (30, 30), what="the first entries projected")
        wait_for(lambda: len(holders()) == 2, what="both projections to hold partitions")
        entries(100)
        wait_for(lambda: rows() == (60, 60), what="the later entries projected, each once")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        for projection, mine in zip(projections, own, strict=True):
            projection.close()
            mine.close()
        for writer in writers:
            writer.close()
    assert rows() == (60, 60)
