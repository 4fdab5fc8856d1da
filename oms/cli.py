"""The `oms` command line: one verb per job (DESIGN.md §5)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from oms.settings import get_settings


@click.group()
def main() -> None:
    """OrderStream: an event-sourced order management system on Kafka, Faust and ClickHouse."""


@main.group()
def stack() -> None:
    """The local stack: Apache Kafka (KRaft) and ClickHouse (server, or embedded chDB)."""


@stack.command("up")
def stack_up() -> None:
    """Start Kafka and ClickHouse (idempotent) and wait until both answer."""
    from oms.stack import Stack, StackError

    try:
        for name, outcome in Stack(get_settings()).up():
            click.echo(f"{name}: {outcome}")
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc


@stack.command("down")
def stack_down() -> None:
    """Stop what `oms stack up` started (and nothing else)."""
    from oms.stack import Stack

    for name, stopped in Stack(get_settings()).down():
        click.echo(f"{name}: {'stopped' if stopped else 'was not running'}")


@stack.command("status")
def stack_status() -> None:
    """Each service, its address and whether it answers."""
    from oms.stack import Stack

    statuses = Stack(get_settings()).status()
    for s in statuses:
        state = "answering" if s.answering else ("started, not answering" if s.running else "down")
        click.echo(
            f"{s.name:<11} {s.address:<40} {state}{'  (' + s.detail + ')' if s.detail else ''}"
        )
    if not all(s.answering for s in statuses):
        sys.exit(1)


@main.command()
@click.argument("channel")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--progress/--no-progress", default=True, help="progress bar on stderr")
def connect(channel: str, file: Path, progress: bool) -> None:
    """Publish a channel's orders from FILE (JSON lines, or CSV with a header row)."""
    from connectors.intake import count_payloads, import_file
    from connectors.registry import UnknownChannel, connector_for
    from oms.publisher import Publisher

    try:
        connector = connector_for(channel)
    except UnknownChannel as exc:
        raise click.BadParameter(str(exc), param_hint="CHANNEL") from exc
    settings = get_settings()
    publisher = Publisher(settings)
    if progress:
        bar: Any = click.progressbar(
            length=count_payloads(file), label=f"{channel} <- {file.name}", file=sys.stderr,
            show_pos=True,
        )  # fmt: skip
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


@main.command()
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
    from oms.publisher import Publisher

    if rate <= 0 or duration <= 0:
        raise click.BadParameter("must be positive", param_hint="--rate/--duration")
    settings = get_settings()
    bar: Any = click.progressbar(length=int(duration), label=f"{profile_name} @ {rate:g}/s",
                                 file=sys.stderr)  # fmt: skip
    with bar:
        shown = 0

        def tick(report: Any) -> None:
            nonlocal shown
            elapsed = int(time.monotonic() - started)
            if elapsed > shown:
                bar.update(elapsed - shown)
                shown = elapsed

        started = time.monotonic()
        report = run(profile_name=profile_name, rate=rate, duration_s=duration,
                     publisher=Publisher(settings), seed=seed, on_tick=tick)  # fmt: skip
    click.echo(
        f"generated      {report.generated} in {report.elapsed_s:.1f} s "
        f"({report.generated / report.elapsed_s:.0f}/s average, peak {report.peak_rate:.0f}/s)"
    )
    for channel, count in sorted(report.by_channel.items()):
        click.echo(f"  {channel:<12} {count}")
    click.echo(f"duplicates     {report.duplicates} (re-sent by the channel)")
    click.echo(f"revisions      {report.revisions} (OrderModified)")
    click.echo(f"malformed      {report.malformed} -> {settings.topics.dlq}")
    click.echo(f"acknowledged   {report.acknowledged} on {settings.topics.intake}, "
               f"{report.dead_lettered} on {settings.topics.dlq}")  # fmt: skip
    if report.acknowledged + report.dead_lettered != report.generated:
        raise click.ClickException("not every order was acknowledged by Kafka")


@main.group()
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
        click.echo(f"{letter.dead_letter_id}  {letter.failed_at:%Y-%m-%d %H:%M:%S}  "
                   f"{letter.source:<10} {letter.source_ref:<28} {letter.reason}")  # fmt: skip
        shown += 1
    if shown == 0:
        click.echo("no dead letters")


@dlq.command("replay")
@click.option("--id", "ids", multiple=True, help="a dead letter id (repeatable)")
@click.option("--source", default=None, help="every dead letter of this connector")
def dlq_replay(ids: tuple[str, ...], source: str | None) -> None:
    """Send dead letters through their connector again (after a fix); prints what happened."""
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
    click.echo(f"{len(report.replayed)} replayed, {len(report.still_rejected)} still rejected, "
               f"{len(report.skipped)} skipped")  # fmt: skip
    if report.still_rejected:
        sys.exit(1)


@main.group()
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


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes in one group; Kafka spreads the partitions over them.",
)
@click.pass_context
def worker(ctx: click.Context, processes: int) -> None:
    """Run the Faust stream processors (extra arguments go to the Faust worker)."""
    from streams.worker.process import run_worker, run_workers

    if processes > 1:
        run_workers(processes, ctx.args or None)
    else:
        run_worker(ctx.args or None)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True)
def api(host: str, port: int) -> None:
    """Serve the HTTP API: webhooks, operators' commands, the read API and the dashboard."""
    from oms.api import serve

    click.echo(f"OrderStream API on http://{host}:{port}")
    serve(get_settings(), host=host, port=port)


@main.command()
@click.option(
    "--batch-size",
    default=100_000,
    show_default=True,
    help="most events a batch holds (a backlog is written in batches this big)",
)
@click.option(
    "--batch-seconds",
    default=0.5,
    show_default=True,
    help="longest wait for a batch to fill: the freshness of the read models",
)
@click.option(
    "--migrate",
    "migrate_only",
    is_flag=True,
    help="Apply the pending DDL migrations, say which, and exit.",
)
@click.option(
    "--rebuild",
    is_flag=True,
    help="Replay both topics into fresh tables, swap them in atomically, and exit.",
)
@click.option(
    "--until-caught-up",
    is_flag=True,
    help="Exit once every message on the topics is projected.",
)
@click.option(
    "--retry-for",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Exit 75 once Kafka or ClickHouse has been unavailable this long (default: wait for "
    "them however long it takes).",
)
def project(batch_size: int, batch_seconds: float, migrate_only: bool, rebuild: bool,
            until_caught_up: bool, retry_for: float | None) -> None:  # fmt: skip
    """Project the order log and the stock ledger into ClickHouse, resuming where ClickHouse
    left off (docs/read-models.md). Exit codes: docs/operations.md."""
    from oms.exit_codes import run_until_stopped
    from projections.reconnect import exit_code

    def main() -> None:
        _project(batch_size, batch_seconds, migrate_only, rebuild, until_caught_up, retry_for)

    run_until_stopped("oms project", main, exit_code=exit_code)


def _project(batch_size: int, batch_seconds: float, migrate_only: bool, rebuild: bool,
             until_caught_up: bool, retry_for: float | None) -> None:  # fmt: skip
    from projections.projector import BatchStats, Projector
    from projections.reconnect import Backoff
    from projections.store import connect

    settings = get_settings()
    store = connect(settings.resolved_clickhouse_url)
    if migrate_only:
        from projections.schema import migrate

        report = migrate(store)
        for label in report.applied:
            click.echo(f"applied  {label}")
        for label in report.changed_since_applied:
            click.echo(f"warning  {label} was edited after it was applied", err=True)
        click.echo(
            f"{store.database}: {len(report.applied)} migration(s) applied, "
            f"{len(report.already)} already in place"
        )
        return
    if rebuild:
        from projections.rebuild import rebuild as run_rebuild

        done = 0

        def progress(stats: BatchStats) -> None:
            nonlocal done
            done += stats.events + stats.stock_events + stats.dead_lettered
            click.echo(f"\rreplayed {done:,} messages", nl=False, err=True)

        result = run_rebuild(settings=settings, store=store, batch_size=max(batch_size, 200_000),
                             on_batch=progress)  # fmt: skip
        click.echo("", err=True)
        click.echo(
            f"rebuilt {store.database} from {result.events:,} messages in "
            f"{result.elapsed_s:.1f} s; swapped in with {result.swap}"
        )
        return
    projector = Projector(settings=settings, store=store, batch_size=batch_size,
                          batch_seconds=batch_seconds,
                          retry=Backoff(give_up_after_s=retry_for))  # fmt: skip
    projector.run(until=(lambda _: projector.lag() == 0) if until_caught_up else None)


class _ReportGroup(click.Group):
    """One subcommand per report in projections.reports.REPORTS, built when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from projections.reports import REPORTS

        return list(REPORTS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from projections.reports import REPORTS

        return _report_command(cmd_name) if cmd_name in REPORTS else None


@main.group("report", cls=_ReportGroup, invoke_without_command=True)
@click.option("--list", "list_reports", is_flag=True, help="List the reports.")
@click.pass_context
def report(ctx: click.Context, list_reports: bool) -> None:
    """Analytics from the ClickHouse read models: `oms report NAME [--PARAM VALUE ...]`."""
    if ctx.invoked_subcommand is None:
        from projections.reports import REPORTS

        for name, entry in REPORTS.items():
            click.echo(f"{name:<22} {entry.title}: {entry.description}")


def _report_command(name: str) -> click.Command:
    """`oms report NAME`, with one option per parameter of the report's SQL file."""
    from projections.reports import REPORTS

    entry = REPORTS[name]

    def run(csv: bool, **params: Any) -> None:
        from projections.reports import ReportError, run_report
        from projections.store import StoreError, connect

        store = connect(get_settings().resolved_clickhouse_url)
        given = {key: value for key, value in params.items() if value is not None}
        try:
            result = run_report(store, name, **given)
        except ReportError as exc:
            raise click.UsageError(str(exc)) from exc
        except StoreError as exc:
            hint = " (run `oms project --migrate`)" if "exist" in str(exc) else ""
            reason = " ".join(str(exc).split(" -- in:", 1)[0].split())
            raise click.ClickException(f"{reason}{hint}") from exc
        cells = [
            ["" if v is None else f"{v:g}" if isinstance(v, float) else str(v) for v in row]
            for row in result.rows
        ]
        if csv:
            import csv as csv_format

            writer = csv_format.writer(sys.stdout)
            writer.writerow(result.columns)
            writer.writerows(cells)
            return
        widths = [max([len(c), *(len(row[i]) for row in cells)])
                  for i, c in enumerate(result.columns)]  # fmt: skip
        click.echo("  ".join(c.ljust(w) for c, w in zip(result.columns, widths, strict=True)))
        click.echo("  ".join("-" * w for w in widths))
        for row, raw in zip(cells, result.rows, strict=True):
            click.echo("  ".join(
                cell.rjust(w) if isinstance(v, int | float) else cell.ljust(w)
                for cell, w, v in zip(row, widths, raw, strict=True)
            ).rstrip())  # fmt: skip
        click.echo(f"({len(cells)} rows)")

    options: list[click.Parameter] = [
        click.Option([f"--{param.replace('_', '-')}", param], default=None,
                     help=f"{ch_type}" + ("" if param in entry.defaults else " (required)"))
        for param, ch_type in entry.parameters.items()
    ]  # fmt: skip
    options.append(click.Option(["--csv"], is_flag=True, help="CSV instead of a table."))
    return click.Command(
        name, callback=run, params=options, short_help=entry.title,
        help=f"{entry.title}: {entry.description}\n\nSQL: projections/sql/{entry.sql_file}",
    )  # fmt: skip


@main.group()
def schemas() -> None:
    """The Avro schemas: the published event contract."""


@schemas.command("check")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None)
def schemas_check(directory: Path | None) -> None:
    """BACKWARD_TRANSITIVE compatibility of every schema with all its earlier versions."""
    from events.schema_catalog import SCHEMA_DIR, check_schemas

    reports = check_schemas(directory or SCHEMA_DIR)
    click.echo(f"{'schema':<28} {'versions':>8}  status")
    for report in reports:
        click.echo(f"{report.name:<28} {report.versions:>8}  {report.status}")
        for problem in report.problems:
            click.echo(f"    {problem}")
    failed = [r for r in reports if r.problems]
    if failed:
        click.echo(f"{len(failed)} of {len(reports)} schemas fail the check", err=True)
        sys.exit(1)


@schemas.command("write")
def schemas_write() -> None:
    """Regenerate schemas/*.avsc from the models and register changed ones as new versions."""
    from events.schema_catalog import write_schemas

    added = write_schemas()
    for version in added:
        click.echo(f"{version.name} v{version.version} registered as schema id {version.schema_id}")
    if not added:
        click.echo("no schema changed")


@main.group()
def bench() -> None:
    """Benchmarks: print figures and write them to HOME/bench/NAME.json."""


@bench.command("codec")
@click.option("--seconds", default=3.0, show_default=True, help="time per measurement")
def bench_codec(seconds: float) -> None:
    """Avro encode+decode of a 5-line order event on one core (target >= 100,000/s)."""
    from bench import codec
    from bench.machine import describe, write_result

    figures = codec.run(seconds=seconds)
    for line in codec.report(figures):
        click.echo(line)
    machine = describe()
    click.echo(f"machine: {machine['cpu']}, {machine['cores']} cores, python {machine['python']}")
    click.echo(f"written to {write_result(get_settings().home, 'codec', figures)}")


@bench.command("pipeline")
@click.option("--orders", "order_count", default=20_000, show_default=True)
@click.option("--rate", default=500.0, show_default=True, help="orders per second, for latency")
@click.option("--seconds", default=10.0, show_default=True, help="duration of the paced run")
def bench_pipeline(order_count: int, rate: float, seconds: float) -> None:
    """Intake -> routed orders/s (vs a pass-through Faust agent), p50/p99 at a rate, profile."""
    from bench import pipeline
    from bench.machine import describe, write_result

    settings = get_settings()
    figures = pipeline.run(settings, orders_count=order_count, rate=rate, seconds=seconds)
    for line in pipeline.report(figures):
        click.echo(line)
    machine = describe()
    click.echo(f"machine: {machine['cpu']}, {machine['cores']} cores, python {machine['python']}")
    click.echo(f"written to {write_result(settings.home, 'pipeline', figures)}")


@bench.command("projection")
@click.option("--events", default=1_000_000, show_default=True, help="events to project")
@click.option("--rate", default=500.0, show_default=True, help="orders/s for freshness")
@click.option("--seconds", default=10.0, show_default=True, help="freshness run length")
def bench_projection(events: int, rate: float, seconds: float) -> None:
    """Projector events/s (vs a bulk INSERT), rebuild time, freshness p99 at a rate."""
    from bench import projection
    from bench.machine import describe, write_result

    settings = get_settings()
    figures = projection.run(settings, events=events, rate=rate, seconds=seconds)
    for line in projection.report(figures):
        click.echo(line)
    machine = describe()
    click.echo(f"machine: {machine['cpu']}, {machine['cores']} cores, python {machine['python']}")
    click.echo(f"written to {write_result(settings.home, 'projection', figures)}")


@bench.command("rebuild")
@click.option("--events", default=1_000_000, show_default=True)
def bench_rebuild(events: int) -> None:
    """`oms project --rebuild` over EVENTS events (replay into staging, swap in)."""
    from bench import projection
    from bench.machine import describe, write_result

    settings = get_settings()
    figures = projection.rebuild_time(settings, events=events)
    for line in projection.rebuild_report(figures):
        click.echo(line)
    machine = describe()
    click.echo(f"machine: {machine['cpu']}, {machine['cores']} cores, python {machine['python']}")
    click.echo(f"written to {write_result(settings.home, 'rebuild', figures)}")


@bench.command("intake")
@click.option("--orders", "order_count", default=100_000, show_default=True)
@click.option("--rate", default=500.0, show_default=True, help="webhook requests per second")
@click.option("--seconds", default=10.0, show_default=True, help="webhook load duration")
def bench_intake(order_count: int, rate: float, seconds: float) -> None:
    """File import orders/s (vs kafka-producer-perf-test) and webhook p50/p99 at a rate."""
    from bench import intake
    from bench.machine import describe, write_result

    settings = get_settings()
    figures = intake.run(settings, orders=order_count, rate=rate, seconds=seconds)
    for line in intake.report(figures):
        click.echo(line)
    machine = describe()
    click.echo(f"machine: {machine['cpu']}, {machine['cores']} cores, python {machine['python']}")
    click.echo(f"written to {write_result(settings.home, 'intake', figures)}")


@main.group()
def orders() -> None:
    """Read orders from ClickHouse."""


@orders.command("show")
@click.argument("order_id")
def orders_show(order_id: str) -> None:
    """An order's current state and its event history (ORDER_ID or the channel's external id)."""
    from projections.queries import order_history, order_state
    from projections.store import connect

    store = connect(get_settings().resolved_clickhouse_url)
    state = order_state(store, order_id)
    if state is None:
        raise click.ClickException(f"no order {order_id!r} in ClickHouse")
    for key, value in state.items():
        if not key.startswith("_"):
            click.echo(f"{key:<18} {value}")
    click.echo("history:")
    for event in order_history(store, state["order_id"]):
        click.echo(
            f"  {event['sequence']:>3} {event['event_type']:<16} {event['occurred_at']} "
            f"{event['actor']}"
        )


@orders.command("list")
@click.option("--status", default=None)
@click.option("--channel", default=None)
@click.option("--limit", default=20, show_default=True)
def orders_list(status: str | None, channel: str | None, limit: int) -> None:
    """The most recent orders."""
    from projections.queries import list_orders
    from projections.store import connect

    store = connect(get_settings().resolved_clickhouse_url)
    rows = list_orders(store, status=status, channel=channel, limit=limit)
    click.echo(
        f"{'order_id':<36}  {'channel':<8} {'external_id':<16} {'status':<9} "
        f"{'total':>10} placed_at"
    )
    for row in rows:
        click.echo(
            f"{row['order_id']:<36}  {row['channel']:<8} {row['external_id']:<16} "
            f"{row['status']:<9} {row['total'] / 100:>10.2f} {row['placed_at']}"
        )


def _send_command(build: Any, **kwargs: Any) -> None:
    """Build an operator command (errors name the field) and send it; say where it went."""
    from oms.operations import CommandRejected, send, topic_for

    settings = get_settings()
    try:
        event = build(**kwargs)
    except CommandRejected as exc:
        raise click.BadParameter(str(exc), param_hint=exc.field) from exc
    send(settings, event)
    click.echo(f"{event.event_type} {event.event_id} -> {topic_for(settings, event)}")


@main.group()
def review() -> None:
    """The manual review queue: orders held by fraud screening."""


def _print_rows(rows: list[dict[str, Any]], columns: list[str], empty: str) -> None:
    if not rows:
        click.echo(empty)
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    click.echo("  ".join(f"{c:<{widths[c]}}" for c in columns))
    for row in rows:
        click.echo("  ".join(f"{row.get(c, '')!s:<{widths[c]}}" for c in columns))


def _read_report(name: str, **params: Any) -> list[dict[str, Any]]:
    from projections.reports import run_report
    from projections.store import connect

    return run_report(connect(get_settings().resolved_clickhouse_url), name, **params).as_dicts()


@review.command("list")
@click.option("--limit", default=50, show_default=True)
def review_list(limit: int) -> None:
    """Held orders, longest waiting first (from ClickHouse: run `oms project`)."""
    rows = _read_report("held_orders", limit=limit)
    _print_rows(rows, list(rows[0]) if rows else [], "no orders waiting for review")


@review.command("approve")
@click.argument("order_id")
@click.option("--reviewer", required=True, help="who decides (recorded as the actor)")
@click.option("--note", default=None)
def review_approve(order_id: str, reviewer: str, note: str | None) -> None:
    """Release a held order into routing."""
    from oms.operations import review as build

    _send_command(build, order_id=order_id, approve=True, reviewer=reviewer, reason=note)


@review.command("reject")
@click.argument("order_id")
@click.option("--reviewer", required=True, help="who decides (recorded as the actor)")
@click.option("--reason", required=True)
def review_reject(order_id: str, reviewer: str, reason: str) -> None:
    """Cancel a held order."""
    from oms.operations import review as build

    _send_command(build, order_id=order_id, approve=False, reviewer=reviewer, reason=reason)


@orders.command("cancel")
@click.argument("order_id")
@click.option("--by", "actor", required=True, help="who cancels (recorded as the actor)")
@click.option("--code", "reason_code", default="MERCHANT_CANCELLED", show_default=True)
@click.option("--reason", required=True)
def orders_cancel(order_id: str, actor: str, reason_code: str, reason: str) -> None:
    """Cancel an order that has not left the store; its reservations are released."""
    from oms.operations import cancel

    _send_command(cancel, order_id=order_id, by=actor, reason_code=reason_code, reason=reason)


@main.group()
def stock() -> None:
    """Stock per sku@location, managed through ledger events."""


@stock.command("show")
@click.argument("sku", required=False)
@click.option("--location", default=None)
@click.option("--limit", default=100, show_default=True)
def stock_show(sku: str | None, location: str | None, limit: int) -> None:
    """On hand, reserved, safety stock and available per sku@location (from ClickHouse)."""
    rows = [r for r in _read_report("stock_levels", limit=10_000)
            if (sku is None or r.get("sku") == sku)
            and (location is None or r.get("location") == location)][:limit]  # fmt: skip
    _print_rows(rows, list(rows[0]) if rows else [], "no stock recorded")


@stock.command("set")
@click.argument("sku")
@click.argument("location")
@click.argument("counted", type=int)
@click.option("--by", "actor", default="operator", show_default=True)
def stock_set(sku: str, location: str, counted: int, actor: str) -> None:
    """A stock count: on hand becomes COUNTED."""
    from oms.operations import stock_set as build

    _send_command(build, sku=sku, location=location, counted=counted, actor=actor)


# A negative DELTA ("-3") is an argument, not an unknown option. (A mistyped option then shows
# as an extra argument, which click still refuses.)
@stock.command("adjust", context_settings={"ignore_unknown_options": True})
@click.argument("sku")
@click.argument("location")
@click.argument("delta", type=int)
@click.option("--reason", required=True, help="DAMAGED, LOST, FOUND, CORRECTION, ...")
@click.option("--note", default=None)
@click.option("--by", "actor", default="operator", show_default=True)
def stock_adjust(sku: str, location: str, delta: int, reason: str, note: str | None,
                 actor: str) -> None:  # fmt: skip
    """Add (or with a negative DELTA, e.g. -3, remove) units, with a reason."""
    from oms.operations import stock_adjust as build

    _send_command(build, sku=sku, location=location, delta=delta, reason=reason, note=note,
                  actor=actor)  # fmt: skip


@stock.command("receive")
@click.argument("sku")
@click.argument("location")
@click.argument("quantity", type=int)
@click.option("--reference", default=None, help="purchase order or transfer id")
@click.option("--by", "actor", default="operator", show_default=True)
def stock_receive(sku: str, location: str, quantity: int, reference: str | None,
                  actor: str) -> None:  # fmt: skip
    """Goods in: QUANTITY more on hand."""
    from oms.operations import stock_receive as build

    _send_command(build, sku=sku, location=location, quantity=quantity, reference=reference,
                  actor=actor)  # fmt: skip


@stock.command("safety")
@click.argument("sku")
@click.argument("location")
@click.argument("quantity", type=int)
@click.option("--by", "actor", default="operator", show_default=True)
def stock_safety(sku: str, location: str, quantity: int, actor: str) -> None:
    """Units kept back from promising (ATP = on hand - reserved - safety stock)."""
    from oms.operations import safety_stock as build

    _send_command(build, sku=sku, location=location, quantity=quantity, actor=actor)


@main.command()
@click.argument("location_id")
@click.option("--limit", default=50, show_default=True)
def queue(location_id: str, limit: int) -> None:
    """A location's fulfilment queue: open prioritised orders, highest priority first."""
    from projections.queries import fulfilment_queue
    from projections.store import connect

    rows = fulfilment_queue(connect(get_settings().resolved_clickhouse_url), location_id,
                            limit=limit)  # fmt: skip
    columns = ["order_id", "channel", "mode", "status", "priority_score", "promised_at",
               "item_count", "total"]  # fmt: skip
    _print_rows(rows, columns, f"no open orders at {location_id}")


@main.group()
def catalogue() -> None:
    """Products and locations: the catalogue file, kept current by events."""


@catalogue.command("publish")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--by", "actor", default="operator", show_default=True)
def catalogue_publish(file: Path, actor: str) -> None:
    """Send every product and location in FILE as an update; running workers take them."""
    from oms.operations import CommandRejected, catalogue_updates, topic_for
    from oms.publisher import Publisher

    settings = get_settings()
    try:
        updates = catalogue_updates(file, actor=actor)
    except CommandRejected as exc:
        raise click.BadParameter(str(exc), param_hint="FILE") from exc
    publisher = Publisher(settings)
    for event in updates:
        publisher.publish(topic_for(settings, event), event)
    publisher.flush(60)
    click.echo(f"{len(updates)} updates -> {settings.topics.catalogue}")


@main.group()
def location() -> None:
    """Fulfilment locations: pause one by hand (routing skips it) or resume it."""


@location.command("pause")
@click.argument("location_id")
@click.option("--reason", required=True)
@click.option("--by", "actor", default="operator", show_default=True)
def location_pause(location_id: str, reason: str, actor: str) -> None:
    from oms.operations import location_pause as build

    _send_command(build, location=location_id, paused=True, reason=reason, actor=actor)


@location.command("resume")
@click.argument("location_id")
@click.option("--reason", default="resumed by hand", show_default=True)
@click.option("--by", "actor", default="operator", show_default=True)
def location_resume(location_id: str, reason: str, actor: str) -> None:
    from oms.operations import location_pause as build

    _send_command(build, location=location_id, paused=False, reason=reason, actor=actor)


@main.command()
@click.option("--orders", "order_count", default=300, show_default=True)
def demo(order_count: int) -> None:
    """Start the stack, send sample orders through the pipeline, print a summary, stop."""
    from oms.demo import DemoFailed, run_demo
    from oms.stack import StackError

    try:
        s = run_demo(get_settings(), orders=order_count, say=click.echo)
    except (StackError, DemoFailed) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("")
    click.echo(f"generated      {s.generated} orders (+{s.malformed} malformed lines)")
    click.echo(f"received       {s.received} acknowledged by Kafka")
    click.echo(f"dead-lettered  {s.dead_lettered}")
    click.echo(f"accepted       {s.accepted}")
    click.echo(f"rejected       {s.rejected}")
    click.echo(f"in ClickHouse  {s.in_clickhouse}: " + ", ".join(
        f"{count} {status}" for status, count in sorted(s.statuses.items())))  # fmt: skip
    click.echo("sales by store (report sales_by_store):")
    for row in s.sales:
        click.echo(
            f"  {row.get('store', '')!s:<8} {row.get('orders')!s:>5} orders  "
            f"{int(str(row.get('revenue') or 0)) / 100:>10.2f} {row.get('currency', '')}"
        )
    click.echo("next up at S01 (oms queue S01):")
    for row in s.queue:
        click.echo(f"  {row['order_id']}  score {row['priority_score']}  due {row['promised_at']}")
    click.echo(f"elapsed        {s.elapsed_s:.1f} s")
    if not s.consistent:
        raise click.ClickException("the counts do not add up: see above")
    click.echo(
        "OK: accepted + rejected = generated; every order is routed and prioritised, held "
        "for review or rejected, and ClickHouse holds each one."
    )


if __name__ == "__main__":
    main()
