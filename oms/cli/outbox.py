"""`oms outbox`: telling the platforms (oms/outbox.py). `run` is the sender; `list` shows the
calls and what came of them; `retry` makes a failed or expired call again."""

from __future__ import annotations

import click

from infra.settings import get_settings
from oms.cli.processes import metrics_port_option


@click.group("outbox")
def outbox() -> None:
    """Calls to Meituan and Ele.me (confirm, cancel, ready, delivered, sold out, busy) and to
    Square and WooCommerce (an order's progress: taken, ready, completed, cancelled)."""


@outbox.command("run")
@metrics_port_option
def run(metrics_port: int | None) -> None:
    """Tell the platforms of every transition, sold-out and pause, exactly once. Exit 78 when
    a served platform's credentials are not set (docs/operations.md, "The outbox")."""
    from connectors.outbound import MissingCredentials, clients
    from infra.exit_codes import ExitCode, run_until_stopped
    from oms.outbox import OutboxSender, OutboxUnavailable

    settings = get_settings()

    def exit_code(exc: Exception) -> ExitCode:
        if isinstance(exc, MissingCredentials):
            return ExitCode.CONFIG
        if isinstance(exc, OutboxUnavailable):
            return ExitCode.TEMPFAIL
        return ExitCode.BUG

    def main() -> None:
        from infra.metrics import serve_metrics
        from infra.structured_logs import configure_logging

        configure_logging(settings, process="outbox")
        served = clients(settings)
        click.echo(f"oms outbox: telling {', '.join(served)}", err=True)
        sender = OutboxSender(
            settings, served, self_delivery=frozenset(settings.outbox_self_delivery)
        )
        server = serve_metrics(settings, port=metrics_port, health=sender.health)
        try:
            sender.run()
        finally:
            if server is not None:
                server.close()

    run_until_stopped("oms outbox", main, exit_code=exit_code)


@outbox.command("list")
@click.option("--failed", "only_failed", is_flag=True, help="Only calls failed or expired.")
@click.option("--limit", default=50, show_default=True)
def list_calls(only_failed: bool, limit: int) -> None:
    """The calls on the outbox, newest first: key, platform, call, status, tries, why."""
    from oms.outbox import failed, read_records

    records = read_records(get_settings())
    shown = (
        list(failed(records))
        if only_failed
        else sorted(records.values(), key=lambda r: r.at, reverse=True)
    )
    for row in shown[:limit]:
        call = row.call
        target = call.platform_order_id or f"{call.shop_id or call.location}:{call.sku or ''}"
        click.echo(
            f"{call.idempotency_key}  {call.platform:<11} {call.kind.value:<13} "
            f"{row.status.value:<8} {row.attempts:>2}  {target}  {row.detail[:120]}"
        )
    click.echo(f"{len(shown)} call(s)" + (" failed or expired" if only_failed else ""), err=True)


@outbox.command("retry")
@click.argument("key")
@click.option("--by", "actor", required=True, help="who retries (recorded on the call)")
def retry(key: str, actor: str) -> None:
    """Make the failed or expired call KEY again, now (its platform's credentials needed)."""
    from connectors.outbound import MissingCredentials, clients
    from events.platform_calls import OutboxStatus
    from oms.outbox import OutboxSender, read_records

    settings = get_settings()
    known = read_records(settings).get(key)
    if known is None:
        raise click.ClickException(f"no call {key} on {settings.topics.outbox}")
    if known.status not in (OutboxStatus.FAILED, OutboxStatus.EXPIRED):
        raise click.ClickException(
            f"call {key} is {known.status.value}: only a failed or expired call is retried"
        )
    try:
        served = clients(settings, [known.call.platform])
    except MissingCredentials as exc:
        raise click.ClickException(str(exc)) from exc
    sender = OutboxSender(settings, served)
    sender.records = {key: known}
    outcome = sender.make(known.call, by=actor, again=True)
    sender.producer.flush(30)
    click.echo(f"{key}: {outcome.status.value} after {outcome.attempts} tries: {outcome.detail}")
    if outcome.status is not OutboxStatus.SENT:
        raise SystemExit(1)
