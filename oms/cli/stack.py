"""`oms stack`: start, stop and look at the local Kafka and ClickHouse."""

from __future__ import annotations

import sys

import click

from infra.settings import get_settings


@click.group()
def stack() -> None:
    """The local stack: Apache Kafka (KRaft) and ClickHouse (server, or embedded chDB)."""


@stack.command("up")
@click.option(
    "--brokers",
    type=click.IntRange(min=1),
    default=None,
    help="Kafka nodes of a new stack (default 1; 3 for replicated topics: 3 copies, writes "
    "need 2). A stack that exists keeps its own; OMS_KAFKA_BOOTSTRAP then lists them all.",
)
def stack_up(brokers: int | None) -> None:
    """Start Kafka and ClickHouse (idempotent) and wait until both answer."""
    from oms.stack import Stack, StackError

    try:
        for name, outcome in Stack(get_settings(), brokers=brokers).up():
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
