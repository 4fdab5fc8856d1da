"""`oms returns list|request|approve|deny|label|receive|refund`: returns and refunds
(oms/returns.py; docs/carriers.md, "Returns"). Each step is checked against the order log
first, a wrong one refused naming the field; the order agent then checks it against the
lifecycle and logs it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from infra.settings import get_settings

if TYPE_CHECKING:
    from events.models import Event, InspectedLine, ReturnLine


def _send(build: Any, **kwargs: Any) -> list[Event]:
    """Read the order log, build the step's commands (errors name the field), send them."""
    from oms.operations import CommandRejected, topic_for
    from oms.returns import read_view, send_all

    settings = get_settings()
    try:
        built = build(read_view(settings), **kwargs)
    except CommandRejected as exc:
        raise click.BadParameter(str(exc), param_hint=exc.field) from exc
    events = list(built) if isinstance(built, tuple | list) else [built]
    send_all(settings, events)
    for event in events:
        click.echo(f"{event.event_type} {event.event_id} -> {topic_for(settings, event)}")
    return events


def _return_lines(given: tuple[str, ...]) -> list[ReturnLine]:
    """SKU:QUANTITY[:REASON] each."""
    from events.models import ReturnLine

    lines = []
    for text in given:
        sku, _, rest = text.partition(":")
        quantity, _, reason = rest.partition(":")
        if not sku.strip() or not quantity.strip().isdigit():
            raise click.BadParameter(f"{text!r} is not SKU:QUANTITY[:REASON]", param_hint="line")
        lines.append(ReturnLine(sku=sku.strip(), quantity=int(quantity), reason=reason or None))
    return lines


def _inspected_lines(given: tuple[str, ...], restock_at: str | None) -> list[InspectedLine]:
    """SKU:QUANTITY:CONDITION[:LOCATION] each; a resellable line without a location goes back
    to --restock-at."""
    from events.models import InspectedLine
    from streams.returns import CONDITIONS

    lines = []
    for text in given:
        parts = [part.strip() for part in text.split(":")]
        if len(parts) not in (3, 4) or not parts[0] or not parts[1].isdigit():
            raise click.BadParameter(
                f"{text!r} is not SKU:QUANTITY:CONDITION[:LOCATION]", param_hint="line"
            )
        condition = parts[2].lower()
        if condition not in CONDITIONS:
            raise click.BadParameter(
                f"{parts[2]!r} is not one of {', '.join(CONDITIONS)}", param_hint="line"
            )
        where = parts[3] if len(parts) == 4 else None
        if condition == "resellable":
            where = where or restock_at
        lines.append(
            InspectedLine(
                sku=parts[0], quantity=int(parts[1]), condition=condition, restock_location=where
            )
        )
    return lines


@click.group()
def returns() -> None:
    """Returns and refunds: request, approve or deny, label, receive and inspect, refund."""


@returns.command("list")
@click.option("--order", "order_id", default=None, help="one order's returns only")
def returns_list(order_id: str | None) -> None:
    """The returns on the order log, oldest first."""
    from oms.cli.operators import print_rows
    from oms.returns import listing, read_view

    rows = listing(read_view(get_settings()), order_id=order_id)
    columns = ["order_id", "return_id", "step", "lines", "return_location", "refunded"]
    print_rows(rows, columns, "no returns")


BY = click.option("--by", "by", required=True, help="who does it (recorded as the actor)")


@returns.command("request")
@click.argument("order_id")
@click.option("--line", "lines", multiple=True, help="SKU:QUANTITY[:REASON], repeatable")
@click.option("--reason", default="", help="why the goods come back")
@click.option("--return-id", default=None, help="default: derived from the order and lines")
@click.option(
    "--refund-request",
    "refund_request_id",
    default=None,
    help="a platform's refund request with goods to send back (its lines by default)",
)
@BY
def returns_request(
    order_id: str,
    lines: tuple[str, ...],
    reason: str,
    return_id: str | None,
    refund_request_id: str | None,
    by: str,
) -> None:
    """Request a return of a delivered or completed order."""
    from events.models import utc_now
    from oms.returns import request_return, rules_of

    if not lines and refund_request_id is None:
        raise click.BadParameter("name the lines coming back", param_hint="line")
    _send(
        request_return,
        order_id=order_id,
        lines=_return_lines(lines),
        reason=reason,
        by=by,
        now=utc_now(),
        rules=rules_of(get_settings()),
        return_id=return_id,
        refund_request_id=refund_request_id,
    )


@returns.command("approve")
@click.argument("order_id")
@click.argument("return_id")
@click.option("--to", "to", required=True, help="the location the goods go back to")
@click.option("--note", default=None)
@BY
def returns_approve(order_id: str, return_id: str, to: str, note: str | None, by: str) -> None:
    """Approve a requested return, to a return location."""
    from oms.returns import approve

    _send(approve, order_id=order_id, return_id=return_id, to=to, by=by, note=note)


@returns.command("deny")
@click.argument("order_id")
@click.argument("return_id")
@click.option("--reason", required=True)
@BY
def returns_deny(order_id: str, return_id: str, reason: str, by: str) -> None:
    """Deny a requested return: the order is completed."""
    from oms.returns import deny

    _send(deny, order_id=order_id, return_id=return_id, reason=reason, by=by)


@returns.command("label")
@click.argument("order_id")
@click.argument("return_id")
@BY
def returns_label(order_id: str, return_id: str, by: str) -> None:
    """Buy the return label (customer → return location) from the configured carriers."""
    from events.models import utc_now
    from oms.returns import buy_label
    from oms.shipping import ShippingMisconfigured, carriers_from_settings, load_config

    settings = get_settings()
    try:
        config = load_config(settings.shipping_file)
        carriers = carriers_from_settings(settings, config)
    except ShippingMisconfigured as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(78) from exc
    _send(buy_label, order_id=order_id, return_id=return_id, carriers=carriers, config=config,
          by=by, now=utc_now())  # fmt: skip


@returns.command("receive")
@click.argument("order_id")
@click.argument("return_id")
@click.option("--line", "lines", multiple=True, required=True,
              help="SKU:QUANTITY:resellable|damaged[:LOCATION], repeatable")  # fmt: skip
@click.option("--restock-at", default=None, help="where resellable lines go back into stock")
@BY
def returns_receive(
    order_id: str, return_id: str, lines: tuple[str, ...], restock_at: str | None, by: str
) -> None:
    """The goods received and inspected: resellable back into stock, damaged written off."""
    from oms.returns import receive

    _send(receive, order_id=order_id, return_id=return_id,
          inspected=_inspected_lines(lines, restock_at), by=by)  # fmt: skip


@returns.command("refund")
@click.argument("order_id")
@click.argument("return_id")
@click.option("--shipping/--no-shipping", default=None,
              help="refund the delivery fee (default: the rules decide)")  # fmt: skip
@click.option("--restocking-fee", type=int, default=None,
              help="minor units (default: OMS_RESTOCKING_FEE_BPS of the goods)")  # fmt: skip
@BY
def returns_refund(
    order_id: str, return_id: str, shipping: bool | None, restocking_fee: int | None, by: str
) -> None:
    """Refund an inspected return: the lines' paid amounts, shipping by the rules, less the fee."""
    from oms.returns import refund_of, rules_of

    events = _send(refund_of, order_id=order_id, return_id=return_id, by=by,
                   rules=rules_of(get_settings()), shipping=shipping,
                   restocking_fee=restocking_fee)  # fmt: skip
    refunded = events[0]
    click.echo(f"refund {getattr(refunded, 'amount', 0)} {getattr(refunded, 'currency', '')}")
