"""Routing: a pure decision of where an accepted order is fulfilled → `Route` or `NoRoute`.

Locations go through a funnel — capability, delivery radius, opening hours, then paused /
excluded / full — and the survivors are ranked by distance, cost and id. When the funnel empties,
the `NoRoute` code names the stage that removed the last candidates, so it is the reason closest
to success (an address in range of a closed store is CLOSED, not OUT_OF_RANGE).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from itertools import combinations

from events.models import (
    Actor,
    ActorKind,
    FulfilmentGroup,
    LineQuantity,
    Location,
    OrderMode,
    OrderReceived,
    OrderRouted,
    deterministic_id,
    follow_up,
)
from streams.catalogue import Catalogue, distance_m, is_open

ACTOR = Actor(kind=ActorKind.SYSTEM, id="routing")


class NoRouteCode(StrEnum):
    """Why no location can take the order, in the order the funnel checks."""

    NO_LINES = "NO_LINES"  # nothing with a positive quantity to fulfil
    UNKNOWN_LOCATION = "UNKNOWN_LOCATION"  # the pickup / dine-in store is not in the catalogue
    NO_CAPABLE_LOCATION = "NO_CAPABLE_LOCATION"  # no (chosen) location offers the order's mode
    OUT_OF_RANGE = "OUT_OF_RANGE"  # the address is beyond every delivering store's radius
    CLOSED = "CLOSED"  # every location left is closed now
    ALL_PAUSED_OR_FULL = "ALL_PAUSED_OR_FULL"  # every one left is paused, excluded or full
    OUT_OF_STOCK = "OUT_OF_STOCK"  # no location (nor, for SHIP, a split) has the stock


@dataclass(frozen=True)
class Route:
    """Where the order goes: one group per location, `location` the one with most units."""

    groups: list[FulfilmentGroup]
    location: str
    reasons: list[str]


@dataclass(frozen=True)
class NoRoute:
    """No location can take the order now; `missing` holds the units short for OUT_OF_STOCK.
    `code` is a `NoRouteCode` (a str, so it goes straight into a `RejectionReason`)."""

    code: str
    message: str
    missing: list[LineQuantity] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Candidate:
    location: Location
    distance_m: int | None
    cost: int

    @property
    def id(self) -> str:
        return self.location.id

    @property
    def rank(self) -> tuple[int, int, str]:
        return (self.distance_m or 0, self.cost, self.location.id)


def route(
    order: OrderReceived,
    *,
    catalogue: Catalogue,
    available: Callable[[str, str], int],
    load: Mapping[str, int],
    now: datetime,
    exclude: frozenset[str] = frozenset(),
) -> Route | NoRoute:
    """Route `order` to the best single location that can serve every line, or — SHIP orders
    only — split it over the fewest locations. Delivery, pickup and dine-in are not split: a
    meal is cooked and handed over together and a counter order is collected in one visit, so
    half of one is a failed order. `available(sku, location)` is asked only for stock-tracked
    products; `load` counts orders already routed to each location in the current slot."""
    wanted = _wanted(order)
    if not wanted:
        return NoRoute(NoRouteCode.NO_LINES, "the order has no line with a positive quantity")
    chosen: Location | None = None
    if order.mode is OrderMode.DELIVERY:
        # A platform's delivery order is placed at one store, whose courier comes for it;
        # without a known store (web shop, phone) the nearest one that can deliver cooks it.
        chosen = catalogue.location_for(order.location_hint)
    elif order.mode in (OrderMode.PICKUP, OrderMode.DINE_IN) and order.location_hint is not None:
        chosen = catalogue.location_for(order.location_hint)
        if chosen is None:
            return NoRoute(
                NoRouteCode.UNKNOWN_LOCATION,
                f"store {order.location_hint!r} is not in the catalogue",
            )
    pool = [chosen] if chosen else sorted(catalogue.locations.values(), key=lambda loc: loc.id)
    capable = [loc for loc in pool if order.mode in loc.capabilities]
    if not capable:
        who = chosen.id if chosen else "no location"
        verb = "does not offer" if chosen else "offers"
        return NoRoute(NoRouteCode.NO_CAPABLE_LOCATION, f"{who} {verb} {order.mode.value}")

    point = _coordinates(order)
    notes: list[str] = []
    if order.mode is OrderMode.DELIVERY and point is None:
        notes.append("address has no coordinates: delivery radius not checked")
    skips: list[str] = []
    survivors = capable
    for code, message, check in _funnel(order, point=point, load=load, now=now, exclude=exclude):
        kept = []
        for loc in survivors:
            why = check(loc)
            if why is None:
                kept.append(loc)
            else:
                skips.append(f"{loc.id} skipped: {why}")
        if not kept:
            return NoRoute(code, message, reasons=notes + skips)
        survivors = kept

    candidates = sorted((_candidate(loc, point) for loc in survivors), key=lambda c: c.rank)
    tracked = {
        sku: qty
        for sku, qty in wanted.items()
        if (product := catalogue.products.get(sku)) is not None and product.stock_tracked
    }
    stock = {(sku, c.id): max(0, available(sku, c.id)) for sku in tracked for c in candidates}
    short = {c.id: _shortfall(tracked, stock, c.id) for c in candidates}
    whole = [c for c in candidates if not short[c.id]]
    stock_skips = [
        f"{c.id} skipped: not enough stock ({_describe_short(short[c.id], tracked)})"
        for c in candidates
        if short[c.id]
    ]
    if whole:
        best = whole[0]
        why = _single_reason(best, count=len(whole), chosen=chosen is not None)
        lines = [LineQuantity(sku=s, quantity=q, location=best.id) for s, q in wanted.items()]
        group = _group(best, lines)
        return Route(
            groups=[group], location=best.id, reasons=[why, *notes, *sorted(skips + stock_skips)]
        )
    if order.mode is not OrderMode.SHIP:
        # Not split (see above): report what the closest location lacks.
        closest = min(candidates, key=lambda c: (sum(short[c.id].values()), c.rank))
        missing = [
            LineQuantity(sku=s, quantity=q, location=closest.id)
            for s, q in short[closest.id].items()
        ]
        return NoRoute(
            NoRouteCode.OUT_OF_STOCK,
            f"no location that offers {order.mode.value} has every line in stock "
            f"({order.mode.value} orders are not split)",
            missing=missing,
            reasons=notes + sorted(skips + stock_skips),
        )
    return _split(
        wanted,
        tracked=tracked,
        stock=stock,
        candidates=candidates,
        notes=notes,
        skips=skips,
        stock_skips=stock_skips,
    )


def route_event(
    order: OrderReceived,
    route: Route,
    *,
    sequence: int,
    causation_id: str,
    attempt: int,
    now: datetime,
) -> OrderRouted:
    """`OrderRouted` for `route`; the id follows from the cause and the routing attempt, so a
    redelivered input re-routes to the identical event while a re-route gets a new one."""
    envelope = follow_up(order, sequence=sequence, causation_id=causation_id, actor=ACTOR, now=now)
    return OrderRouted(
        event_id=deterministic_id(causation_id, "OrderRouted", str(attempt)),
        location=route.location,
        groups=route.groups,
        reasons=route.reasons,
        **envelope,
    )


_Check = Callable[[Location], str | None]


def _funnel(
    order: OrderReceived,
    *,
    point: tuple[float, float] | None,
    load: Mapping[str, int],
    now: datetime,
    exclude: frozenset[str],
) -> list[tuple[NoRouteCode, str, _Check]]:
    """The filters after capability, from the most permanent to the most transient."""

    def out_of_range(loc: Location) -> str | None:
        if order.mode is not OrderMode.DELIVERY or point is None:
            return None
        metres = distance_m(point[0], point[1], loc.latitude, loc.longitude)
        if metres <= loc.delivery_radius_m:
            return None
        return f"{_km(metres)} beyond {_km(loc.delivery_radius_m)} radius"

    def closed(loc: Location) -> str | None:
        return None if is_open(loc, now) else "closed"

    def unavailable(loc: Location) -> str | None:
        if loc.paused:
            return "paused"
        if loc.id in exclude:
            return "excluded"
        taken = load.get(loc.id, 0)
        if loc.capacity_per_slot and taken >= loc.capacity_per_slot:
            return f"over capacity {taken}/{loc.capacity_per_slot}"
        return None

    mode = order.mode.value
    return [
        (
            NoRouteCode.OUT_OF_RANGE,
            "the address is beyond the delivery radius of every location that delivers",
            out_of_range,
        ),
        (NoRouteCode.CLOSED, f"every location that could take the {mode} order is closed", closed),
        (
            NoRouteCode.ALL_PAUSED_OR_FULL,
            f"every open location that could take the {mode} order is paused, excluded or full",
            unavailable,
        ),
    ]


def _split(
    wanted: dict[str, int],
    *,
    tracked: dict[str, int],
    stock: dict[tuple[str, str], int],
    candidates: list[_Candidate],
    notes: list[str],
    skips: list[str],
    stock_skips: list[str],
) -> Route | NoRoute:
    """The fewest locations that together hold every line, then the least total distance,
    then the least total cost. Exhaustive over combinations of the candidates holding any
    needed stock, smallest first — exact, and cheap for the handful of locations that ship."""
    shortfall = {
        sku: need - total
        for sku, need in tracked.items()
        if (total := sum(stock[sku, c.id] for c in candidates)) < need
    }
    if shortfall:
        return NoRoute(
            NoRouteCode.OUT_OF_STOCK,
            "not even all locations together have every line in stock",
            missing=[LineQuantity(sku=s, quantity=q) for s, q in shortfall.items()],
            reasons=notes + sorted(skips + stock_skips),
        )
    holders = [c for c in candidates if any(stock[sku, c.id] for sku in tracked)]

    def covers(combo: Sequence[_Candidate]) -> bool:
        return all(sum(stock[sku, c.id] for c in combo) >= need for sku, need in tracked.items())

    def key(combo: Sequence[_Candidate]) -> tuple[int, int, tuple[str, ...]]:
        return (
            sum(c.distance_m or 0 for c in combo),
            sum(c.cost for c in combo),
            tuple(c.id for c in combo),
        )

    best = _smallest_cover(holders, covers=covers, key=key)
    units: dict[str, dict[str, int]] = {c.id: {} for c in best}
    for sku, need in wanted.items():
        if sku in tracked:
            shares = _allocate(need, [(c.id, stock[sku, c.id]) for c in best])
        else:
            shares = {best[0].id: need}  # made to order or unknown: no stock to consult
        for loc_id, quantity in shares.items():
            units[loc_id][sku] = quantity
    groups = [
        _group(c, [LineQuantity(sku=s, quantity=q, location=c.id) for s, q in units[c.id].items()])
        for c in best
    ]
    primary = max(groups, key=lambda g: sum(line.quantity for line in g.lines))
    names = " + ".join(c.id for c in best)
    distance, cost, _ = key(best)
    then = (
        f"shortest total distance ({_km(distance)})"
        if best[0].distance_m is not None
        else f"lowest total cost ({cost})"
    )
    return Route(
        groups=groups,
        location=primary.location,
        reasons=[
            f"split: {_describe_unheld(tracked, stock, candidates)}",
            f"{names}: fewest locations that together hold every line ({len(best)}), then {then}",
            *notes,
            *sorted(skips),
        ],
    )


def _smallest_cover(
    holders: list[_Candidate],
    *,
    covers: Callable[[Sequence[_Candidate]], bool],
    key: Callable[[Sequence[_Candidate]], tuple[int, int, tuple[str, ...]]],
) -> tuple[_Candidate, ...]:
    """The best (by `key`) of the smallest combinations of `holders` that cover the order."""
    for size in range(2, len(holders) + 1):
        fits = [combo for combo in combinations(holders, size) if covers(combo)]
        if fits:
            return min(fits, key=key)
    # All holders together cover the order (there is no shortfall), so a size always fits.
    raise AssertionError("split called for an order the locations cannot cover")


def _allocate(need: int, stock: list[tuple[str, int]]) -> dict[str, int]:
    """`need` units over the fewest of the (ranked) locations, nearest filled first."""
    for size in range(1, len(stock) + 1):
        for subset in combinations(stock, size):
            if sum(units for _, units in subset) < need:
                continue
            shares: dict[str, int] = {}
            left = need
            for loc_id, units in subset:
                shares[loc_id] = min(units, left)
                left -= shares[loc_id]
            return shares
    raise AssertionError("allocation called for a quantity the locations do not hold")


def _wanted(order: OrderReceived) -> dict[str, int]:
    """Units per SKU in its stock ledger's terms (items, or millionths of a measure:
    `OrderLine.stock_quantity`), in order of first appearance: lines of one SKU that differ
    only in options draw on the same stock."""
    wanted: dict[str, int] = {}
    for line in order.lines:
        if line.quantity > 0:
            wanted[line.sku] = wanted.get(line.sku, 0) + line.stock_quantity
    return wanted


def _coordinates(order: OrderReceived) -> tuple[float, float] | None:
    address = order.address
    if address is None or address.latitude is None or address.longitude is None:
        return None
    return (address.latitude, address.longitude)


def _candidate(location: Location, point: tuple[float, float] | None) -> _Candidate:
    if point is None:
        return _Candidate(location, None, location.cost_per_order)
    metres = distance_m(point[0], point[1], location.latitude, location.longitude)
    # cost_per_km is per kilometre, distance in metres: round half up to whole minor units.
    cost = location.cost_per_order + (location.cost_per_km * metres + 500) // 1000
    return _Candidate(location, metres, cost)


def _group(candidate: _Candidate, lines: list[LineQuantity]) -> FulfilmentGroup:
    return FulfilmentGroup(
        location=candidate.id, lines=lines, distance_m=candidate.distance_m, cost=candidate.cost
    )


def _shortfall(
    tracked: dict[str, int], stock: dict[tuple[str, str], int], location: str
) -> dict[str, int]:
    return {
        sku: need - stock[sku, location]
        for sku, need in tracked.items()
        if stock[sku, location] < need
    }


def _single_reason(best: _Candidate, *, count: int, chosen: bool) -> str:
    where = f" ({_km(best.distance_m)})" if best.distance_m is not None else ""
    if chosen:
        return f"{best.id}: the store the customer chose{where}"
    if count == 1:
        return f"{best.id}: the only candidate{where}"
    if best.distance_m is not None:
        return f"{best.id}: nearest of {count} candidates{where}"
    return f"{best.id}: cheapest of {count} candidates (cost {best.cost})"


def _describe_short(short: dict[str, int], tracked: dict[str, int]) -> str:
    return ", ".join(f"{sku} {tracked[sku] - gap} of {tracked[sku]}" for sku, gap in short.items())


def _describe_unheld(
    tracked: dict[str, int], stock: dict[tuple[str, str], int], candidates: list[_Candidate]
) -> str:
    """The lines no single location holds in full, or — if each is held somewhere but never
    together — all of them."""
    unheld = [
        sku for sku, need in tracked.items() if all(stock[sku, c.id] < need for c in candidates)
    ]
    lines = ", ".join(f"{sku} x{tracked[sku]}" for sku in unheld or tracked)
    return f"no single location has {lines}" if unheld else f"no single location has all of {lines}"


def _km(metres: int) -> str:
    return f"{metres / 1000:.1f} km"
