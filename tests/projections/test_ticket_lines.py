"""What a kitchen ticket remembers of a revision (projections/orders.py `amended_from`): the
lines before it, only when the lines changed (a new table or party size is no amendment)."""

from __future__ import annotations

from events.models import OrderLine, OrderModified
from projections.orders import Position, fold
from tests.factories import received

WHERE = Position("orders", 0, 0)
NOODLES = OrderLine(sku="NOODLE-BEEF", name="红烧牛肉面", quantity=2, unit_price=3250,
                    options=["少辣"])  # fmt: skip
TEA = OrderLine(sku="TEA-OOLONG", name="冻顶乌龙茶", quantity=1, unit_price=1200)


def revision(n: int, **fields: object) -> OrderModified:
    order = received(table="B07", covers=2, lines=[NOODLES], total=6500, delivery_fee=0)
    base = order.model_dump(exclude={"event_id", "sequence"})
    return OrderModified.model_validate(
        base | {"event_id": f"m-{n}", "sequence": n + 1, "revision": n} | fields
    )


def test_only_a_change_of_lines_is_an_amendment_and_it_keeps_the_lines_before() -> None:
    first = fold(None, received(table="B07", covers=2, lines=[NOODLES], total=6500,
                                delivery_fee=0), WHERE)  # fmt: skip
    assert first is not None and first.row["amended_from"] == []
    moved = fold(first.row, revision(1, table="C02", covers=4), WHERE)
    assert moved is not None
    assert (moved.row["table_name"], moved.row["covers"], moved.row["amended_from"]) == (
        "C02", 4, [])  # fmt: skip
    more = fold(moved.row, revision(2, lines=[NOODLES, TEA], total=7700), WHERE)
    assert more is not None
    assert more.row["amended_from"] == ["2× 红烧牛肉面 (少辣)"]
    assert more.row["line_options"] == ["少辣", ""]
