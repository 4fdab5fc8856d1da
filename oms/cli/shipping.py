"""`oms carriers` and `oms ship`: the carrier adapters installed (connectors/carriers/, found
through the `orderstream.carriers` entry points) and shipping waves (docs/carriers.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from oms.cli.processes import metrics_port_option


@click.group()
def carriers() -> None:
    """Carriers (found through the `orderstream.carriers` entry points)."""


@carriers.command("list")
def carriers_list() -> None:
    """Every installed carrier: what it can carry, the package it comes from, whether it
    loads."""
    from connectors.carriers.registry import registered

    rows = registered()
    click.echo(f"{'carrier':<10} {'temperatures':<24} {'cod':<4} {'package':<24} target")
    for row in rows:
        if row.carrier is None:
            click.echo(
                f"{row.name:<10} {'-':<24} {'-':<4} {row.distribution:<24} {row.target}"
                f"  BROKEN: {row.error}"
            )
            continue
        kept = ",".join(sorted(t.value for t in row.carrier.temperatures))
        cod = "yes" if row.carrier.cash_on_delivery else "no"
        click.echo(f"{row.name:<10} {kept:<24} {cod:<4} {row.distribution:<24} {row.target}")
    if any(row.error for row in rows):
        sys.exit(1)


@click.group()
def ship() -> None:
    """Shipping by carrier: waves of labels (docs/carriers.md)."""


@ship.command("wave")
@click.argument("location")
@click.option("--by", "actor", required=True, help="who runs the wave (recorded as the actor)")
@click.option("--limit", type=int, default=None, help="at most this many orders")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="where the wave's PDF goes (default HOME/waves)",
)
def wave(location: str, actor: str, limit: int | None, out_dir: Path | None) -> None:
    """Buy the labels of every order ready to ship at LOCATION (rate-shopped across
    OMS_CARRIERS), write one PDF of packing slips and 4x6 in labels, and record each shipment
    (its reservation is committed)."""
    from events.models import Actor, ActorKind
    from infra.exit_codes import ExitCode
    from infra.settings import get_settings
    from oms.shipping import (
        ShippingMisconfigured,
        carriers_from_settings,
        load_config,
        run_wave,
    )

    settings = get_settings()
    try:
        config = load_config(settings.shipping_file)
        carriers = carriers_from_settings(settings, config)
    except ShippingMisconfigured as exc:
        click.echo(f"oms ship wave: {exc}", err=True)
        sys.exit(ExitCode.CONFIG)
    report = run_wave(
        settings,
        location,
        carriers=carriers,
        config=config,
        by=Actor(kind=ActorKind.USER, id=actor),
        out_dir=out_dir or settings.home / "waves",
        limit=limit,
    )
    click.echo(f"wave {report.wave}: {len(report.shipped)} shipped, {len(report.skipped)} not")
    for shipped in report.shipped:
        choice = shipped.choice
        assert choice.chosen is not None
        click.echo(
            f"  {shipped.order.placed.external_id}: {shipped.shipment.carrier} "
            f"{shipped.shipment.service} {shipped.shipment.tracking_number} "
            f"({choice.price} {choice.chosen.currency}; beat {len(choice.alternatives)})"
        )
    for order_id, why in report.skipped.items():
        click.echo(f"  {order_id}: not shipped: {why}")
    for carrier, why in report.carriers_failed.items():
        click.echo(f"  carrier {carrier} failed: {why}", err=True)
    if report.pdf is not None:
        click.echo(f"print: {report.pdf}")


@click.group()
def track() -> None:
    """Following shipments: carriers polled and their pushes read (docs/carriers.md)."""


@track.command("run")
@metrics_port_option
def track_run(metrics_port: int | None) -> None:
    """Follow every shipment on its way: ask its carrier every OMS_TRACK_POLL_S, read the
    verified pushes, tell the order agent each new status and the delivery."""
    from infra.exit_codes import ExitCode, run_until_stopped
    from infra.settings import get_settings
    from oms.shipping import ShippingMisconfigured, carriers_from_settings, load_config
    from oms.tracking import Tracker

    settings = get_settings()

    def exit_code(exc: Exception) -> ExitCode:
        if isinstance(exc, ShippingMisconfigured):
            return ExitCode.CONFIG
        return ExitCode.BUG

    def main() -> None:
        carriers = carriers_from_settings(settings, load_config(settings.shipping_file))
        click.echo(f"oms track: following shipments of {', '.join(carriers)}", err=True)
        from infra.metrics import serve_metrics
        from infra.structured_logs import configure_logging

        configure_logging(settings, process="track")
        tracker = Tracker(settings, carriers=carriers, poll_every_s=settings.track_poll_s)
        server = serve_metrics(settings, port=metrics_port, health=tracker.health)
        try:
            tracker.run()
        finally:
            if server is not None:
                server.close()

    run_until_stopped("oms track", main, exit_code=exit_code)
