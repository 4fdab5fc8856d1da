"""`oms demo`: the whole pipeline on the local stack with sample orders, and a summary that
adds up."""

from __future__ import annotations

import logging

import click

from infra.settings import get_settings


@click.command()
@click.option("--orders", "order_count", default=300, show_default=True)
def demo(order_count: int) -> None:
    """Start the stack, send sample orders through the pipeline, print a summary, stop."""
    from oms.demo import DemoFailed, run_demo
    from oms.stack import StackError

    # The Kafka clients log through the `librdkafka` logger. Its warnings are about what it
    # recovers from by itself (a producer's retries while a broker that has just started loads
    # its coordinator: GETPID), which is not the demo's news; its errors still show.
    logging.getLogger("librdkafka").setLevel(logging.ERROR)
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
    statuses = ", ".join(f"{count} {status}" for status, count in sorted(s.statuses.items()))
    click.echo(f"in ClickHouse  {s.in_clickhouse}: {statuses}")
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
