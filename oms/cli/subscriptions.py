"""`oms subscriptions`: outbound webhooks (oms/webhooks.py). `add`, `list`, `remove`, `enable`
and `replay` manage the subscriptions; `deliveries` reads the delivery log; `run` is the sender.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click
from pydantic import ValidationError

from infra.settings import get_settings

if TYPE_CHECKING:
    from events.webhook_subscriptions import Subscription


def _refusal(exc: ValidationError) -> click.ClickException:
    """A refused subscription, naming the field."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "subscription"
    return click.ClickException(f"{field}: {first['msg'].removeprefix('Value error, ')}")


@click.group("subscriptions")
def subscriptions() -> None:
    """Outbound webhooks: the order log's events POSTed to subscribers, signed per Standard
    Webhooks, in order per order, at least once (docs/operations.md, "Outbound webhooks")."""


@subscriptions.command("add")
@click.argument("url")
@click.option("--event", "event_types", multiple=True, help="an event type (repeat); default all")
@click.option("--store", "stores", multiple=True, help="a store (location) id (repeat)")
@click.option("--channel", "channels", multiple=True, help="a sales channel (repeat)")
@click.option("--id", "subscription_id", default=None, help="default: sub_ and random hex")
def add(
    url: str,
    event_types: tuple[str, ...],
    stores: tuple[str, ...],
    channels: tuple[str, ...],
    subscription_id: str | None,
) -> None:
    """Subscribe URL to the events recorded from now on. Prints the id and the signing secret;
    the secret is shown this once."""
    from events.webhook_subscriptions import Subscription
    from infra.keystore import KeyStoreError, MasterKey
    from oms.webhooks import save, seal_secret, start_at
    from streams.webhook_delivery import new_secret

    settings = get_settings()
    try:
        master = MasterKey.from_settings(settings)
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    subscription_id = subscription_id or f"sub_{secrets.token_hex(8)}"
    secret = new_secret(secrets.token_bytes(32))
    try:
        subscription = Subscription(
            id=subscription_id,
            url=url,
            event_types=list(event_types),
            stores=list(stores),
            channels=list(channels),
            sealed_secret=seal_secret(master, subscription_id, secret),
            start=start_at(settings, mark=uuid.uuid4().hex),
            changed_at=datetime.now(UTC),
        )
    except ValidationError as exc:
        raise _refusal(exc) from exc
    save(settings, subscription)
    click.echo(f"id: {subscription.id}")
    click.echo(f"secret: {secret}")
    click.echo("keep the secret: it is not shown again", err=True)


@subscriptions.command("list")
def list_subscriptions() -> None:
    """Every subscription: id, state (disabled with why), events behind, URL, filters."""
    from oms.webhooks import lag, read_subscriptions

    settings = get_settings()
    found = read_subscriptions(settings)
    behind = lag(settings)
    for subscription in sorted(found.values(), key=lambda s: s.id):
        state = "enabled" if subscription.enabled else f"disabled ({subscription.disabled_reason})"
        filters = " ".join(
            f"{name}={','.join(values)}"
            for name, values in (
                ("events", subscription.event_types),
                ("stores", subscription.stores),
                ("channels", subscription.channels),
            )
            if values
        )
        click.echo(
            f"{subscription.id}  {state}  lag {behind.get(subscription.id, 0)}  "
            f"{subscription.url}  {filters}".rstrip()
        )
    click.echo(f"{len(found)} subscription(s)", err=True)


def _existing(subscription_id: str) -> Subscription:
    from oms.webhooks import read_subscriptions

    settings = get_settings()
    found = read_subscriptions(settings).get(subscription_id)
    if found is None:
        raise click.ClickException(
            f"no subscription {subscription_id} on {settings.topics.webhook_subscriptions}"
        )
    return found


@subscriptions.command("remove")
@click.argument("subscription_id")
def remove_subscription(subscription_id: str) -> None:
    """Remove a subscription: nothing more is sent to it."""
    from oms.webhooks import remove

    _existing(subscription_id)
    if remove(get_settings(), subscription_id):
        click.echo(f"{subscription_id}: removed, with its progress")
    else:
        click.echo(
            f"{subscription_id}: removed; its progress (consumer group) is still in use and is "
            "deleted by the running sender"
        )


@subscriptions.command("enable")
@click.argument("subscription_id")
def enable(subscription_id: str) -> None:
    """Enable a disabled subscription again: it resumes where it stopped (`replay` moves it)."""
    from oms.webhooks import save

    found = _existing(subscription_id)
    save(
        get_settings(),
        found.model_copy(
            update={"enabled": True, "disabled_reason": None, "changed_at": datetime.now(UTC)}
        ),
    )
    click.echo(f"{subscription_id}: enabled")


@subscriptions.command("replay")
@click.argument("subscription_id")
@click.option("--since", help="ISO 8601 time (UTC if no offset): the events recorded since")
@click.option("--offset", type=click.IntRange(min=0), help="this offset of every partition")
def replay(subscription_id: str, since: str | None, offset: int | None) -> None:
    """Deliver again from a time or an offset of the order log (with the same webhook ids: a
    receiver that dedupes takes only what it had not)."""
    from oms.webhooks import save, start_at

    if (since is None) == (offset is None):
        raise click.UsageError("give one of --since or --offset")
    at: datetime | None = None
    if since is not None:
        try:
            at = datetime.fromisoformat(since)
        except ValueError as exc:
            raise click.BadParameter(
                f"{since!r} is not an ISO 8601 time", param_hint="--since"
            ) from exc
        at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    found = _existing(subscription_id)
    settings = get_settings()
    start = start_at(settings, mark=uuid.uuid4().hex, since=at, offset=offset)
    save(settings, found.model_copy(update={"start": start, "changed_at": datetime.now(UTC)}))
    where = ", ".join(f"{p}:{at}" for p, at in sorted(start.offsets.items()))
    click.echo(f"{subscription_id}: from partition:offset {where}")


@subscriptions.command("deliveries")
@click.argument("subscription_id")
@click.option("--failed", "only_failed", is_flag=True, help="only deliveries failed for good")
@click.option("--limit", default=50, show_default=True)
def deliveries(subscription_id: str, only_failed: bool, limit: int) -> None:
    """The delivery log of a subscription, newest first: webhook id, status, attempts, HTTP
    status, time, event, order."""
    from events.webhook_subscriptions import DeliveryStatus
    from oms.webhooks import read_deliveries

    found = read_deliveries(get_settings(), subscription_id=subscription_id)
    shown = [d for d in found if not only_failed or d.status is DeliveryStatus.FAILED]
    for row in shown[:limit]:
        click.echo(
            f"{row.webhook_id}  {row.status.value:<9} {row.attempts:>3}  "
            f"{row.http_status or '-':>3}  {row.at.isoformat(timespec='seconds')}  "
            f"{row.event_type}  {row.order_id}  {row.detail[:80]}".rstrip()
        )
    click.echo(f"{len(shown)} deliver{'y' if len(shown) == 1 else 'ies'}", err=True)


@subscriptions.command("run")
def run() -> None:
    """The sender: deliver every subscription's events, for ever (docs/operations.md)."""
    from infra.exit_codes import ExitCode, run_until_stopped
    from infra.keystore import KeyStoreError
    from oms.webhooks import WebhookSender, WebhooksUnavailable

    settings = get_settings()

    def exit_code(exc: Exception) -> ExitCode:
        if isinstance(exc, KeyStoreError):
            return ExitCode.CONFIG  # no master key: no secret opens
        return ExitCode.TEMPFAIL if isinstance(exc, WebhooksUnavailable) else ExitCode.BUG

    def main() -> None:
        click.echo("oms subscriptions: delivering webhooks", err=True)
        WebhookSender(settings).run()

    run_until_stopped("oms subscriptions", main, exit_code=exit_code)
