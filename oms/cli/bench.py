"""`oms bench NAME`: run a benchmark, then one epilogue for all of them: its figures (each
against its target and the limit it is compared to), the machine, and where the JSON went."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from infra.settings import get_settings

Figures = dict[str, Any]


def epilogue(report: list[str], *, machine: dict[str, Any], written_to: Path) -> list[str]:
    """What a bench prints once it has run: the lines of its report, then the machine the
    figures came from and the file they were written to."""
    from bench.machine import CLUTTERED_BROKER

    lines = [
        *report,
        f"machine: {machine['cpu']}, {machine['cores']} cores, python {machine['python']}, "
        f"load {machine.get('load_1min', '?')} after the run",
    ]
    partitions = machine.get("broker_partitions")
    if partitions is not None:
        lines.append(f"broker: {partitions:,} partitions")
        if partitions > CLUTTERED_BROKER:
            lines.append(
                "  (a broker this cluttered is slower: delete leftover topics before comparing)"
            )
    return [*lines, f"written to {written_to}"]


def _finish(name: str, figures: Figures, report: Callable[[Figures], list[str]]) -> None:
    """Write `figures` to HOME/bench/NAME.json and print the epilogue."""
    from bench.machine import describe, write_result

    settings = get_settings()
    machine = describe(settings.kafka_bootstrap)
    written_to = write_result(settings.home, name, figures, machine)
    for line in epilogue(report(figures), machine=machine, written_to=written_to):
        click.echo(line)


@click.group()
def bench() -> None:
    """Benchmarks: print figures and write them to HOME/bench/NAME.json."""


@bench.command("codec")
@click.option("--seconds", default=3.0, show_default=True, help="time per measurement")
def bench_codec(seconds: float) -> None:
    """Avro encode+decode of a 5-line order event on one core (target >= 100,000/s)."""
    from bench import codec

    _finish("codec", codec.run(seconds=seconds), codec.report)


@bench.command("pipeline")
@click.option("--orders", "order_count", default=20_000, show_default=True)
@click.option("--rate", default=500.0, show_default=True, help="orders per second, for latency")
@click.option("--seconds", default=10.0, show_default=True, help="duration of the paced run")
@click.option(
    "--profile",
    is_flag=True,
    help="Run the worker under cProfile and show where its main thread spends its time (the "
    "profiler costs about half the throughput, so the figures are not the worker's).",
)
def bench_pipeline(order_count: int, rate: float, seconds: float, profile: bool) -> None:
    """Intake -> routed orders/s (vs a pass-through Faust agent), p50/p99 at a rate; with
    --profile, where the worker's time goes."""
    from bench import pipeline

    figures = pipeline.run(
        get_settings(), orders_count=order_count, rate=rate, seconds=seconds, profile=profile
    )
    _finish("pipeline", figures, pipeline.report)


@bench.command("projection")
@click.option("--events", default=1_000_000, show_default=True, help="events to project")
@click.option("--rate", default=500.0, show_default=True, help="orders/s for freshness")
@click.option("--seconds", default=10.0, show_default=True, help="freshness run length")
def bench_projection(events: int, rate: float, seconds: float) -> None:
    """Projector events/s (vs a bulk INSERT), rebuild time, freshness p99 at a rate."""
    from bench import projection

    figures = projection.run(get_settings(), events=events, rate=rate, seconds=seconds)
    _finish("projection", figures, projection.report)


@bench.command("rebuild")
@click.option("--events", default=1_000_000, show_default=True)
def bench_rebuild(events: int) -> None:
    """`oms project --rebuild` over EVENTS events (replay into staging, swap in)."""
    from bench import projection

    figures = projection.rebuild_time(get_settings(), events=events)
    _finish("rebuild", figures, projection.rebuild_report)


@bench.command("intake")
@click.option("--orders", "order_count", default=100_000, show_default=True)
@click.option("--rate", default=500.0, show_default=True, help="webhook requests per second")
@click.option("--seconds", default=10.0, show_default=True, help="webhook load duration")
def bench_intake(order_count: int, rate: float, seconds: float) -> None:
    """File import orders/s (vs kafka-producer-perf-test) and webhook p50/p99 at a rate."""
    from bench import intake

    figures = intake.run(get_settings(), orders=order_count, rate=rate, seconds=seconds)
    _finish("intake", figures, intake.report)


@bench.command("recovery")
@click.option("--orders", "order_count", default=1_000_000, show_default=True)
@click.option("--tail", default=10_000, show_default=True, help="orders after the snapshots")
@click.option(
    "--in-flight",
    default=0.05,
    show_default=True,
    help="share of the orders still waiting at the restart (a day's 1,000,000 at 3x the "
    "average rate for an hour in flight: ~0.05); 1: none ever finished",
)
def bench_recovery(order_count: int, tail: int, in_flight: float) -> None:
    """Restart time after ORDERS orders: agent states from the whole log, and from snapshots
    and their tail (target <= 10 s); the shared views' read beside it."""
    from bench import recovery

    figures = recovery.run(get_settings(), orders=order_count, tail=tail, in_flight=in_flight)
    _finish("recovery", figures, recovery.report)


@bench.command("day")
@click.option("--orders", "order_count", default=1_000_000, show_default=True)
@click.option(
    "--processes", default=1, show_default=True, help="worker processes (`oms worker --processes`)"
)
@click.option(
    "--rate",
    type=float,
    default=None,
    help="orders/s the day averages, paced as `oms simulate` paces it (default: flat out)",
)
@click.option("--restaurant-share", default=0.5, show_default=True, help="the rest is retail")
@click.option("--seed", default=7, show_default=True)
@click.option(
    "--timeout",
    type=float,
    default=None,
    help="seconds to wait, once every payload is in, for the last order to settle (default: "
    "ORDERS/100, at least 1800); past it the figures are of the orders settled by then",
)
def bench_day(
    order_count: int,
    processes: int,
    rate: float | None,
    restaurant_share: float,
    seed: int,
    timeout: float | None,
) -> None:
    """The seed's peak day: ORDERS restaurant and retail orders from the channels' payloads
    through the connectors, the worker and the projector into ClickHouse (target 1,000,000
    in <= 10 min on 2 cores): wall time, peak RSS and CPU per process, lag, freshness."""
    from bench import day

    figures = day.run(
        get_settings(),
        orders_count=order_count,
        processes=processes,
        rate=rate,
        restaurant_share=restaurant_share,
        seed=seed,
        timeout_s=timeout,
    )
    _finish("day" if processes == 1 else f"day-{processes}-processes", figures, day.report)


@bench.command("memory")
@click.option("--orders", "order_count", default=1_000_000, show_default=True)
@click.option(
    "--in-memory", default=50_000, show_default=True, help="the order agent's bound (orders)"
)
@click.option("--sample-every", default=50_000, show_default=True, help="orders between samples")
@click.option("--unbounded", is_flag=True, help="no bound and no pruning, for comparison")
def bench_memory(order_count: int, in_memory: int, sample_every: int, unbounded: bool) -> None:
    """The worker's resident memory over ORDERS orders of a simulated day (flat when bounded)."""
    from bench import memory

    figures = memory.run(
        orders_count=order_count,
        in_memory=in_memory,
        sample_every=sample_every,
        bounded=not unbounded,
    )
    _finish("memory" if not unbounded else "memory-unbounded", figures, memory.report)


@bench.command("eta")
@click.option("--orders-per-day", default=700, show_default=True, help="about 20,000 a month")
@click.option("--seed", default=7, show_default=True)
@click.option("--backend", type=click.Choice(["chdb", "server"]), default="chdb", show_default=True)
def bench_eta(orders_per_day: int, seed: int, backend: str) -> None:
    """Learned prep-time ETAs vs the fixed defaults after one warm-up day (target p90 <= 5 min)."""
    from bench import eta

    figures = eta.run(get_settings(), orders_per_day=orders_per_day, seed=seed, backend=backend)
    _finish("eta", figures, eta.report)


@bench.command("wave")
@click.option("--orders", default=1000, show_default=True, help="orders ready to ship")
def bench_wave(orders: int) -> None:
    """A shipping wave: rate shopping, labels bought from local carrier fakes, the PDF of
    slips and labels, the commands acknowledged (target <= 10 s for 1,000 orders)."""
    from bench import wave

    _finish("wave", wave.run(orders=orders), wave.report)


@bench.command("notify")
@click.option("--orders", default=5000, show_default=True, help="orders, one e-mail each")
@click.option("--events", default=5000, show_default=True, help="webhook backlog")
@click.option("--rate", default=200.0, show_default=True, help="events/s for the latency")
@click.option("--seconds", default=10.0, show_default=True, help="of the latency run")
@click.option(
    "--relay",
    type=click.Choice(["postfix", "aiosmtpd"]),
    default="postfix",
    show_default=True,
    help="the SMTP server: Postfix's smtp-sink (C; fetched with apt-get download, unpacked "
    "under .oms/tools, falls back to aiosmtpd) or aiosmtpd (Python, on the same cores)",
)
def bench_notify(orders: int, events: int, rate: float, seconds: float, relay: str) -> None:
    """Customer e-mails to a real local SMTP server and signed webhooks to a local receiver,
    per second (target >= 1,000/s), and the webhooks' latency from the log."""
    from bench import notify

    figures = notify.run(orders=orders, events=events, rate=rate, seconds=seconds, relay=relay)
    _finish("notify", figures, notify.report)
