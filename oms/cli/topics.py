"""`oms topics`: what the topics and the processes around them need for a target."""

from __future__ import annotations

import click


@click.group()
def topics() -> None:
    """Kafka topics: sizing them (partitions, brokers) and the processes that read them."""


@topics.command("plan")
@click.option(
    "--orders-per-day",
    type=click.IntRange(min=1),
    required=True,
    help="the target: orders a day on the busiest day to plan for",
)
@click.option(
    "--peak-hour-factor",
    type=click.FloatRange(min=1),
    default=None,
    help="the busiest hour's rate over the day's mean (assumed 3)",
)
@click.option(
    "--peak-second-factor",
    type=click.FloatRange(min=1),
    default=None,
    help="the busiest second's rate over its hour's mean (assumed 2)",
)
def plan(
    orders_per_day: int, peak_hour_factor: float | None, peak_second_factor: float | None
) -> None:
    """Partitions, worker processes, brokers and ClickHouse for ORDERS-PER-DAY, from the
    figures measured on the 2-core development machine (docs/benchmarks.md), scaled linearly
    to the peak second. Constants and assumptions: infra/capacity.py."""
    from infra import capacity

    hour = peak_hour_factor or capacity.PEAK_HOUR_FACTOR
    second = peak_second_factor or capacity.PEAK_SECOND_FACTOR
    made = capacity.plan_capacity(
        orders_per_day=orders_per_day, peak_hour_factor=hour, peak_second_factor=second
    )
    click.echo(
        f"target: {made.orders_per_day:,} orders a day = {made.mean_orders_per_s:,.1f}/s on "
        f"average; peak hour x{hour:g} = {made.peak_hour_orders_per_s:,.1f}/s; "
        f"peak second x{second:g} = {made.peak_orders_per_s:,.1f} orders/s (sized for this)"
    )
    click.echo(
        f"worker processes: {made.workers} ({made.workers_for_peak} at "
        f"{capacity.WORKER_ORDERS_PER_S:,} orders/s each, measured intake -> routed, about one "
        f"core each; +{capacity.SPARE_WORKERS} spare to take a failed one's partitions)"
    )
    click.echo(
        f"partitions: {made.partitions} per topic (OMS_KAFKA_PARTITIONS; at least twice the "
        f"workers, in steps of {capacity.PARTITION_STEP}; fixed once a topic holds orders)"
    )
    click.echo(
        f"brokers: {made.brokers} (replication factor {made.replication.factor}, "
        f"min.insync.replicas {made.replication.min_insync}: one broker may be down; "
        f"{made.peak_records_per_s:,.0f} records/s at the peak before replication, "
        f"{capacity.BROKER_RECORDS_PER_S:,}/s measured for one broker)"
    )
    click.echo(
        f"projector processes: {made.projectors} ({made.peak_events_per_s:,.0f} events/s at "
        f"the peak = {made.projector_share:.1%} of one, {capacity.PROJECTOR_EVENTS_PER_S:,} "
        "events/s measured)"
    )
    click.echo(
        f"ClickHouse: {made.clickhouse_servers} server{'s' if made.clickhouse_servers > 1 else ''}"
        f" for {made.peak_rows_per_s:,.0f} rows/s at the peak "
        f"({capacity.CLICKHOUSE_ROWS_PER_S:,} rows/s measured for one bulk INSERT; "
        "replicas for availability come on top)"
    )
