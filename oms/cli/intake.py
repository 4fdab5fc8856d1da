"""Orders in: `oms connect` (a channel's file), `oms simulate` (generated traffic), the installed
`oms connectors`, and the dead letters of what they rejected (`oms dlq`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from infra.settings import get_settings


@click.command()
@click.argument("channel")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--progress/--no-progress", default=True, help="progress bar on stderr")
def connect(channel: str, file: Path, progress: bool) -> None:
    """Publish a channel's orders from FILE (JSON lines, or CSV with a header row)."""
    from connectors.intake import count_payloads, import_file
    from connectors.registry import UnknownChannel, connector_for
    from infra.publisher import Publisher

    try:
        connector = connector_for(channel)
    except UnknownChannel as exc:
        raise click.BadParameter(str(exc), param_hint="CHANNEL") from exc
    settings = get_settings()
    publisher = Publisher(settings)
    if progress:
        bar: Any = click.progressbar(
            length=count_payloads(file),
            label=f"{channel} <- {file.name}",
            file=sys.stderr,
            show_pos=True,
        )
        with bar:
            report = import_file(
                file, connector=connector, publisher=publisher, on_line=lambda _: bar.update(1)
            )
    else:
        report = import_file(file, connector=connector, publisher=publisher)
    for error in report.errors:
        click.echo(f"{file}:{error.line}: {error.reason}", err=True)
    click.echo(
        f"{report.acknowledged} of {report.lines} lines acknowledged by Kafka "
        f"({settings.topics.intake}); {report.dead_lettered} sent to {settings.topics.dlq}"
    )
    if report.acknowledged + report.dead_lettered != report.lines:
        sys.exit(1)


@click.command()
@click.option(
    "--profile",
    "profile_name",
    type=click.Choice(["restaurant", "retail", "peak"]),
    default="restaurant",
    show_default=True,
)
@click.option("--rate", default=50.0, show_default=True, help="average orders per second")
@click.option("--duration", default=30.0, show_default=True, help="seconds; one day compressed")
@click.option("--seed", default=None, type=int, help="for a repeatable run")
def simulate(profile_name: str, rate: float, duration: float, seed: int | None) -> None:
    """Realistic channel traffic through the real connectors into the intake topic."""
    from connectors.simulator import simulate as run
    from infra.publisher import Publisher

    if rate <= 0 or duration <= 0:
        raise click.BadParameter("must be positive", param_hint="--rate/--duration")
    settings = get_settings()
    bar: Any = click.progressbar(
        length=int(duration), label=f"{profile_name} @ {rate:g}/s", file=sys.stderr
    )
    with bar:
        shown = 0

        def tick(report: Any) -> None:
            nonlocal shown
            elapsed = int(time.monotonic() - started)
            if elapsed > shown:
                bar.update(elapsed - shown)
                shown = elapsed

        started = time.monotonic()
        report = run(
            profile_name=profile_name,
            rate=rate,
            duration_s=duration,
            publisher=Publisher(settings),
            seed=seed,
            on_tick=tick,
        )
    click.echo(
        f"generated      {report.generated} in {report.elapsed_s:.1f} s "
        f"({report.generated / report.elapsed_s:.0f}/s average, peak {report.peak_rate:.0f}/s)"
    )
    for channel, count in sorted(report.by_channel.items()):
        click.echo(f"  {channel:<12} {count}")
    click.echo(f"duplicates     {report.duplicates} (re-sent by the channel)")
    click.echo(f"revisions      {report.revisions} (OrderModified)")
    click.echo(f"malformed      {report.malformed} -> {settings.topics.dlq}")
    click.echo(
        f"acknowledged   {report.acknowledged} on {settings.topics.intake}, "
        f"{report.dead_lettered} on {settings.topics.dlq}"
    )
    if report.acknowledged + report.dead_lettered != report.generated:
        raise click.ClickException("not every order was acknowledged by Kafka")


@click.group()
def connectors() -> None:
    """Channel connectors (found through the `orderstream.connectors` entry points)."""


@connectors.command("list")
def connectors_list() -> None:
    """Every installed connector, the package it comes from, and whether it loads."""
    from connectors.registry import registered

    rows = registered()
    click.echo(f"{'channel':<14} {'signed':<7} {'package':<32} target")
    for row in rows:
        signed = "yes" if row.connector is not None and row.connector.signed else "no"
        status = f"  BROKEN: {row.error}" if row.error else ""
        click.echo(f"{row.name:<14} {signed:<7} {row.distribution:<32} {row.target}{status}")
    if any(row.error for row in rows):
        sys.exit(1)


@click.group()
def dlq() -> None:
    """The dead-letter topic: everything rejected, with its original bytes and reason."""


@dlq.command("list")
@click.option("--source", default=None, help="only this connector or topic")
@click.option("--limit", default=50, show_default=True)
def dlq_list(source: str | None, limit: int) -> None:
    """The dead letters, oldest first."""
    from connectors.dead_letters import read_dead_letters

    shown = 0
    for letter in read_dead_letters(get_settings()):
        if source is not None and letter.source != source:
            continue
        if shown == limit:
            click.echo("... more (raise --limit)")
            break
        click.echo(
            f"{letter.dead_letter_id}  {letter.failed_at:%Y-%m-%d %H:%M:%S}  "
            f"{letter.source:<10} {letter.source_ref:<28} {letter.reason}"
        )
        shown += 1
    if shown == 0:
        click.echo("no dead letters")


@dlq.command("replay")
@click.option("--id", "ids", multiple=True, help="a dead letter id (repeatable)")
@click.option("--source", default=None, help="every dead letter of this connector")
def dlq_replay(ids: tuple[str, ...], source: str | None) -> None:
    """Send dead letters through their connector again (after a fix); prints what happened.
    A webhook's letter is verified again against the current secret; one refused as not
    authentic (a bad signature, unsigned, a replay) is never sent on. Exit 1 when any letter
    was still rejected or refused."""
    from connectors.dead_letters import replay

    if not ids and source is None:
        raise click.UsageError("name dead letters with --id, or a connector with --source")
    report = replay(get_settings(), ids=set(ids) or None, source=source)
    for letter_id in report.replayed:
        click.echo(f"replayed        {letter_id}")
    for letter_id, reason in report.still_rejected:
        click.echo(f"still rejected  {letter_id}: {reason}")
    for letter_id, why in report.skipped:
        click.echo(f"skipped         {letter_id}: {why}")
    for letter_id, reason in report.refused:
        click.echo(f"refused         {letter_id}: not authentic, never replayed ({reason})")
    click.echo(
        f"{len(report.replayed)} replayed, {len(report.still_rejected)} still rejected, "
        f"{len(report.skipped)} skipped, {len(report.refused)} refused as not authentic"
    )
    if report.still_rejected or report.refused:
        sys.exit(1)
