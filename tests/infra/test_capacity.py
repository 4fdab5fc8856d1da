"""The capacity plan (`oms topics plan`) and the replication a number of brokers allows: pure
arithmetic, no broker."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from infra.capacity import (
    PEAK_HOUR_FACTOR,
    PEAK_SECOND_FACTOR,
    SECONDS_A_DAY,
    WORKER_ORDERS_PER_S,
    Replication,
    plan_capacity,
    replication_for,
)
from infra.settings import Settings
from oms.cli import main


@pytest.mark.parametrize(
    ("brokers", "expected"),
    [
        (1, Replication(1, 1)),
        (2, Replication(2, 1)),
        (3, Replication(3, 2)),
        (7, Replication(3, 2)),
    ],
)
def test_three_copies_once_there_are_three_brokers_and_writes_need_all_but_one(
    brokers: int, expected: Replication
) -> None:
    assert replication_for(brokers) == expected


def test_a_cluster_without_brokers_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one broker"):
        replication_for(0)


def test_the_settings_replicate_as_many_times_as_the_brokers_listed_allow() -> None:
    assert Settings(kafka_bootstrap="localhost:9092").replication_factor == 1
    assert Settings(kafka_bootstrap="a:9092,b:9092,c:9092").replication_factor == 3
    assert (
        Settings(kafka_bootstrap="a:1,b:2,c:3,d:4", kafka_replication_factor=2).replication_factor
        == 2
    )


def test_new_stacks_get_twelve_partitions() -> None:
    assert Settings.model_fields["kafka_partitions"].default == 12


def test_the_peak_second_is_the_mean_times_both_factors() -> None:
    made = plan_capacity(orders_per_day=864_000)  # 10 orders/s on average
    assert made.mean_orders_per_s == pytest.approx(10.0)
    assert made.peak_hour_orders_per_s == pytest.approx(10.0 * PEAK_HOUR_FACTOR)
    assert made.peak_orders_per_s == pytest.approx(10.0 * PEAK_HOUR_FACTOR * PEAK_SECOND_FACTOR)


def test_a_small_business_needs_one_worker_a_spare_twelve_partitions_and_three_brokers() -> None:
    made = plan_capacity(orders_per_day=30_000)  # the restaurant chain of docs/architecture.md
    assert (made.workers_for_peak, made.workers) == (1, 2)
    assert made.partitions == 12
    assert made.brokers == 3
    assert made.replication == Replication(3, 2)
    assert made.projectors == 1
    assert made.clickhouse_servers == 1


def test_workers_follow_the_measured_rate_per_process_at_the_peak() -> None:
    # Exactly 4 workers' worth of orders at the peak second, then one order a day more.
    per_day = 4 * WORKER_ORDERS_PER_S * SECONDS_A_DAY / (PEAK_HOUR_FACTOR * PEAK_SECOND_FACTOR)
    assert plan_capacity(orders_per_day=int(per_day)).workers_for_peak == 4
    assert plan_capacity(orders_per_day=int(per_day) + 1).workers_for_peak == 5
    assert plan_capacity(orders_per_day=int(per_day) + 1).workers == 6


def test_partitions_leave_room_for_twice_the_workers_in_steps_of_twelve() -> None:
    for orders_per_day in (10_000, 1_000_000, 50_000_000, 300_000_000, 1_000_000_000):
        made = plan_capacity(orders_per_day=orders_per_day)
        assert made.partitions % 12 == 0
        assert made.partitions >= 2 * made.workers
        assert made.partitions - 12 < 2 * made.workers or made.partitions == 12
    assert plan_capacity(orders_per_day=1_000_000_000).partitions == 84  # 41 workers


def test_a_busier_peak_needs_more_workers_for_the_same_day() -> None:
    day = 200_000_000
    calm = plan_capacity(orders_per_day=day, peak_hour_factor=1.5, peak_second_factor=1)
    sale = plan_capacity(orders_per_day=day, peak_hour_factor=6, peak_second_factor=2)
    assert calm.workers < sale.workers
    assert sale.peak_orders_per_s == pytest.approx(8 * calm.peak_orders_per_s)


def test_past_one_projector_the_plan_asks_for_more() -> None:
    made = plan_capacity(orders_per_day=1_000_000_000)
    assert made.projector_share == pytest.approx(694_444.4 / 73_302, rel=1e-4)
    assert made.projectors == 10
    assert made.brokers > 3  # the records outgrow three brokers' measured rate
    assert made.clickhouse_servers > 1


@pytest.mark.parametrize(
    "wrong",
    [{"orders_per_day": 0}, {"orders_per_day": 10, "peak_hour_factor": 0.5}],
)
def test_nonsense_targets_are_refused(wrong: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        plan_capacity(**wrong)  # type: ignore[arg-type]


def test_oms_topics_plan_prints_what_the_target_needs() -> None:
    result = CliRunner().invoke(main, ["topics", "plan", "--orders-per-day", "1000000000"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("target: 1,000,000,000 orders a day = 11,574.1/s on average")
    assert "peak second x2 = 69,444.4 orders/s" in lines[0]
    assert lines[1].startswith("worker processes: 41 (40 at 1,740 orders/s each")
    assert lines[2].startswith("partitions: 84 per topic")
    assert lines[3].startswith("brokers: 49 (replication factor 3, min.insync.replicas 2")
    assert lines[4].startswith("projector processes: 10 (694,444 events/s at the peak = 947.4%")
    assert lines[5].startswith("ClickHouse: 9 servers")


def test_oms_topics_plan_takes_other_peak_factors() -> None:
    result = CliRunner().invoke(
        main,
        ["topics", "plan", "--orders-per-day", "864000", "--peak-hour-factor", "5",
         "--peak-second-factor", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "peak hour x5 = 50.0/s; peak second x1 = 50.0 orders/s" in result.output
