"""Consolidation (streams/consolidation.py): which orders share a parcel."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from events.shipping import Parcel, Party, ShipmentRequest, Temperature
from streams.consolidation import Candidate, consolidate, merged_request, split_cost

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
W01 = Party(name="W01", phone="1", city="杭州市", street="仓库路 1 号", province="浙江省")
ALICE = Party(
    name="张三", phone="13800000000", city="深圳市", street="科技园 1 栋", province="广东省"
)
BOB = Party(
    name="李四", phone="13900000000", city="深圳市", street="科技园 2 栋", province="广东省"
)


def candidate(
    order_id: str,
    *,
    to: Party = ALICE,
    minutes: float = 0,
    weight_g: int = 1000,
    temperature: Temperature = Temperature.AMBIENT,
    cod: int | None = None,
) -> Candidate:
    request = ShipmentRequest(
        reference=f"{order_id}@W01",
        sender=W01,
        recipient=to,
        parcels=[Parcel(weight_g=weight_g, length_mm=300, width_mm=200, height_mm=150)],
        temperature=temperature,
        declared_value=5000,
        cod_amount=cod,
    )
    return Candidate(order_id, request, T0 + timedelta(minutes=minutes))


def ids(groups: list[list[Candidate]]) -> list[list[str]]:
    return [[c.order_id for c in group] for group in groups]


def test_one_customers_orders_to_one_address_within_the_window_share_a_parcel() -> None:
    orders = [
        candidate("a1"),
        candidate("b1", to=BOB, minutes=5),
        candidate("a2", minutes=20),
        candidate("a3", minutes=90),  # past the hour from a1: a parcel of its own
    ]
    groups = consolidate(orders, within=timedelta(hours=1))
    assert ids(groups) == [["a1", "a2"], ["b1"], ["a3"]]
    merged = merged_request(groups[0])
    assert merged.reference == "a1@W01"  # the first order's: stable if another joins later
    assert merged.weight_g == 2000 and len(merged.parcels) == 1
    assert merged.declared_value == 10000


def test_cold_goods_cash_on_delivery_and_no_window_ship_apart() -> None:
    orders = [
        candidate("a1"),
        candidate("a2", minutes=1, temperature=Temperature.CHILLED),
        candidate("a3", minutes=2, cod=9900),
        candidate("a4", minutes=3),
    ]
    assert ids(consolidate(orders, within=timedelta(hours=1))) == [
        ["a1", "a4"],
        ["a2"],
        ["a3"],
    ]
    assert ids(consolidate(orders, within=timedelta(0))) == [["a1"], ["a2"], ["a3"], ["a4"]]


def test_the_cost_is_split_by_weight_in_whole_units() -> None:
    assert split_cost(1000, [1000, 1000]) == [500, 500]
    assert split_cost(1001, [1000, 2000]) == [334, 667]
    assert split_cost(999, [0, 0, 0]) == [333, 333, 333]


@given(st.integers(0, 10**9), st.lists(st.integers(0, 50_000), min_size=1, max_size=12))
def test_a_split_cost_adds_up_and_no_share_is_negative(total: int, weights: list[int]) -> None:
    shares = split_cost(total, weights)
    assert sum(shares) == total and all(share >= 0 for share in shares)
    assert len(shares) == len(weights)
