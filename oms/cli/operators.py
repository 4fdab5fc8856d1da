"""What operators read and do: `oms orders`, `oms review`, `oms store`, `oms stock`,
`oms queue`, `oms catalogue`, `oms location`. Reads come from ClickHouse; every change is a
command event sent to Kafka (oms.operations), which the workers act on."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from infra.settings import get_settings

if TYPE_CHECKING:
    from events.models import Product


def _send_command(build: Any, **kwargs: Any) -> None:
    """Build an operator command (errors name the field) and send it; say where it went."""
    from oms.operations import CommandRejected, send, topic_for

    settings = get_settings()
    try:
        event = build(**kwargs)
    except CommandRejected as exc:
        raise click.BadParameter(str(exc), param_hint=exc.field) from exc
    send(settings, event)
    click.echo(f"{event.event_type} {event.event_id} -> {topic_for(settings, event)}")


def _ledger_units(sku: str, text: str, field: str) -> int:
    """QUANTITY as the SKU's stock ledger counts it (items, or millionths of the unit of a
    product sold by weight or volume, by the catalogue file); a bad one names the argument."""
    from oms.operations import CommandRejected, stock_units
    from streams.reference import load_catalogue

    product = load_catalogue(get_settings().catalogue_file).products.get(sku)
    try:
        return stock_units(sku, text, field=field, unit=product.unit if product else None)
    except CommandRejected as exc:
        raise click.BadParameter(str(exc), param_hint=exc.field) from exc


def print_rows(rows: list[dict[str, Any]], columns: list[str], empty: str) -> None:
    if not rows:
        click.echo(empty)
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    click.echo("  ".join(f"{c:<{widths[c]}}" for c in columns))
    for row in rows:
        click.echo("  ".join(f"{row.get(c, '')!s:<{widths[c]}}" for c in columns))


def _read_report(name: str, **params: Any) -> list[dict[str, Any]]:
    from projections.reports import run_report
    from projections.store import connect

    return run_report(connect(get_settings().resolved_clickhouse_url), name, **params).as_dicts()


@click.group()
def orders() -> None:
    """Read orders from ClickHouse."""


@orders.command("show")
@click.argument("order_id")
def orders_show(order_id: str) -> None:
    """An order's current state and its event history (ORDER_ID or the channel's external id)."""
    from projections.queries import order_history, order_state
    from projections.store import connect

    store = connect(get_settings().resolved_clickhouse_url)
    state = order_state(store, order_id)
    if state is None:
        raise click.ClickException(f"no order {order_id!r} in ClickHouse")
    for key, value in state.items():
        if not key.startswith("_"):
            click.echo(f"{key:<18} {value}")
    click.echo("history:")
    for event in order_history(store, state["order_id"]):
        click.echo(
            f"  {event['sequence']:>3} {event['event_type']:<16} {event['occurred_at']} "
            f"{event['actor']}"
        )


@orders.command("list")
@click.option("--status", default=None)
@click.option("--channel", default=None)
@click.option("--limit", default=20, show_default=True)
def orders_list(status: str | None, channel: str | None, limit: int) -> None:
    """The most recent orders."""
    from projections.queries import list_orders
    from projections.store import connect

    store = connect(get_settings().resolved_clickhouse_url)
    rows = list_orders(store, status=status, channel=channel, limit=limit)
    click.echo(
        f"{'order_id':<36}  {'channel':<8} {'external_id':<16} {'status':<9} "
        f"{'total':>10} placed_at"
    )
    for row in rows:
        click.echo(
            f"{row['order_id']:<36}  {row['channel']:<8} {row['external_id']:<16} "
            f"{row['status']:<9} {row['total'] / 100:>10.2f} {row['placed_at']}"
        )


@orders.command("cancel")
@click.argument("order_id")
@click.option("--by", "actor", required=True, help="who cancels (recorded as the actor)")
@click.option("--code", "reason_code", default="MERCHANT_CANCELLED", show_default=True)
@click.option("--reason", required=True)
def orders_cancel(order_id: str, actor: str, reason_code: str, reason: str) -> None:
    """Cancel an order that has not left the store; its reservations are released."""
    from oms.operations import cancel

    _send_command(cancel, order_id=order_id, by=actor, reason_code=reason_code, reason=reason)


@click.group()
def store() -> None:
    """A store's steps with an order routed to it: accept (with an ETA) or decline, start,
    ready, hand off, deliver, complete; accept or refuse a change sent after accepting. The
    order's agent checks each against the lifecycle and that the order is at --store."""


def _store_step(action: str, order_id: str, location: str, actor: str, **details: Any) -> None:
    from oms.operations import store_action

    _send_command(
        store_action, action=action, order_id=order_id, location=location, by=actor, **details
    )


_AT = click.option("--store", "location", required=True, help="the store the order is at")
_BY = click.option("--by", "actor", required=True, help="who acts (recorded as the actor)")


@store.command("accept")
@click.argument("order_id")
@_AT
@_BY
@click.option("--ready-in", "ready_in_minutes", type=int, help="minutes until it is ready")
def store_accept(order_id: str, location: str, actor: str, ready_in_minutes: int | None) -> None:
    """Take the order on, saying when it will be ready."""
    _store_step("accept", order_id, location, actor, ready_in_minutes=ready_in_minutes)


@store.command("decline")
@click.argument("order_id")
@_AT
@_BY
@click.option(
    "--code",
    "reason_code",
    default="OTHER",
    show_default=True,
    help="BUSY, SOLD_OUT, CLOSING, OTHER",
)
@click.option("--reason", required=True)
def store_decline(order_id: str, location: str, actor: str, reason_code: str, reason: str) -> None:
    """Refuse the order: it is routed again without this store, or rejected."""
    _store_step("decline", order_id, location, actor, reason_code=reason_code, reason=reason)


@store.command("start")
@click.argument("order_id")
@_AT
@_BY
def store_start(order_id: str, location: str, actor: str) -> None:
    """The kitchen starts preparing the order."""
    _store_step("start", order_id, location, actor)


@store.command("ready")
@click.argument("order_id")
@_AT
@_BY
def store_ready(order_id: str, location: str, actor: str) -> None:
    """The order is ready for the courier, the customer or the table."""
    _store_step("ready", order_id, location, actor)


@store.command("handoff")
@click.argument("order_id")
@_AT
@_BY
@click.option("--to", type=click.Choice(["courier", "customer", "table"]), required=True)
@click.option("--courier", help="the courier's name (--to courier)")
@click.option("--courier-phone")
def store_handoff(
    order_id: str,
    location: str,
    actor: str,
    to: str,
    courier: str | None,
    courier_phone: str | None,
) -> None:
    """The order leaves the counter (its reservation is committed)."""
    _store_step(
        "handoff", order_id, location, actor, to=to, courier=courier, courier_phone=courier_phone
    )


@store.command("deliver")
@click.argument("order_id")
@_AT
@_BY
@click.option("--proof", help="signature or photo reference")
def store_deliver(order_id: str, location: str, actor: str, proof: str | None) -> None:
    """The store's own rider delivered the order."""
    _store_step("deliver", order_id, location, actor, proof=proof)


@store.command("complete")
@click.argument("order_id")
@_AT
@_BY
def store_complete(order_id: str, location: str, actor: str) -> None:
    """Nothing more will happen to the order."""
    _store_step("complete", order_id, location, actor)


@store.command("accept-change")
@click.argument("order_id")
@_AT
@_BY
@click.option("--revision", type=int, help="the revision seen (default: whichever is pending)")
def store_accept_change(order_id: str, location: str, actor: str, revision: int | None) -> None:
    """Take on the change the channel sent after the store accepted the order: the order's
    lines and amounts become the revision's, and the channel is told."""
    _store_step("accept-change", order_id, location, actor, revision=revision)


@store.command("refuse-change")
@click.argument("order_id")
@_AT
@_BY
@click.option("--revision", type=int, help="the revision seen (default: whichever is pending)")
@click.option(
    "--code",
    "reason_code",
    default="REFUSED",
    show_default=True,
    help="COOKED, SOLD_OUT, REFUSED, ...",
)
@click.option("--reason", required=True)
def store_refuse_change(
    order_id: str, location: str, actor: str, revision: int | None, reason_code: str, reason: str
) -> None:
    """Refuse the change: the order stays as it was, and the channel is told why."""
    _store_step(
        "refuse-change",
        order_id,
        location,
        actor,
        revision=revision,
        reason_code=reason_code,
        reason=reason,
    )


@click.group()
def kitchen() -> None:
    """Kitchens played by a program (demos, load tests)."""


@kitchen.command("simulate")
@click.option("--store", "stores", multiple=True, help="only these stores (default: all)")
@click.option("--seed", default=0, show_default=True)
@click.option("--for", "for_s", type=float, default=None, help="stop after this many seconds")
def kitchen_simulate(stores: tuple[str, ...], seed: int, for_s: float | None) -> None:
    """Take every order that reaches a store through accept, start, ready (after a random
    preparation time), hand-off, delivery and completion, as the store's staff would
    (oms/kitchen.py). The commands' actor is kitchen-simulator."""
    from oms.kitchen import KitchenSimulator

    simulator = KitchenSimulator(
        get_settings(), seed=seed, stores=frozenset(stores) if stores else None
    )
    started = time.monotonic()
    limit = float("inf") if for_s is None else for_s
    with contextlib.suppress(KeyboardInterrupt):
        simulator.run(until=lambda _: time.monotonic() - started >= limit, timeout_s=limit + 1)
    click.echo(f"{simulator.sent} steps sent; open orders by status: {simulator.open() or 'none'}")


@click.group()
def review() -> None:
    """The manual review queue: orders held by fraud screening."""


@review.command("list")
@click.option("--limit", default=50, show_default=True)
def review_list(limit: int) -> None:
    """Held orders, longest waiting first (from ClickHouse: run `oms project`)."""
    rows = _read_report("held_orders", limit=limit)
    print_rows(rows, list(rows[0]) if rows else [], "no orders waiting for review")


@review.command("approve")
@click.argument("order_id")
@click.option("--reviewer", required=True, help="who decides (recorded as the actor)")
@click.option("--note", default=None)
def review_approve(order_id: str, reviewer: str, note: str | None) -> None:
    """Release a held order into routing."""
    from oms.operations import review as build

    _send_command(build, order_id=order_id, approve=True, reviewer=reviewer, reason=note)


@review.command("reject")
@click.argument("order_id")
@click.option("--reviewer", required=True, help="who decides (recorded as the actor)")
@click.option("--reason", required=True)
def review_reject(order_id: str, reviewer: str, reason: str) -> None:
    """Cancel a held order."""
    from oms.operations import review as build

    _send_command(build, order_id=order_id, approve=False, reviewer=reviewer, reason=reason)


@click.group()
def stock() -> None:
    """Stock per sku@location, managed through ledger events."""


@stock.command("show")
@click.argument("sku", required=False)
@click.option("--location", default=None)
@click.option("--limit", default=100, show_default=True)
def stock_show(sku: str | None, location: str | None, limit: int) -> None:
    """On hand, reserved, safety stock and available per sku@location (from ClickHouse); a
    product the catalogue file sells by weight or volume shows its measure (12.5kg)."""
    from streams.reference import load_catalogue

    products = load_catalogue(get_settings().catalogue_file).products
    rows = [
        r
        for r in _read_report("stock_levels", limit=10_000)
        if (sku is None or r.get("sku") == sku)
        and (location is None or r.get("location") == location)
    ][:limit]
    shown = [in_units(row, products) for row in rows]
    print_rows(shown, list(shown[0]) if shown else [], "no stock recorded")


def in_units(row: dict[str, Any], products: Mapping[str, Product]) -> dict[str, Any]:
    """A stock_levels row as an operator reads it: a product sold by weight or volume, whose
    ledger counts millionths of its unit, shows its measure (12500000 of a kg product: 12.5kg)."""
    from events.models import measure_text

    product = products.get(row.get("sku", ""))
    if product is None or product.unit == "each":
        return row
    return {
        column: f"{measure_text(value)}{product.unit}"
        if column in ("on_hand", "reserved", "safety_stock", "available") and isinstance(value, int)
        else value
        for column, value in row.items()
    }


@stock.command("set")
@click.argument("sku")
@click.argument("location")
@click.argument("counted")
@click.option("--by", "actor", default="operator", show_default=True)
def stock_set(sku: str, location: str, counted: str, actor: str) -> None:
    """A stock count: on hand becomes COUNTED (items, or a measure: 12.5kg)."""
    from oms.operations import stock_set as build

    units = _ledger_units(sku, counted, "counted")
    _send_command(build, sku=sku, location=location, counted=units, actor=actor)


# A negative DELTA ("-3") is an argument, not an unknown option. (A mistyped option then shows
# as an extra argument, which click still refuses.)
@stock.command("adjust", context_settings={"ignore_unknown_options": True})
@click.argument("sku")
@click.argument("location")
@click.argument("delta")
@click.option("--reason", required=True, help="DAMAGED, LOST, FOUND, CORRECTION, ...")
@click.option("--note", default=None)
@click.option("--by", "actor", default="operator", show_default=True)
def stock_adjust(
    sku: str, location: str, delta: str, reason: str, note: str | None, actor: str
) -> None:
    """Add (or with a negative DELTA, e.g. -3 or -0.5kg, remove) units, with a reason."""
    from oms.operations import stock_adjust as build

    units = _ledger_units(sku, delta, "delta")
    _send_command(
        build, sku=sku, location=location, delta=units, reason=reason, note=note, actor=actor
    )


@stock.command("receive")
@click.argument("sku")
@click.argument("location")
@click.argument("quantity")
@click.option("--reference", default=None, help="purchase order or transfer id")
@click.option("--by", "actor", default="operator", show_default=True)
def stock_receive(
    sku: str, location: str, quantity: str, reference: str | None, actor: str
) -> None:
    """Goods in: QUANTITY more on hand (items, or a measure: 12.5kg)."""
    from oms.operations import stock_receive as build

    units = _ledger_units(sku, quantity, "quantity")
    _send_command(
        build, sku=sku, location=location, quantity=units, reference=reference, actor=actor
    )


@stock.command("safety")
@click.argument("sku")
@click.argument("location")
@click.argument("quantity")
@click.option("--by", "actor", default="operator", show_default=True)
def stock_safety(sku: str, location: str, quantity: str, actor: str) -> None:
    """Units kept back from promising (ATP = on hand - reserved - safety stock)."""
    from oms.operations import safety_stock as build

    units = _ledger_units(sku, quantity, "quantity")
    _send_command(build, sku=sku, location=location, quantity=units, actor=actor)


@click.command()
@click.argument("location_id")
@click.option("--limit", default=50, show_default=True)
def queue(location_id: str, limit: int) -> None:
    """A location's fulfilment queue: open prioritised orders, highest priority first."""
    from projections.queries import fulfilment_queue
    from projections.store import connect

    store = connect(get_settings().resolved_clickhouse_url)
    rows = fulfilment_queue(store, location_id, limit=limit)
    columns = [
        "order_id",
        "channel",
        "mode",
        "status",
        "priority_score",
        "promised_at",
        "item_count",
        "total",
    ]
    print_rows(rows, columns, f"no open orders at {location_id}")


@click.group()
def catalogue() -> None:
    """Products and locations: the catalogue file, kept current by events."""


@catalogue.command("publish")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--by", "actor", default="operator", show_default=True)
def catalogue_publish(file: Path, actor: str) -> None:
    """Send every product and location in FILE as an update; running workers take them."""
    from infra.publisher import Publisher
    from oms.operations import CommandRejected, catalogue_updates, topic_for

    settings = get_settings()
    try:
        updates = catalogue_updates(file, actor=actor)
    except CommandRejected as exc:
        raise click.BadParameter(str(exc), param_hint="FILE") from exc
    publisher = Publisher(settings)
    for event in updates:
        publisher.publish(topic_for(settings, event), event)
    publisher.flush(60)
    click.echo(f"{len(updates)} updates -> {settings.topics.catalogue}")


@click.group()
def location() -> None:
    """Fulfilment locations: pause one by hand (routing skips it) or resume it."""


@location.command("pause")
@click.argument("location_id")
@click.option("--reason", required=True)
@click.option("--by", "actor", default="operator", show_default=True)
def location_pause(location_id: str, reason: str, actor: str) -> None:
    from oms.operations import location_pause as build

    _send_command(build, location=location_id, paused=True, reason=reason, actor=actor)


@location.command("resume")
@click.argument("location_id")
@click.option("--reason", default="resumed by hand", show_default=True)
@click.option("--by", "actor", default="operator", show_default=True)
def location_resume(location_id: str, reason: str, actor: str) -> None:
    from oms.operations import location_pause as build

    _send_command(build, location=location_id, paused=False, reason=reason, actor=actor)
