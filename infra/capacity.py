"""What a deployment needs of Kafka and its processes: the replication a number of brokers
allows, and a plan for a target of orders a day (`oms topics plan`).

The plan is arithmetic over figures measured on the development machine (docs/benchmarks.md:
2 virtualised cores that the broker, ClickHouse and the measured process share, so each figure
is what one process gets done on about one core with company), scaled linearly, and over a few
stated assumptions about how a day's orders bunch up. Every constant says where it comes from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# -- Measured (docs/benchmarks.md, "Second re-run of 2026-12-05", 2 cores; the lowest of each
#    range, so the plan errs towards more processes).
# Intake → routed through one `oms worker` process: 1,740–1,919 orders/s (10,000 orders),
# 1,739–1,824 (20,000); 2,350 on 2026-11-25. The figure covers intake, validation, fraud,
# routing, reservation and priority, not the store's later steps (see EVENTS_PER_ORDER).
WORKER_ORDERS_PER_S = 1_740
# One `oms project` process over 1,050,001 events into the ClickHouse 18.16 server.
PROJECTOR_EVENTS_PER_S = 73_302
# A bulk INSERT of `order_events` rows into that server, in the same run: the server's limit.
CLICKHOUSE_ROWS_PER_S = 208_546
# Rows the projector writes per event (docs/benchmarks.md, "Projection": "~2.6 rows an event").
ROWS_PER_EVENT = 2.6
# kafka-producer-perf-test against the single local broker (docs/benchmarks.md, first re-run of
# 2026-12-05: 72,780 records/s; the second re-run measured 81,235).
BROKER_RECORDS_PER_S = 72_780

# -- Assumed (not measured here; change them with the command's options).
# The busiest hour carries 3x the day's mean hourly rate: a restaurant day's lunch and dinner
# rushes, a shop's evening; a platform's sale day is higher still (pass --peak-hour-factor).
PEAK_HOUR_FACTOR = 3.0
# A second within that hour carries 2x the hour's mean: platforms push in bursts, and a
# backlog left by a restart drains at this rate. Sizing for it keeps the latency target
# (p99 ≤ 200 ms) instead of letting a queue build all hour.
PEAK_SECOND_FACTOR = 2.0
# Events an order leaves on the order log and stock ledger over its whole life: ~4.2 from
# intake to routed (docs/benchmarks.md, "Pipeline"), about 6 more for the store's steps
# (accepted, started, ready, handed off, delivered, completed).
EVENTS_PER_ORDER = 10.0
# Kafka records an order writes besides its events: the inputs that cause them (~1.2 intake
# records, docs/benchmarks.md "Pipeline"; the store's ~6 commands). Before replication.
INPUTS_PER_ORDER = 7.0

# -- Choices.
REPLICAS = 3  # copies of every partition once there are 3 brokers
SPARE_WORKERS = 1  # a worker killed leaves its partitions to the others (10 s session timeout)
# Partitions come in steps of 12, which share out evenly over 1, 2, 3, 4, 6 or 12 workers and
# 3 brokers, with room for twice the workers: a keyed topic's partitions are fixed for its
# life, since adding some moves orders to other partitions (another writer for each).
PARTITION_STEP = 12
PARTITION_GROWTH = 2
SECONDS_A_DAY = 86_400


@dataclass(frozen=True)
class Replication:
    """How many copies of each partition, and how many of them must have a write before a
    producer with `acks=all` is told it is done."""

    factor: int
    min_insync: int


def replication_for(brokers: int) -> Replication:
    """3 copies once there are 3 brokers (fewer with fewer); a write needs all but one of them,
    so one broker may be down (or restarting) without refusing a write or losing an
    acknowledged one."""
    if brokers < 1:
        raise ValueError(f"a cluster has at least one broker, not {brokers}")
    factor = min(REPLICAS, brokers)
    return Replication(factor=factor, min_insync=max(1, factor - 1))


@dataclass(frozen=True)
class CapacityPlan:
    """What `orders_per_day` needs at its peak second, and each figure it came from."""

    orders_per_day: int
    mean_orders_per_s: float
    peak_hour_orders_per_s: float
    peak_orders_per_s: float
    workers_for_peak: int
    workers: int
    partitions: int
    peak_events_per_s: float
    projector_share: float  # of one projector process at the peak second
    projectors: int
    peak_rows_per_s: float
    clickhouse_servers: int
    peak_records_per_s: float  # before replication
    brokers: int
    replication: Replication


def plan_capacity(
    *,
    orders_per_day: int,
    peak_hour_factor: float = PEAK_HOUR_FACTOR,
    peak_second_factor: float = PEAK_SECOND_FACTOR,
    worker_orders_per_s: float = WORKER_ORDERS_PER_S,
    events_per_order: float = EVENTS_PER_ORDER,
) -> CapacityPlan:
    """Partitions, worker processes, brokers and ClickHouse for `orders_per_day`, sized for
    the peak second (the day's mean x `peak_hour_factor` x `peak_second_factor`)."""
    if orders_per_day < 1:
        raise ValueError(f"orders a day must be at least 1, not {orders_per_day}")
    if peak_hour_factor < 1 or peak_second_factor < 1:
        raise ValueError("a peak is at least the mean: factors below 1 make no sense")
    if worker_orders_per_s <= 0 or events_per_order <= 0:
        raise ValueError("a worker's rate and the events an order makes must be positive")
    mean = orders_per_day / SECONDS_A_DAY
    peak_hour = mean * peak_hour_factor
    peak = peak_hour * peak_second_factor
    workers_for_peak = max(1, math.ceil(peak / worker_orders_per_s))
    workers = workers_for_peak + SPARE_WORKERS
    steps = math.ceil(workers * PARTITION_GROWTH / PARTITION_STEP)
    partitions = PARTITION_STEP * max(1, steps)
    events = peak * events_per_order
    rows = events * ROWS_PER_EVENT
    records = peak * (events_per_order + INPUTS_PER_ORDER)
    # Every record is written REPLICAS times (the leader and its followers).
    brokers = max(REPLICAS, math.ceil(records * REPLICAS / BROKER_RECORDS_PER_S))
    return CapacityPlan(
        orders_per_day=orders_per_day,
        mean_orders_per_s=mean,
        peak_hour_orders_per_s=peak_hour,
        peak_orders_per_s=peak,
        workers_for_peak=workers_for_peak,
        workers=workers,
        partitions=partitions,
        peak_events_per_s=events,
        projector_share=events / PROJECTOR_EVENTS_PER_S,
        projectors=max(1, math.ceil(events / PROJECTOR_EVENTS_PER_S)),
        peak_rows_per_s=rows,
        clickhouse_servers=max(1, math.ceil(rows / CLICKHOUSE_ROWS_PER_S)),
        peak_records_per_s=records,
        brokers=brokers,
        replication=replication_for(brokers),
    )
