"""`oms eta`: learn the prep-time model from the read models and publish it to the workers."""

from __future__ import annotations

import click

from infra.settings import get_settings


@click.group("eta")
def eta() -> None:
    """Prep-time estimates: learned from history, used at routing and acceptance."""


@eta.command("learn")
@click.option("--days", default=28, show_default=True, help="History to learn from.")
@click.option("--min-samples", default=5, show_default=True, help="Orders a cell needs to be used.")
@click.option("--dry-run", is_flag=True, help="Learn and show the model; do not publish it.")
def learn(days: int, min_samples: int, dry_run: bool) -> None:
    """Learn prep times per store × dish × hour from the last DAYS and publish the model."""
    from events.models import utc_now
    from oms.prep_times import PublishFailed, learn_from, publish
    from projections.store import StoreError, connect

    settings = get_settings()
    store = connect(settings.resolved_clickhouse_url)
    try:
        model = learn_from(store, now=utc_now(), days=days, min_samples=min_samples)
    except StoreError as exc:
        reason = " ".join(str(exc).split(" -- in:", 1)[0].split())
        hint = " (run `oms project --migrate`)" if "exist" in reason else ""
        raise click.ClickException(f"could not read the history: {reason}{hint}") from exc
    finally:
        store.close()
    _describe(model)
    if model.orders == 0:
        raise click.ClickException(
            f"no finished orders in the last {days} days: nothing to learn (not published)"
        )
    if dry_run:
        return
    try:
        publish(settings, model)
    except PublishFailed as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"published model {model.version} to {settings.topics.eta_models}")


@eta.command("show")
def show() -> None:
    """The model the workers estimate with (the newest published)."""
    from oms.prep_times import latest

    model = latest(get_settings())
    if model is None:
        click.echo("no model published: promises are the fixed defaults (45/20/15 minutes)")
        return
    _describe(model)


def _describe(model: object) -> None:
    from streams.eta import ALL, PrepTimeModel

    assert isinstance(model, PrepTimeModel)
    click.echo(
        f"model {model.version}: {model.orders} orders accepted {model.since:%Y-%m-%d %H:%M} "
        f"to {model.until:%Y-%m-%d %H:%M} UTC; {len(model.cells)} cells "
        f"(at least {model.min_samples} orders each), {len(model.hour_factors)} hour factors"
    )
    click.echo(f"{'cell':<36} {'orders':>6} {'p50 min':>8} {'p90 min':>8}")
    for key, cell in sorted(model.cells.items(), key=lambda kv: (kv[0].count("|"), kv[0])):
        if key.count("|") < 2:  # the hour-of-week cells are many: counted above
            click.echo(f"{key:<36} {cell.orders:>6} {cell.p50 / 60:>8.1f} {cell.p90 / 60:>8.1f}")
    load = ", ".join(f"{k}: {v:.0f} s" for k, v in sorted(model.load.items()) if k != ALL)
    click.echo(f"per open ticket: {model.load.get(ALL, 0):.0f} s overall; {load or 'no store'}")
