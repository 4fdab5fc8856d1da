"""`python -m tests.faults`: randomized fault runs (`make chaos`); each failure prints its seed
and the command that replays it."""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

import click

from tests.faults.harness import Scenario, run
from tests.faults.workload import Load


@click.command()
@click.option("--runs", default=1, show_default=True, help="runs, each with a random seed")
@click.option("--seed", type=int, default=None, help="replay this seed (one run)")
@click.option("--duration", default=120.0, show_default=True, help="seconds of load")
@click.option("--rate", default=40.0, show_default=True, help="orders per second")
@click.option(
    "--settle",
    default=120.0,
    show_default=True,
    help="seconds after the faults within which every order must be at rest",
)
@click.option("--workers", default=1, show_default=True, help="worker processes at the start")
@click.option(
    "--fault-gap",
    default=12.0,
    show_default=True,
    help="mean seconds between random faults (0: only the four required ones)",
)
@click.option(
    "--kafka-libs",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="the Kafka jars (default: the local stack's, fetched by `oms stack up`)",
)
@click.option("--keep", is_flag=True, help="keep the run's broker and ClickHouse data")
def main(
    runs: int,
    seed: int | None,
    duration: float,
    rate: float,
    settle: float,
    workers: int,
    fault_gap: float,
    kafka_libs: Path | None,
    keep: bool,
) -> None:
    seeds = [seed] if seed is not None else [random.randrange(10**9) for _ in range(runs)]
    failed: list[Scenario] = []
    for n, run_seed in enumerate(seeds, 1):
        scenario = Scenario(
            seed=run_seed,
            load=Load(rate=rate, duration_s=duration),
            settle_s=settle,
            workers=workers,
            mean_gap_s=fault_gap or None,
        )
        home = Path(tempfile.mkdtemp(prefix=f"oms-fault-{run_seed}-"))
        click.echo(f"== run {n} of {len(seeds)}: seed {run_seed} (home {home})")
        outcome = run(scenario, home=home, kafka_libs=kafka_libs, keep=keep, say=click.echo)
        click.echo(outcome.report())
        if not outcome.result.ok:
            failed.append(scenario)
            click.echo(f"FAILED: seed {run_seed}")
    for scenario in failed:
        click.echo(f"failed seed {scenario.seed}: replay with {scenario.command()}")
    click.echo(f"{len(seeds) - len(failed)} of {len(seeds)} runs kept every property")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
