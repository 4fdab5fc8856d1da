from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.models import (
    Address,
    Location,
    OpeningHours,
    OrderLine,
    OrderReceived,
    Product,
)
from streams.catalogue import Catalogue, distance_m
from streams.routing import NoRoute, NoRouteCode, Route, route, route_event
from tests.factories import received

NOON = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai, a Wednesday
NIGHT = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)  # 23:00 in Shanghai
HOME = (31.2300, 121.4700)
KM = 1 / 111.2  # degrees of latitude per kilometre, near enough for tests
DAILY = [OpeningHours(weekday=d, opens="10:00", closes="22:00") for d in range(7)]
DISHES = [Product(sku="DUMPLING-12", name="水饺", stock_tracked=False)]
RETAIL = [Product(sku="TEA-GIFT-M", name="礼盒"), Product(sku="MUG-CERAMIC", name="杯")]


def store(location_id: str, km_north: float, **overrides: object) -> Location:
    fields: dict[str, object] = dict(
        id=location_id, name=location_id, latitude=HOME[0] + km_north * KM, longitude=HOME[1],
        timezone="Asia/Shanghai", capabilities=["delivery", "pickup", "dine_in"],
        delivery_radius_m=5000, opening_hours=DAILY, slot_minutes=15, capacity_per_slot=60,
        cost_per_order=300, cost_per_km=150,
    )  # fmt: skip
    fields.update(overrides)
    return Location.model_validate(fields)


def warehouse(location_id: str, km_north: float, **overrides: object) -> Location:
    fields: dict[str, object] = dict(
        id=location_id, name=location_id, kind="warehouse", latitude=HOME[0] + km_north * KM,
        longitude=HOME[1], capabilities=["ship"], cost_per_order=800, cost_per_km=2,
    )  # fmt: skip
    fields.update(overrides)
    return Location.model_validate(fields)


def catalogue(*locations: Location) -> Catalogue:
    return Catalogue(
        products={p.sku: p for p in DISHES + RETAIL}, locations={loc.id: loc for loc in locations}
    )


def stock(table: Mapping[tuple[str, str], int]) -> Callable[[str, str], int]:
    return lambda sku, location: table.get((sku, location), 0)


def no_stock_needed(sku: str, location: str) -> int:
    raise AssertionError(f"asked for stock of {sku}@{location}")


def at_home(**overrides: object) -> OrderReceived:
    address = Address(text="88 Nanjing Rd", latitude=HOME[0], longitude=HOME[1])
    return received(**{"address": address, **overrides})


def retail(mode: str, *quantities: tuple[str, int], **overrides: object) -> OrderReceived:
    lines = [OrderLine(sku=sku, name=sku, quantity=q, unit_price=100) for sku, q in quantities]
    total = sum(q * 100 for _, q in quantities)
    return at_home(mode=mode, lines=lines, total=total, delivery_fee=0, **overrides)


def routed(
    order: OrderReceived,
    cat: Catalogue,
    *,
    available: Callable[[str, str], int] = no_stock_needed,
    load: Mapping[str, int] | None = None,
    now: datetime = NOON,
    exclude: frozenset[str] = frozenset(),
) -> Route:
    result = route(
        order, catalogue=cat, available=available, load=load or {}, now=now, exclude=exclude
    )
    assert isinstance(result, Route), result
    return result


def refused(
    order: OrderReceived,
    cat: Catalogue,
    *,
    available: Callable[[str, str], int] = no_stock_needed,
    load: Mapping[str, int] | None = None,
    now: datetime = NOON,
) -> NoRoute:
    result = route(order, catalogue=cat, available=available, load=load or {}, now=now)
    assert isinstance(result, NoRoute), result
    return result


def placement(result: Route) -> list[tuple[str, list[tuple[str, int]]]]:
    return [(g.location, [(line.sku, line.quantity) for line in g.lines]) for g in result.groups]


# ---------------------------------------------------------------- filters and ranking


def test_delivery_goes_to_the_nearest_open_store_with_capacity() -> None:
    cat = catalogue(store("S01", 0.5), store("S02", 1.5), store("S03", 2.5))
    result = routed(at_home(), cat, load={"S01": 60, "S02": 59})
    assert placement(result) == [("S02", [("DUMPLING-12", 2)])]
    assert result.location == "S02"
    assert result.reasons[0] == "S02: nearest of 2 candidates (1.5 km)"
    assert "S01 skipped: over capacity 60/60" in result.reasons
    group = result.groups[0]
    assert group.distance_m == pytest.approx(1500, abs=5)
    assert group.cost == 300 + round(150 * group.distance_m / 1000)  # type: ignore[operator]


EVENINGS = [OpeningHours(weekday=2, opens="17:00", closes="22:00")]


@pytest.mark.parametrize(
    ("overrides", "load", "reason"),
    [
        ({"paused": True}, 0, "S01 skipped: paused"),
        ({"opening_hours": EVENINGS}, 0, "S01 skipped: closed"),
        ({}, 60, "S01 skipped: over capacity 60/60"),
        ({"delivery_radius_m": 400}, 0, "S01 skipped: 0.5 km beyond 0.4 km radius"),
        ({"capabilities": ["pickup"]}, 0, None),  # not a candidate at all: not listed
    ],
)
def test_each_filter_skips_the_nearer_store_and_says_why(
    overrides: dict[str, object], load: int, reason: str | None
) -> None:
    cat = catalogue(store("S01", 0.5, **overrides), store("S02", 3.0))
    result = routed(at_home(), cat, load={"S01": load})
    assert result.location == "S02"
    assert [r for r in result.reasons if r.startswith("S01")] == ([reason] if reason else [])


@pytest.mark.parametrize("overrides", [{"opening_hours": []}, {"capacity_per_slot": 0}])
def test_no_hours_means_always_open_and_zero_capacity_means_unlimited(
    overrides: dict[str, object],
) -> None:
    cat = catalogue(store("S01", 0.5, **overrides), store("S02", 3.0))
    load = {"S01": 10_000} if "capacity_per_slot" in overrides else {}
    now = NOON if load else NIGHT
    assert routed(at_home(), cat, load=load, now=now).location == "S01"


def test_an_excluded_location_is_skipped() -> None:
    cat = catalogue(store("S01", 0.5), store("S02", 1.5))
    result = routed(at_home(), cat, exclude=frozenset({"S01"}))
    assert result.location == "S02"
    assert "S01 skipped: excluded" in result.reasons


def test_store_beyond_its_radius_is_skipped_with_the_distances() -> None:
    cat = catalogue(store("S01", 1.0), store("S05", 7.9))
    result = routed(at_home(), cat)
    assert result.location == "S01"
    assert result.reasons == [
        "S01: the only candidate (1.0 km)",
        "S05 skipped: 7.9 km beyond 5.0 km radius",
    ]


def test_delivery_without_coordinates_is_not_filtered_by_distance_and_says_so() -> None:
    cat = catalogue(store("S01", 20.0, cost_per_order=200), store("S02", 1.0))
    result = routed(received(address=Address(text="somewhere")), cat)
    assert result.location == "S01"  # cheapest, since no distance is known
    assert result.groups[0].distance_m is None and result.groups[0].cost == 200
    assert "address has no coordinates: delivery radius not checked" in result.reasons


def test_equal_distance_is_decided_by_cost_then_id() -> None:
    cat = catalogue(store("S03", 1.0, cost_per_order=500), store("S02", 1.0), store("S01", 1.0))
    assert routed(at_home(), cat).location == "S01"
    cat = catalogue(store("S01", 1.0, cost_per_order=500), store("S02", 1.0))
    assert routed(at_home(), cat).location == "S02"


def test_pickup_goes_to_the_store_the_customer_chose_even_if_another_is_nearer() -> None:
    cat = catalogue(store("S01", 0.5), store("S03", 3.0, aliases=["mt-778"]))
    result = routed(at_home(mode="pickup", location_hint="mt-778"), cat)
    assert result.location == "S03"
    assert result.reasons[0].startswith("S03: the store the customer chose")


def test_pickup_without_a_chosen_store_goes_to_the_nearest() -> None:
    cat = catalogue(store("S01", 0.5), store("S03", 3.0))
    assert routed(at_home(mode="dine_in"), cat).location == "S01"


def test_platform_delivery_is_cooked_at_the_store_it_was_placed_at() -> None:
    cat = catalogue(store("S01", 0.5), store("S03", 3.0))
    assert routed(at_home(location_hint="S03"), cat).location == "S03"


def test_delivery_with_an_unknown_store_goes_to_the_nearest() -> None:
    cat = catalogue(store("S01", 0.5), store("S03", 3.0))
    assert routed(at_home(location_hint="poi-77"), cat).location == "S01"


def test_made_to_order_and_unknown_skus_need_no_stock() -> None:
    lines = [
        OrderLine(sku="DUMPLING-12", name="水饺", quantity=2, unit_price=2800),
        OrderLine(sku="红烧肉", name="红烧肉", quantity=1, unit_price=500),
    ]
    result = routed(at_home(lines=lines, total=6600), catalogue(store("S01", 1.0)))
    assert placement(result) == [("S01", [("DUMPLING-12", 2), ("红烧肉", 1)])]


def test_lines_of_one_sku_are_counted_together() -> None:
    order = retail("delivery", ("TEA-GIFT-M", 2), ("TEA-GIFT-M", 2))
    cat = catalogue(store("S01", 0.5), store("S02", 1.0))
    table = {("TEA-GIFT-M", "S01"): 3, ("TEA-GIFT-M", "S02"): 4}
    result = routed(order, cat, available=stock(table))
    assert placement(result) == [("S02", [("TEA-GIFT-M", 4)])]
    assert "S01 skipped: not enough stock (TEA-GIFT-M 3 of 4)" in result.reasons


def test_delivery_is_not_split_when_no_store_holds_everything() -> None:
    order = retail("delivery", ("TEA-GIFT-M", 2), ("MUG-CERAMIC", 2))
    cat = catalogue(store("S01", 0.5), store("S02", 1.0))
    table = {("TEA-GIFT-M", "S01"): 2, ("MUG-CERAMIC", "S02"): 2, ("MUG-CERAMIC", "S01"): 1}
    result = refused(order, cat, available=stock(table))
    assert result.code is NoRouteCode.OUT_OF_STOCK
    # The store that comes closest: S01, one mug short.
    assert [(m.sku, m.quantity, m.location) for m in result.missing] == [("MUG-CERAMIC", 1, "S01")]


# ---------------------------------------------------------------- splitting


def test_ship_order_goes_to_one_warehouse_when_one_holds_everything() -> None:
    order = retail("ship", ("TEA-GIFT-M", 5))
    cat = catalogue(warehouse("WH-A", 10), warehouse("WH-B", 1000))
    table = {("TEA-GIFT-M", "WH-A"): 4, ("TEA-GIFT-M", "WH-B"): 5}
    result = routed(order, cat, available=stock(table))
    assert placement(result) == [("WH-B", [("TEA-GIFT-M", 5)])]


def test_ship_order_is_split_over_fewest_warehouses_when_none_holds_everything() -> None:
    order = retail("ship", ("TEA-GIFT-M", 5), ("MUG-CERAMIC", 2))
    cat = catalogue(warehouse("WH-1", 10), warehouse("WH-2", 20), warehouse("WH-3", 900))
    table = {
        ("TEA-GIFT-M", "WH-1"): 3,
        ("MUG-CERAMIC", "WH-2"): 2,
        ("TEA-GIFT-M", "WH-3"): 5,
    }
    result = routed(order, cat, available=stock(table))
    # The three nearest together would also do; two are fewer.
    assert placement(result) == [("WH-2", [("MUG-CERAMIC", 2)]), ("WH-3", [("TEA-GIFT-M", 5)])]
    assert result.location == "WH-3"  # most units
    assert result.reasons[0] == "split: no single location has all of TEA-GIFT-M x5, MUG-CERAMIC x2"


def test_split_of_equal_size_prefers_the_shorter_total_distance() -> None:
    order = retail("ship", ("TEA-GIFT-M", 5))
    cat = catalogue(warehouse("WH-1", 10), warehouse("WH-2", 500), warehouse("WH-3", 20))
    table = {("TEA-GIFT-M", "WH-1"): 3, ("TEA-GIFT-M", "WH-2"): 3, ("TEA-GIFT-M", "WH-3"): 2}
    result = routed(order, cat, available=stock(table))
    assert placement(result) == [("WH-1", [("TEA-GIFT-M", 3)]), ("WH-3", [("TEA-GIFT-M", 2)])]
    assert result.reasons[0] == "split: no single location has TEA-GIFT-M x5"
    assert result.reasons[1].startswith("WH-1 + WH-3: fewest locations")


def test_a_line_is_divided_nearest_first_and_its_units_add_up() -> None:
    order = retail("ship", ("TEA-GIFT-M", 5), ("DUMPLING-12", 1))
    cat = catalogue(warehouse("WH-1", 10), warehouse("WH-2", 20))
    table = {("TEA-GIFT-M", "WH-1"): 3, ("TEA-GIFT-M", "WH-2"): 4}
    result = routed(order, cat, available=stock(table))
    assert placement(result) == [
        ("WH-1", [("TEA-GIFT-M", 3), ("DUMPLING-12", 1)]),
        ("WH-2", [("TEA-GIFT-M", 2)]),
    ]
    assert result.location == "WH-1"


def test_ship_order_without_coordinates_is_split_by_cost() -> None:
    order = retail("ship", ("TEA-GIFT-M", 4), address=Address(text="Beijing"))
    cat = catalogue(
        warehouse("WH-1", 0, cost_per_order=900), warehouse("WH-2", 0), warehouse("WH-3", 0)
    )
    table = {("TEA-GIFT-M", "WH-1"): 2, ("TEA-GIFT-M", "WH-2"): 2, ("TEA-GIFT-M", "WH-3"): 2}
    result = routed(order, cat, available=stock(table))
    assert [g.location for g in result.groups] == ["WH-2", "WH-3"]
    assert "lowest total cost (1600)" in result.reasons[1]


def test_ship_order_short_everywhere_lists_the_missing_units() -> None:
    order = retail("ship", ("TEA-GIFT-M", 5), ("MUG-CERAMIC", 1))
    cat = catalogue(warehouse("WH-1", 10), warehouse("WH-2", 20))
    table = {("TEA-GIFT-M", "WH-1"): 1, ("TEA-GIFT-M", "WH-2"): 2, ("MUG-CERAMIC", "WH-2"): 1}
    result = refused(order, cat, available=stock(table))
    assert result.code is NoRouteCode.OUT_OF_STOCK
    assert [(m.sku, m.quantity, m.location) for m in result.missing] == [("TEA-GIFT-M", 2, None)]


# ---------------------------------------------------------------- no route


@pytest.mark.parametrize(
    ("order", "locations", "now", "load", "code"),
    [
        (at_home(lines=[], total=500), [store("S01", 1)], NOON, {}, NoRouteCode.NO_LINES),
        (at_home(mode="pickup", location_hint="S09"), [store("S01", 1)], NOON, {},
         NoRouteCode.UNKNOWN_LOCATION),
        (at_home(mode="pickup", location_hint="WH-1"), [store("S01", 1), warehouse("WH-1", 1)],
         NOON, {}, NoRouteCode.NO_CAPABLE_LOCATION),
        (at_home(mode="ship"), [store("S01", 1)], NOON, {}, NoRouteCode.NO_CAPABLE_LOCATION),
        (at_home(), [store("S01", 6), store("S02", 9)], NOON, {}, NoRouteCode.OUT_OF_RANGE),
        (at_home(), [store("S01", 1), store("S02", 2)], NIGHT, {}, NoRouteCode.CLOSED),
        (at_home(), [store("S01", 1, paused=True), store("S02", 2)], NOON, {"S02": 60},
         NoRouteCode.ALL_PAUSED_OR_FULL),
        (at_home(mode="dine_in", location_hint="S01"), [store("S01", 1, paused=True),
         store("S02", 2)], NOON, {}, NoRouteCode.ALL_PAUSED_OR_FULL),
    ],
)  # fmt: skip
def test_no_route_names_why(
    order: OrderReceived,
    locations: list[Location],
    now: datetime,
    load: dict[str, int],
    code: NoRouteCode,
) -> None:
    result = refused(order, catalogue(*locations), load=load, now=now)
    assert result.code is code
    assert result.message and result.missing == []


def test_no_route_code_is_the_stage_closest_to_success() -> None:
    # One store is out of range, the other in range but closed: the order waits on opening.
    cat = catalogue(store("S01", 8), store("S02", 2))
    result = refused(at_home(), cat, now=NIGHT)
    assert result.code is NoRouteCode.CLOSED
    assert result.reasons == ["S01 skipped: 8.0 km beyond 5.0 km radius", "S02 skipped: closed"]


# ---------------------------------------------------------------- the event


def test_routed_event_id_follows_from_cause_and_attempt() -> None:
    order = at_home()
    result = routed(order, catalogue(store("S01", 1)))
    first = route_event(order, result, sequence=4, causation_id="c-1", attempt=1, now=NOON)
    again = route_event(order, result, sequence=4, causation_id="c-1", attempt=1, now=NIGHT)
    retry = route_event(order, result, sequence=6, causation_id="c-1", attempt=2, now=NOON)
    assert first.event_id == again.event_id != retry.event_id
    assert (first.location, first.groups, first.reasons) == ("S01", result.groups, result.reasons)
    envelope = (first.order_id, first.sequence, first.causation_id, first.correlation_id)
    assert envelope == (order.order_id, 4, "c-1", order.correlation_id)
    assert (first.actor.kind, first.actor.id) == ("system", "routing")


# ---------------------------------------------------------------- property


SKUS = ["TEA-GIFT-M", "MUG-CERAMIC"]


@st.composite
def ship_cases(draw: st.DrawFn) -> tuple[OrderReceived, Catalogue, dict[tuple[str, str], int]]:
    count = draw(st.integers(2, 5))
    warehouses = [warehouse(f"WH-{i}", draw(st.integers(0, 2000))) for i in range(count)]
    line = st.tuples(st.sampled_from(SKUS), st.integers(1, 8))
    quantities = draw(st.lists(line, min_size=1, max_size=3))
    table = {(sku, w.id): draw(st.integers(-1, 6)) for sku in SKUS for w in warehouses}
    return retail("ship", *quantities), catalogue(*warehouses), table


def covers(ids: tuple[str, ...], need: dict[str, int], table: dict[tuple[str, str], int]) -> bool:
    return all(sum(max(0, table[sku, i]) for i in ids) >= q for sku, q in need.items())


@settings(max_examples=300, deadline=None)
@given(ship_cases())
def test_a_route_covers_the_order_exactly_within_stock_over_fewest_nearest_locations(
    case: tuple[OrderReceived, Catalogue, dict[tuple[str, str], int]],
) -> None:
    order, cat, table = case
    need: dict[str, int] = {}
    for line in order.lines:
        need[line.sku] = need.get(line.sku, 0) + line.quantity
    ids = tuple(cat.locations)
    result = route(order, catalogue=cat, available=stock(table), load={}, now=NOON)
    if isinstance(result, NoRoute):
        assert result.code is NoRouteCode.OUT_OF_STOCK
        assert not covers(ids, need, table)
        return
    served: dict[str, int] = {}
    for group in result.groups:
        assert group.lines, "every location in a split serves something"
        for part in group.lines:
            assert part.location == group.location and part.quantity > 0
            assert part.quantity <= table[part.sku, group.location]
            served[part.sku] = served.get(part.sku, 0) + part.quantity
    assert served == need
    assert result.location in {g.location for g in result.groups}
    used = len(result.groups)
    assert not any(covers(c, need, table) for k in range(1, used) for c in combinations(ids, k))

    def total(c: tuple[str, ...]) -> int:
        return sum(distance_m(*HOME, cat.locations[i].latitude, HOME[1]) for i in c)

    chosen = total(tuple(g.location for g in result.groups))
    assert all(total(c) >= chosen for c in combinations(ids, used) if covers(c, need, table))


def test_a_line_sold_by_weight_wants_its_exact_measure_from_the_stock_ledger() -> None:
    """1.5 kg of loose tea draws 1500000 millionths of a kilogram: a warehouse with 1.4 kg is
    passed over for one with 1.5 kg, though both hold 2 whole kilograms' worth when rounded."""
    tea = OrderLine(
        sku="TEA-LOOSE", name="散茶", quantity=2, unit_price=20_000, unit="kg",
        quantity_millionths=1_500_000,
    )  # fmt: skip
    order = at_home(mode="ship", lines=[tea], total=30_000, delivery_fee=0)
    base = catalogue(warehouse("WH-1", 10), warehouse("WH-2", 20))
    loose = Product(sku="TEA-LOOSE", name="散茶", unit="kg")
    cat = Catalogue(products={**base.products, loose.sku: loose}, locations=base.locations)
    table = {("TEA-LOOSE", "WH-1"): 1_400_000, ("TEA-LOOSE", "WH-2"): 1_500_000}
    result = routed(order, cat, available=stock(table))
    assert placement(result) == [("WH-2", [("TEA-LOOSE", 1_500_000)])]
    assert refused(order, cat, available=stock({("TEA-LOOSE", "WH-1"): 1_499_999})).code == (
        NoRouteCode.OUT_OF_STOCK
    )
