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


@stack.group("cluster")
def stack_cluster() -> None:
    """A local replicated ClickHouse beside the stack: ZooKeeper and N clickhouse-server
    replicas of one shard, under $OMS_HOME/cluster (docs/operations.md, "A replicated
    ClickHouse")."""


@stack_cluster.command("up")
@click.option("--replicas", type=click.IntRange(min=1, max=9), default=2, show_default=True)
@click.option("--name", default="oms", show_default=True, help="The cluster's name.")
@click.option(
    "--base-port",
    type=click.IntRange(min=1024, max=65000),
    default=9300,
    show_default=True,
    help="ZooKeeper's port; replica N listens on base+10N (native), +1 (HTTP), +2 (replication).",
)
def stack_cluster_up(replicas: int, name: str, base_port: int) -> None:
    """Start ZooKeeper and the replicas (idempotent) and wait until all answer."""
    from oms.cluster_stack import ClickHouseCluster, ClusterLayout
    from oms.stack import StackError

    layout = ClusterLayout.starting_at(base_port, name=name, replicas=replicas)
    try:
        cluster = ClickHouseCluster(directory=get_settings().home / "cluster", layout=layout)
        for service, outcome in cluster.up():
            click.echo(f"{service}: {outcome}")
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"next: OMS_CLICKHOUSE_URL={cluster.urls()[0]} oms project --migrate --cluster {name}"
    )


@stack_cluster.command("down")
def stack_cluster_down() -> None:
    """Stop what `oms stack cluster up` started; the data stays under $OMS_HOME/cluster."""
    from oms.cluster_stack import ClickHouseCluster
    from oms.stack import StackError

    try:
        cluster = ClickHouseCluster(directory=get_settings().home / "cluster")
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    for service, stopped in cluster.down():
        click.echo(f"{service}: {'stopped' if stopped else 'was not running'}")


@stack_cluster.command("status")
def stack_cluster_status() -> None:
    """ZooKeeper and each replica, its address and whether it answers."""
    from oms.cluster_stack import ClickHouseCluster
    from oms.stack import StackError

    try:
        statuses = ClickHouseCluster(directory=get_settings().home / "cluster").status()
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    for s in statuses:
        state = "answering" if s.answering else ("started, not answering" if s.running else "down")
        click.echo(f"{s.name:<22} {s.address:<22} {state}")
    if not all(s.answering for s in statuses):
        sys.exit(1)
