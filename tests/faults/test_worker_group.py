"""A worker group on a 3-broker cluster through a bad day: 20,000 orders while a worker joins,
a broker is killed (kill -9) and restarted, and a worker leaves. Afterwards: no order lost,
no event twice, every order's sequence intact, no unit reserved twice or oversold, and what
the ledger holds is exactly what the orders say they hold — and the group drained.

The pause each change caused is measured from the order log (the longest time it did not
grow after the change) and printed; docs/benchmarks.md records a run's figures.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import KafkaException

from events.models import stock_key
from infra.publisher import Publisher, PublishError
from infra.settings import Settings
from tests.faults.brokers import BrokerCluster, broker_cluster
from tests.streams.test_invariants import (
    TERMINAL,
    check_ledger,
    check_orders,
    dish_order,
    log_size,
    order_log,
    receive_stock,
    ship_order,
    start_worker,
    stop,
    wait_until_settled,
    write_catalogue,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.chaos]
ORDERS = 20_000
STOCK = {"WH-A": 3_500, "WH-B": 3_500, "WH-C": 2_000}  # 9,000 units for 10,000 ship orders


class LogWatch:
    """Samples the order log's size every 50 ms; `pause_after(t)` is the longest stretch
    without growth that began at or after `t` and before the log grew again by 1,000."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a broker being killed: sample again
                self.samples.append((time.monotonic(), log_size(self.settings)))
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def pause_after(self, at: float) -> float:
        samples = [(t, n) for t, n in self.samples if t >= at]
        if not samples:
            return 0.0
        longest, since, last = 0.0, samples[0][0], samples[0][1]
        for t, n in samples:
            if n != last:
                longest = max(longest, t - since)
                since, last = t, n
                if n >= samples[0][1] + 1_000:
                    break
        return longest


@pytest.mark.timeout(900)
def test_a_worker_group_survives_joins_leaves_and_a_broker_kill_and_drains(
    stack_settings: Settings, tmp_path: Path
) -> None:
    with broker_cluster(
        tmp_path / "brokers", kafka_libs=stack_settings.kafka_libs_dir, partitions=6
    ) as cluster:
        run_the_day(cluster, tmp_path)


def size(settings: Settings) -> int:
    """The order log's size, asked again while a broker is away."""
    while True:
        try:
            return log_size(settings)
        except KafkaException:
            time.sleep(0.2)


def run_the_day(cluster: BrokerCluster, tmp_path: Path) -> None:
    settings = cluster.settings.model_copy(
        update={
            "catalogue_file": write_catalogue(tmp_path / "catalogue.json"),
            "consumer_group": "oms-group-test",
            "snapshot_every": 2_000,
            "expiry_check_s": 5.0,
        }
    )
    logs = [tmp_path / f"worker-{n}.log" for n in range(3)]
    workers = [start_worker(settings, logs[0]), start_worker(settings, logs[1])]
    watch = LogWatch(settings)
    changes: list[tuple[str, float]] = []
    try:
        receive_stock(settings, STOCK)
        publisher = Publisher(settings)

        def publish() -> None:
            for n in range(ORDERS):
                order = ship_order(n, run="group") if n % 2 else dish_order(n, run="group")
                while True:  # as a channel does when intake answers 503: the same order again
                    try:
                        publisher.intake(order)
                        break
                    except PublishError:
                        time.sleep(1)
            publisher.flush()

        left: list[object] = []

        def leave(worker: object) -> None:
            left.append(worker)
            stop(workers[0])

        sending = threading.Thread(target=publish)
        sending.start()
        expected = 4 * ORDERS
        plan = [
            (0.20, "a third worker joins", lambda: workers.append(start_worker(settings, logs[2]))),  # noqa: E501
            (0.40, "broker 2 killed (kill -9)", lambda: cluster.kill(2)),
            (0.55, "the first worker leaves (SIGTERM)", lambda: leave(workers[0])),
            (0.70, "broker 2 restarted", lambda: cluster.restart(2)),
        ]
        deadline = time.monotonic() + 600
        for share, what, do in plan:
            while size(settings) < expected * share:
                assert time.monotonic() < deadline, f"no progress before: {what}"
                for n, worker in enumerate(workers):
                    if worker not in left:
                        assert worker.poll() is None, logs[n].read_text()[-3000:]
                time.sleep(0.1)
            changes.append((what, time.monotonic()))
            do()
        sending.join()
        try:
            by_order = wait_until_settled(
                settings, ORDERS, timeout_s=600, worker=workers[-1], log=logs[2]
            )
        except AssertionError as stuck:  # which orders, and where each stopped
            unsettled = {
                order_id: [e.event_type for e in events]
                for order_id, events in order_log(settings).items()
                if events[-1].event_type not in TERMINAL
            }
            raise AssertionError(f"{stuck}; not settled: {unsettled}") from None
    finally:
        watch.stop()
        for worker in workers:
            stop(worker)

    pauses = {what: round(watch.pause_after(at), 2) for what, at in changes}
    print("pauses (s) of the order log after each change:", pauses)

    assert len(by_order) == ORDERS, "an order is missing from the order log"
    check_orders(by_order)  # no event twice, sequences intact, every order received first
    levels = check_ledger(settings)  # ATP never negative, no unit reserved twice
    held: Counter[str] = Counter()
    for events in by_order.values():
        if events[-1].event_type == "OrderPrioritised":
            reserved = [e for e in events if e.event_type == "OrderReserved"]
            for line in getattr(reserved[-1], "lines", []) if reserved else []:
                held[stock_key(line.sku, line.location)] += line.quantity
    assert {k: v.reserved for k, v in levels.items() if v.reserved} == dict(held)
    assert sum(held.values()) == sum(STOCK.values()), "stock left unsold, or oversold"
    outcomes = Counter(events[-1].event_type for events in by_order.values())
    assert outcomes["OrderPrioritised"] == ORDERS - (ORDERS // 2 - sum(STOCK.values()))
    restarted = "".join(log.read_text() for log in logs if log.exists())
    assert "from a snapshot at offset" in restarted, "no partition moved through a snapshot"
