"""`oms notify`: telling customers how their orders go (oms/notify.py). `run` is the notifier;
`opt-out` and `opt-in` keep a customer's choice; `list` shows the messages and what came of
them."""

from __future__ import annotations

import click

from infra.settings import get_settings
from oms.cli.processes import metrics_port_option


@click.group("notify")
def notify() -> None:
    """Customer messages (e-mail): confirmed, new ETA, ready, on its way, shipped, delivered,
    cancelled, refunded."""


@notify.command("run")
@metrics_port_option
def run(metrics_port: int | None) -> None:
    """Send each order's customer messages exactly once. Exit 78 when e-mail is on without
    OMS_SMTP_HOST or OMS_SMTP_FROM, an SMS or WeChat setting is missing, or the relay or a
    provider refuses the credentials (docs/operations.md)."""
    from connectors.email import SmtpMisconfigured
    from connectors.sms import ProviderMisconfigured
    from infra.exit_codes import ExitCode, run_until_stopped
    from infra.keystore import KeyStoreError, KeyStoreUnavailable
    from oms.notify import Notifier, NotifyNotConfigured, mailer_of, texts_of
    from oms.outbox import OutboxUnavailable

    settings = get_settings()

    def exit_code(exc: Exception) -> ExitCode:
        if isinstance(exc, OutboxUnavailable | KeyStoreUnavailable):
            return ExitCode.TEMPFAIL
        if isinstance(
            exc, NotifyNotConfigured | SmtpMisconfigured | ProviderMisconfigured | KeyStoreError
        ):
            return ExitCode.CONFIG
        return ExitCode.BUG

    def main() -> None:
        mailer = mailer_of(settings)
        texts = texts_of(settings)
        relay = f"{settings.smtp_host}:{settings.smtp_port}" if mailer else "nowhere (e-mail off)"
        others = ", ".join(f"{channel.value} through {p.name}" for channel, p in texts.items())
        click.echo(
            f"oms notify: e-mail through {relay}" + (f"; {others}" if others else ""), err=True
        )
        from infra.metrics import serve_metrics
        from infra.structured_logs import configure_logging

        configure_logging(settings, process="notify")
        notifier = Notifier(settings, mailer=mailer, texts=texts)
        server = serve_metrics(settings, port=metrics_port, health=notifier.health)
        try:
            notifier.run()
        finally:
            if server is not None:
                server.close()

    run_until_stopped("oms notify", main, exit_code=exit_code)


def _customer_key(customer: str) -> str:
    from infra.keystore import KeyStoreError, MasterKey
    from oms.privacy import UnknownCustomer, subject_for

    try:
        return subject_for(customer, MasterKey.from_settings(get_settings()).pepper)
    except (UnknownCustomer, KeyStoreError) as exc:
        raise click.ClickException(str(exc)) from exc


@notify.command("opt-out")
@click.argument("customer")
def opt_out(customer: str) -> None:
    """CUSTOMER (a phone number, channel:customer-id or customer key) gets no more messages."""
    from oms.notify import PreferenceFile

    key = _customer_key(customer)
    PreferenceFile.of(get_settings()).set(key, opted_out=True)
    click.echo(f"{key}: opted out")


@notify.command("opt-in")
@click.argument("customer")
@click.option("--locale", type=click.Choice(["zh-CN", "en"]), help="the messages' language")
@click.option(
    "--channel",
    "channels",
    multiple=True,
    type=click.Choice(["email", "sms", "wechat"]),
    help="how they are told (repeat for several; default: OMS_NOTIFY_CHANNELS)",
)
def opt_in(customer: str, locale: str | None, channels: tuple[str, ...]) -> None:
    """CUSTOMER gets messages again (optionally in LOCALE, on CHANNELs)."""
    from oms.notify import PreferenceFile

    key = _customer_key(customer)
    changes: dict[str, object] = {"opted_out": False}
    if locale:
        changes["locale"] = locale
    if channels:
        changes["channels"] = list(dict.fromkeys(channels))
    PreferenceFile.of(get_settings()).set(key, **changes)
    click.echo(f"{key}: opted in" + (f" ({locale})" if locale else ""))


@notify.command("list")
@click.option("--failed", "only_failed", is_flag=True, help="Only messages that failed.")
@click.option("--limit", default=50, show_default=True)
def list_messages(only_failed: bool, limit: int) -> None:
    """The messages on the notifications topic, newest first: key, kind, status, tries, why."""
    from oms.notify import failed, read_records

    records = read_records(get_settings())
    shown = (
        list(failed(records))
        if only_failed
        else sorted(records.values(), key=lambda r: r.at, reverse=True)
    )
    for row in shown[:limit]:
        notice = row.notice
        click.echo(
            f"{row.key}  {notice.channel.value:<5} {notice.kind.value:<16} {row.status.value:<7} "
            f"{row.attempts:>2}  {notice.order_channel}:{notice.external_id}  {row.detail[:120]}"
        )
    click.echo(f"{len(shown)} message(s)" + (" failed" if only_failed else ""), err=True)
