"""`oms worker` as a process: how it ends, for whatever supervises it (docs/operations.md)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from infra.exit_codes import ExitCode
from infra.publisher import Publisher
from infra.settings import Settings, Topics
from oms.stack import KafkaService
from tests.conftest import delete_topics, settings_env
from tests.factories import received

pytestmark = pytest.mark.integration


def isolated(stack_settings: Settings) -> Settings:
    uid = uuid.uuid4().hex[:10]
    topics = Topics(**{name: f"w{uid}.{name}" for name in Topics.model_fields})
    return stack_settings.model_copy(
        update={"topics": topics, "consumer_group": f"w-{uid}", "kafka_partitions": 1}
    )


def worker(settings: Settings) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "oms.cli", "worker", "--loglevel", "warn"],
        env=settings_env(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_a_worker_whose_topics_do_not_exist_exits_78_naming_them(stack_settings: Settings) -> None:
    settings = isolated(stack_settings)  # topics never created
    process = worker(settings)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == ExitCode.CONFIG, output[-2000:]
    assert settings.topics.intake in output and "topics missing" in output


def test_a_worker_whose_output_kafka_refuses_stops_instead_of_going_on(
    stack_settings: Settings,
) -> None:
    settings = isolated(stack_settings)
    KafkaService(settings).ensure_topics()
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    entry = ConfigEntry("max.message.bytes", "200", incremental_operation=AlterConfigOpType.SET)
    topic = ConfigResource.Type.TOPIC
    tiny = ConfigResource(topic, settings.topics.orders, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([tiny]).values():
        future.result(timeout=30)
    process = worker(settings)
    publisher = Publisher(settings)
    publisher.intake(received(order_id=f"o-{uuid.uuid4().hex[:6]}"))
    publisher.flush(30)
    try:
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
        delete_topics(settings)
    # Not restarted in-process with states ahead of the log: the whole worker ends, non-zero.
    assert process.returncode == ExitCode.BUG, output[-2000:]
    assert "MSG_SIZE_TOO_LARGE" in output


def test_processes_2_share_the_partitions_and_stop_together_when_one_dies(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    """`oms worker --processes 2`: two workers of one group split the partitions (each
    rebuilds some, none all), every order is decided once; when one is killed (-9), the
    other is stopped and the command exits with the killed one's code, so a supervisor
    restarts them together."""
    import os
    import signal
    import time

    from tests.streams.test_invariants import check_orders, dish_order, order_log

    settings = isolated_settings  # 3 partitions
    log = tmp_path / "workers.log"
    with log.open("wb") as out:
        group = subprocess.Popen(
            [sys.executable, "-m", "oms.cli", "worker", "--processes", "2", "--loglevel", "info"],
            env=settings_env(settings), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(synced := _synced(log)) < 2 or len(set(synced.values())) != 1:
            assert group.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"the two workers did not share a group: {synced}"
            time.sleep(0.2)
        publisher = Publisher(settings)
        orders = 120
        for n in range(orders):
            publisher.intake(dish_order(n, run="procs"))
        publisher.flush()
        deadline = time.monotonic() + 240
        while True:
            by_order = order_log(settings)
            settled = [e for e in by_order.values() if e[-1].event_type == "OrderPrioritised"]
            if len(settled) == orders:
                break
            assert group.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{len(settled)} of {orders} decided"
            time.sleep(0.5)
        check_orders(by_order)
        # The partitions each rebuilt since its last assignment (each rebuilds all it is
        # assigned at once: the first, alone for a moment, rebuilt all three before).
        rebuilt: dict[str, set[str]] = {}
        for line in log.read_text().splitlines():
            if "] [" not in line:
                continue
            pid = line.split("] [", 1)[1].split("]", 1)[0]
            if "Successfully synced group" in line:
                rebuilt[pid] = set()
            elif "] rebuilt " in line and ".orders[" in line:
                rebuilt.setdefault(pid, set()).add(line.split(".orders[", 1)[1].split("]")[0])
        assert len(rebuilt) == 2, f"not two workers deciding: {rebuilt}"
        assert all(0 < len(parts) < 3 for parts in rebuilt.values()), rebuilt

        victim = int(next(iter(rebuilt)))
        os.kill(victim, signal.SIGKILL)
        assert group.wait(timeout=90) == -signal.SIGKILL % 256 or group.returncode != 0
    finally:
        if group.poll() is None:
            os.killpg(group.pid, signal.SIGKILL)
            group.wait()


def _synced(log: Path) -> dict[str, int]:
    """Each worker process's last group generation, from Faust's (aiokafka's) log lines."""
    found: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        if "Successfully synced group" in line and "] [" in line:
            pid = line.split("] [", 1)[1].split("]", 1)[0]
            found[pid] = int(line.rsplit("generation", 1)[1].strip())
    return found
