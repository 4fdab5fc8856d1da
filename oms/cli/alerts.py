"""`oms alerts`: telling the staff (oms/staff_alerts.py). `run` is the alerter; `check`
validates the staff alerts file; `list` shows the alerts and what came of them."""

from __future__ import annotations

import click

from infra.settings import get_settings


@click.group("alerts")
def alerts() -> None:
    """New orders to stores without a kitchen screen (WeCom robot, receipt printer, SMS), held
    orders to reviewers, low stock to buyers."""


@alerts.command("run")
def run() -> None:
    """Send every alert once per sink. Exit 78 when OMS_STAFF_ALERTS_FILE is missing or wrong
    (docs/operations.md, "Staff alerts")."""
    from connectors.sms import ProviderMisconfigured
    from infra.exit_codes import ExitCode, run_until_stopped
    from oms.outbox import OutboxUnavailable
    from oms.staff_alerts import (
        AlertsMisconfigured,
        AlertsUnavailable,
        SinkDelivery,
        StaffAlerter,
        load_config,
        sms_provider,
    )

    settings = get_settings()

    def exit_code(exc: Exception) -> ExitCode:
        if isinstance(exc, AlertsMisconfigured):
            return ExitCode.CONFIG
        if isinstance(exc, AlertsUnavailable | OutboxUnavailable):  # Kafka, or its topic
            return ExitCode.TEMPFAIL
        return ExitCode.BUG

    def main() -> None:
        config = load_config(settings.staff_alerts_file)
        try:
            delivery = SinkDelivery(settings, sms=sms_provider(config, settings))
        except ProviderMisconfigured as exc:
            raise AlertsMisconfigured(f"sms_provider: {exc}") from exc
        click.echo(f"oms alerts: {len(config.sinks())} sink(s) configured", err=True)
        StaffAlerter(settings, config, delivery=delivery).run()

    run_until_stopped("oms alerts", main, exit_code=exit_code)


@alerts.command("check")
def check() -> None:
    """Validate OMS_STAFF_ALERTS_FILE and list its sinks (never a key or a number)."""
    from oms.staff_alerts import AlertsMisconfigured, load_config

    try:
        config = load_config(get_settings().staff_alerts_file)
    except AlertsMisconfigured as exc:
        click.echo(f"oms alerts: {exc}", err=True)
        raise SystemExit(78) from exc
    for sink in config.sinks().values():
        click.echo(f"{sink.name}  {sink.kind.value}")


@alerts.command("list")
@click.option("--failed", "only_failed", is_flag=True, help="Only alerts failed for good.")
@click.option("--limit", default=50, show_default=True)
def list_alerts(only_failed: bool, limit: int) -> None:
    """The alerts on the staff alerts topic, newest first: key, kind, sink, status, tries, why."""
    from events.staff_alerts import AlertStatus
    from oms.staff_alerts import deliveries, read_records

    shown = [
        r
        for r in deliveries(read_records(get_settings()))
        if not only_failed or r.status is AlertStatus.FAILED
    ]
    for row in shown[:limit]:
        alert = row.alert
        click.echo(
            f"{alert.key}  {alert.kind.value:<9} {alert.sink:<32} {row.status.value:<7} "
            f"{row.attempts:>2}  {alert.external_id or alert.sku or ''}  {row.detail[:120]}"
        )
    click.echo(f"{len(shown)} alert(s)" + (" failed" if only_failed else ""), err=True)
