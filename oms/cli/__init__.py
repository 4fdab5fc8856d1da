"""The `oms` command line: one verb per job, one module per group of verbs. This module only
assembles them; `python -m oms.cli` runs it (oms/cli/__main__.py)."""

from __future__ import annotations

import click

from oms.cli import (
    access,
    alerts,
    audit,
    backup,
    bench,
    demo,
    eta,
    intake,
    notify,
    operators,
    outbox,
    privacy,
    processes,
    report,
    returns,
    schemas,
    shipping,
    stack,
    subscriptions,
    topics,
)


@click.group()
def main() -> None:
    """OrderStream: an event-sourced order management system on Kafka, Faust and ClickHouse."""


for command in (
    stack.stack,
    topics.topics,
    demo.demo,
    intake.connect,
    intake.simulate,
    intake.connectors,
    intake.dlq,
    processes.worker,
    processes.project,
    processes.api,
    operators.orders,
    operators.review,
    operators.store,
    operators.kitchen,
    operators.stock,
    operators.queue,
    operators.catalogue,
    operators.location,
    report.report,
    backup.backup,
    backup.restore,
    privacy.privacy,
    access.keys,
    access.users,
    audit.audit,
    schemas.schemas,
    bench.bench,
    eta.eta,
    outbox.outbox,
    notify.notify,
    subscriptions.subscriptions,
    alerts.alerts,
    shipping.carriers,
    shipping.ship,
    shipping.track,
    returns.returns,
):
    main.add_command(command)
