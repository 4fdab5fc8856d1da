"""The long-running processes: `oms worker` (the stream processors), `oms project` (the
projector into ClickHouse) and `oms api` (HTTP). Their exit codes: docs/operations.md."""

from __future__ import annotations

from typing import Any

import click

from infra.settings import get_settings


def metrics_port_option(function: Any) -> Any:
    """`--metrics-port`: where the process serves /metrics, /livez and /readyz (0: nowhere);
    default OMS_METRICS_PORT (docs/operations.md, "Metrics and health")."""
    return click.option(
        "--metrics-port",
        type=click.IntRange(min=0, max=65535),
        default=None,
        help="Serve /metrics, /livez and /readyz on this port (default: OMS_METRICS_PORT; 0: off).",
    )(function)


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes in one group; Kafka spreads the partitions over them.",
)
@metrics_port_option
@click.pass_context
def worker(ctx: click.Context, processes: int, metrics_port: int | None) -> None:
    """Run the Faust stream processors (extra arguments go to the Faust worker). With N
    processes, the Nth serves its metrics on the metrics port + N - 1."""
    from streams.worker.process import run_worker, run_workers

    if processes > 1:
        run_workers(processes, ctx.args or None, metrics_port=metrics_port)
    else:
        run_worker(ctx.args or None, metrics_port=metrics_port)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True)
@click.option(
    "--allow-missing-webhook-secrets",
    is_flag=True,
    help="Start even if channels' webhook secrets are not set (development): those channels "
    "refuse every message (401) until they are.",
)
def api(host: str, port: int, allow_missing_webhook_secrets: bool) -> None:
    """Serve the HTTP API: webhooks, operators' commands, the read API and the dashboard.
    Refuses to start (exit 1) while a pushed channel's secret is not set."""
    from oms.api import serve

    _check_webhook_secrets(allow_missing=allow_missing_webhook_secrets)
    click.echo(f"OrderStream API on http://{host}:{port}")
    serve(get_settings(), host=host, port=port)


def _check_webhook_secrets(*, allow_missing: bool) -> None:
    """Every pushed channel verifies its platform's signature: without its secret it would
    refuse every order, so the API does not start that way unless told to."""
    import logging

    from connectors.webhooks import missing_secrets

    missing = missing_secrets()
    if not missing:
        return
    variables = ", ".join(sorted({name for names in missing.values() for name in names}))
    channels = ", ".join(missing)
    if not allow_missing:
        raise click.ClickException(
            f"not starting: {variables} not set, so the {channels} webhooks could verify "
            'nothing. Set them (docs/operations.md, "Webhook secrets"), or pass '
            "--allow-missing-webhook-secrets to start anyway with those channels refusing "
            "every message."
        )
    warning = (
        f"DEVELOPMENT: --allow-missing-webhook-secrets: {variables} not set; the {channels} "
        "webhooks refuse every message (401) until they are"
    )
    logging.getLogger("oms.api").warning(warning)
    click.secho(f"WARNING {warning}", err=True, fg="red", bold=True)


@click.command()
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
    "--cluster",
    metavar="NAME",
    default=None,
    help="With --migrate or --rebuild: replicated tables ON CLUSTER NAME, a Distributed "
    '<table>_all over each (docs/operations.md, "A replicated ClickHouse").',
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
@metrics_port_option
def project(
    batch_size: int,
    batch_seconds: float,
    migrate_only: bool,
    rebuild: bool,
    until_caught_up: bool,
    retry_for: float | None,
    metrics_port: int | None,
    cluster: str | None,
) -> None:
    """Project the order log and the stock ledger into ClickHouse, resuming where ClickHouse
    left off (docs/read-models.md). Exit codes: docs/operations.md."""
    from infra.exit_codes import run_until_stopped
    from projections.cluster import ClusterDDL, ClusterDDLError
    from projections.reconnect import exit_code

    if cluster is not None:
        if not (migrate_only or rebuild):
            raise click.UsageError("--cluster goes with --migrate or --rebuild")
        try:
            ClusterDDL(cluster)
        except ClusterDDLError as exc:
            raise click.BadParameter(str(exc), param_hint="--cluster") from exc

    def main() -> None:
        _project(
            batch_size,
            batch_seconds,
            migrate_only,
            rebuild,
            until_caught_up,
            retry_for,
            metrics_port,
            cluster,
        )

    run_until_stopped("oms project", main, exit_code=exit_code)


def _project(
    batch_size: int,
    batch_seconds: float,
    migrate_only: bool,
    rebuild: bool,
    until_caught_up: bool,
    retry_for: float | None,
    metrics_port: int | None,
    cluster: str | None = None,
) -> None:
    from infra.metrics import serve_metrics
    from infra.structured_logs import configure_logging
    from projections.projector import BatchStats, Projector
    from projections.reconnect import Backoff
    from projections.store import connect

    settings = get_settings()
    configure_logging(settings, process="projector")
    store = connect(settings.resolved_clickhouse_url)
    if migrate_only:
        from projections.cluster import ClusterDDL
        from projections.schema import migrate

        report = migrate(store, cluster=ClusterDDL(cluster) if cluster else None)
        for label in report.applied:
            click.echo(f"applied  {label}")
        for table in report.distributed:
            click.echo(f"made     {table} (Distributed)")
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

        result = run_rebuild(
            settings=settings,
            store=store,
            batch_size=max(batch_size, 200_000),
            on_batch=progress,
            cluster=cluster,
        )
        click.echo("", err=True)
        click.echo(
            f"rebuilt {store.database} from {result.events:,} messages in "
            f"{result.elapsed_s:.1f} s; swapped in with {result.swap}"
        )
        return
    projector = Projector(
        settings=settings,
        store=store,
        batch_size=batch_size,
        batch_seconds=batch_seconds,
        retry=Backoff(give_up_after_s=retry_for),
    )
    server = serve_metrics(
        settings,
        port=metrics_port,
        health=projector.health,
        collectors=[projector.consumer_lag()],
    )
    try:
        projector.run(until=(lambda _: projector.lag() == 0) if until_caught_up else None)
    finally:
        if server is not None:
            server.close()
