"""Prep-time estimates: a model learned from the stores' history, and the pure estimate of when
an order will be ready (and delivered) that routing promises and acceptance records.

What is learned (`learn`, from one row per finished order: `PrepFact`) is the time a store
needs from accepting an order to marking it ready, in seconds:

- per store × dish × hour of week, store × dish, store, and over all stores: the p50 and p90
  of that time, a cell used only when it holds `min_samples` orders. An order's dish is the
  slowest of its lines (kitchens cook the lines side by side: the slowest decides), by the
  dishes' median over all stores (`dish_rank`);
- a multiplicative hour factor (store × hour of week, store × hour of day, hour of day) for the
  cells that are not hour-specific: lunch and dinner rushes;
- a load term: extra seconds per ticket open at the store when the order was accepted (least
  squares of prep time on open tickets, per store, else over all stores; never negative);
- the handoff: the median time from ready to delivered (delivery) per store and mode.

`estimate` walks the cells from the most specific down (store × dish × hour of week →
store × dish → store → all stores) and falls back to the fixed default promise
(`streams.priority.DEFAULT_PROMISE`) when there is no model or no cell; its `source` says
which level answered, so each recorded estimate can be judged by where it came from.

Hours are UTC hours of the week (Monday 00:00 UTC is 0): for a store in a zone without
daylight saving (Asia/Shanghai) that is the same bucketing as local hours. No I/O, no clock:
the time comes in as `now`.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from events.models import OrderMode, OrderReceived, UtcDatetime
from streams.priority import DEFAULT_PROMISE

FORMAT = 1  # of the model as published (JSON on the eta-models topic)
MODEL_KEY = b"prep-time"  # the one key of the compacted topic: the newest model wins
ALL = "*"
MIN_SAMPLES = 5
# Preparation longer than this is not cooking (a ticket forgotten on the screen): left out.
LONGEST_PREP_S = 4 * 3600
# From ready to the customer when the history has no handoff for the store and mode.
DEFAULT_HANDOFF: dict[OrderMode, timedelta] = {
    OrderMode.DELIVERY: timedelta(minutes=25),
    OrderMode.PICKUP: timedelta(0),
    OrderMode.DINE_IN: timedelta(0),
}


class PrepCell(BaseModel):
    """Prep seconds of the orders in one cell (load taken out: see `PrepTimeModel.load`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    p50: float
    p90: float
    orders: int


class PrepTimeModel(BaseModel):
    """A learned model as published (JSON): every worker estimates with the newest one."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    format: int = FORMAT
    version: str = Field(description="content hash: the same history learns the same version")
    learned_at: UtcDatetime
    since: UtcDatetime
    until: UtcDatetime
    orders: int
    min_samples: int = MIN_SAMPLES
    dish_rank: dict[str, float] = Field(description="sku -> median prep seconds, all stores")
    cells: dict[str, PrepCell] = Field(
        description="'store|sku|how', 'store|sku', 'store', '*' -> prep quantiles"
    )
    hour_factors: dict[str, float] = Field(
        description="'store|w<how>', 'store|d<hour>', '*|d<hour>' -> multiplier"
    )
    load: dict[str, float] = Field(description="store or '*' -> seconds per open ticket")
    handoff: dict[str, float] = Field(description="'store|mode' or '*|mode' -> seconds")


@dataclass(frozen=True)
class PrepFact:
    """One finished order as the learner reads it from the read models."""

    order_id: str
    location: str
    mode: str
    skus: tuple[str, ...]
    accepted_at: datetime
    ready_at: datetime
    fulfilled_at: datetime | None = None  # delivered (delivery) or handed over

    @property
    def prep_s(self) -> float:
        return (self.ready_at - self.accepted_at).total_seconds()


@dataclass(frozen=True)
class Estimate:
    """When an order will be ready: `ready_at` is the median estimate (what acceptance
    records), `ready_by` the p90 (what a promise is built on, so few are broken), `due_at` the
    promise to the customer: `ready_by` plus the handoff of the order's mode."""

    ready_at: datetime
    ready_by: datetime
    due_at: datetime
    prep_s: float
    source: str  # the level that answered: "store×dish×hour-of-week", ..., "default"
    model: str | None  # the model's version (None: the fixed default)


def hour_of_week(at: datetime) -> int:
    return at.weekday() * 24 + at.hour


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile by linear interpolation between the closest ranks (numpy's default,
    ClickHouse's `quantileExactInclusive`): ranks 0 … n-1, position q·(n-1)."""
    if not sorted_values:
        raise ValueError("no values")
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def tickets_open_at_acceptance(facts: Sequence[PrepFact]) -> list[int]:
    """For each fact, how many other orders its store had accepted and not yet marked ready
    when it was accepted."""
    by_store: dict[str, list[int]] = defaultdict(list)
    for i, fact in enumerate(facts):
        by_store[fact.location].append(i)
    counts = [0] * len(facts)
    for indices in by_store.values():
        starts = sorted(facts[i].accepted_at for i in indices)
        ends = sorted(facts[i].ready_at for i in indices)
        for i in indices:
            at = facts[i].accepted_at
            started = bisect.bisect_right(starts, at)  # accepted at or before (itself too)
            ended = bisect.bisect_right(ends, at)  # already ready
            counts[i] = max(0, started - ended - 1)
    return counts


def _slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of y on x; None when x does not vary."""
    n = len(points)
    if n < 2:
        return None
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx


def _median(values: Iterable[float]) -> float:
    return quantile(sorted(values), 0.5)


def key_dish(skus: Iterable[str], dish_rank: Mapping[str, float]) -> str | None:
    """The order's slowest dish by the model's ranking (ties: the greater sku)."""
    known = [(dish_rank[sku], sku) for sku in set(skus) if sku in dish_rank]
    if not known:
        return None
    return max(known)[1]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def facts_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[PrepFact]:
    """Facts from rows of projections/sql/prep_facts.sql (naive times are UTC; a hand-on time
    before the ready time has not happened: the backends answer a missing time with the
    epoch)."""
    facts = []
    for row in rows:
        ready = _utc(row["ready_at"])
        fulfilled = _utc(row["fulfilled_at"]) if row["fulfilled_at"] is not None else None
        facts.append(
            PrepFact(
                order_id=str(row["order_id"]),
                location=str(row["store"]),
                mode=str(row["mode"]),
                skus=tuple(str(sku) for sku in row["line_skus"]),
                accepted_at=_utc(row["accepted_at"]),
                ready_at=ready,
                fulfilled_at=fulfilled if fulfilled is not None and fulfilled >= ready else None,
            )
        )
    return facts


def learn(
    facts: Sequence[PrepFact],
    *,
    since: datetime,
    until: datetime,
    learned_at: datetime,
    min_samples: int = MIN_SAMPLES,
) -> PrepTimeModel:
    """The model of `facts` (finished orders accepted in [since, until))."""
    facts = [f for f in facts if 0 < f.prep_s <= LONGEST_PREP_S and f.location]
    load_at = tickets_open_at_acceptance(facts)
    # Dishes ranked by the median prep of the orders that contain them.
    containing: dict[str, list[float]] = defaultdict(list)
    for fact in facts:
        for sku in set(fact.skus):
            containing[sku].append(fact.prep_s)
    dish_rank = {sku: round(_median(v), 1) for sku, v in containing.items() if len(v) >= 1}
    dishes = [key_dish(f.skus, dish_rank) or "" for f in facts]

    # Load: the slope of prep on open tickets around each store × dish median.
    raw_base: dict[tuple[str, str], float] = {}
    grouped: dict[tuple[str, str], list[float]] = defaultdict(list)
    for fact, dish in zip(facts, dishes, strict=True):
        grouped[(fact.location, dish)].append(fact.prep_s)
    raw_base = {key: _median(v) for key, v in grouped.items()}
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for fact, dish, tickets in zip(facts, dishes, load_at, strict=True):
        point = (float(tickets), fact.prep_s - raw_base[(fact.location, dish)])
        points[fact.location].append(point)
        points[ALL].append(point)
    overall = max(0.0, _slope(points[ALL]) or 0.0)
    load = {ALL: round(overall, 2)}
    for store, pts in points.items():
        slope = _slope(pts) if len(pts) >= min_samples else None
        if store != ALL and slope is not None:
            load[store] = round(max(0.0, slope), 2)

    def per_ticket(store: str) -> float:
        return load.get(store, load[ALL])

    adjusted = [f.prep_s - per_ticket(f.location) * t for f, t in zip(facts, load_at, strict=True)]

    # Cells of load-adjusted prep, most specific first.
    samples: dict[str, list[float]] = defaultdict(list)
    for fact, dish, prep in zip(facts, dishes, adjusted, strict=True):
        how = hour_of_week(fact.accepted_at)
        for key in (f"{fact.location}|{dish}|{how}", f"{fact.location}|{dish}", fact.location, ALL):
            samples[key].append(prep)
    cells = {}
    for key, values in samples.items():
        if len(values) >= min_samples:
            ordered = sorted(values)
            cells[key] = PrepCell(
                p50=round(quantile(ordered, 0.5), 1),
                p90=round(quantile(ordered, 0.9), 1),
                orders=len(ordered),
            )

    # Hour factors: how an hour's orders compare with their cell's median.
    ratios: dict[str, list[float]] = defaultdict(list)
    for fact, dish, prep in zip(facts, dishes, adjusted, strict=True):
        cell = _base_cell(cells, fact.location, dish)
        if cell is None or cell[1].p50 <= 0:
            continue
        ratio = prep / cell[1].p50
        how = hour_of_week(fact.accepted_at)
        for key in (
            f"{fact.location}|w{how}",
            f"{fact.location}|d{fact.accepted_at.hour}",
            f"{ALL}|d{fact.accepted_at.hour}",
        ):
            ratios[key].append(ratio)
    hour_factors = {
        key: round(_median(values), 3)
        for key, values in ratios.items()
        if len(values) >= min_samples
    }

    handoffs: dict[str, list[float]] = defaultdict(list)
    for fact in facts:
        if fact.fulfilled_at is not None and fact.fulfilled_at >= fact.ready_at:
            seconds = (fact.fulfilled_at - fact.ready_at).total_seconds()
            handoffs[f"{fact.location}|{fact.mode}"].append(seconds)
            handoffs[f"{ALL}|{fact.mode}"].append(seconds)
    handoff = {k: round(_median(v), 1) for k, v in handoffs.items() if len(v) >= min_samples}

    content = repr(
        (
            sorted(cells.items()),
            sorted(hour_factors.items()),
            sorted(load.items()),
            sorted(handoff.items()),
            sorted(dish_rank.items()),
        )
    )
    version = f"{learned_at:%Y%m%dT%H%M}-{hashlib.sha1(content.encode()).hexdigest()[:8]}"
    return PrepTimeModel(
        version=version,
        learned_at=learned_at,
        since=since,
        until=until,
        orders=len(facts),
        min_samples=min_samples,
        dish_rank=dish_rank,
        cells=cells,
        hour_factors=hour_factors,
        load=load,
        handoff=handoff,
    )


def _base_cell(
    cells: Mapping[str, PrepCell], store: str, dish: str | None
) -> tuple[str, PrepCell] | None:
    """The most specific cell that is not hour-specific."""
    candidates = [(f"{store}|{dish}", "store×dish")] if dish else []
    candidates += [(store, "store"), (ALL, "all stores")]
    for key, level in candidates:
        if key in cells:
            return level, cells[key]
    return None


def hour_factor(model: PrepTimeModel, store: str, at: datetime) -> tuple[float, str]:
    """The rush multiplier for `store` at `at`, and the level it came from."""
    for key, level in (
        (f"{store}|w{hour_of_week(at)}", "hour-of-week"),
        (f"{store}|d{at.hour}", "hour-of-day"),
        (f"{ALL}|d{at.hour}", "hour-of-day (all stores)"),
    ):
        if key in model.hour_factors:
            return model.hour_factors[key], level
    return 1.0, ""


def handoff(model: PrepTimeModel | None, store: str, mode: OrderMode) -> timedelta:
    if model is not None:
        for key in (f"{store}|{mode.value}", f"{ALL}|{mode.value}"):
            if key in model.handoff:
                return timedelta(seconds=min(max(model.handoff[key], 0.0), MAX_PREP_S))
    return DEFAULT_HANDOFF.get(mode, timedelta(0))


def default_estimate(order: OrderReceived) -> Estimate:
    """The fixed default: ready (and due) at the mode's default promise after placement, as
    before there was a model."""
    promise = order.placed_at + DEFAULT_PROMISE[order.mode]
    prep = (promise - order.placed_at).total_seconds()
    return Estimate(promise, promise, promise, prep, "default", None)


MAX_PREP_S = 24 * 3600.0  # an estimate past a day is a broken model, not a kitchen


def estimate(
    model: PrepTimeModel | None,
    order: OrderReceived,
    *,
    location: str,
    open_tickets: int,
    now: datetime,
) -> Estimate:
    """When `order`, taken on at `location` at `now` with `open_tickets` other tickets open
    there, will be ready and due. Shipped orders and orders no cell covers get the default."""
    if model is None or order.mode is OrderMode.SHIP:
        return default_estimate(order)
    dish = key_dish((line.sku for line in order.lines), model.dish_rank)
    specific = f"{location}|{dish}|{hour_of_week(now)}"
    if dish and specific in model.cells:
        cell, source, factor = model.cells[specific], "store×dish×hour-of-week", 1.0
    else:
        base = _base_cell(model.cells, location, dish)
        if base is None:
            return default_estimate(order)
        source, cell = base
        factor, level = hour_factor(model, location, now)
        if level:
            source = f"{source}·{level}"
    extra = model.load.get(location, model.load.get(ALL, 0.0)) * max(0, open_tickets)
    # Bounded, so no published model (however wrong) can make a decision fail.
    p50 = min(max(0.0, cell.p50 * factor + extra), MAX_PREP_S)
    p90 = min(max(p50, cell.p90 * factor + extra), MAX_PREP_S)
    ready_at = now + timedelta(seconds=round(p50))
    ready_by = now + timedelta(seconds=round(p90))
    return Estimate(
        ready_at=ready_at,
        ready_by=ready_by,
        due_at=ready_by + handoff(model, location, order.mode),
        prep_s=round(p50),
        source=source,
        model=model.version,
    )


def parse_model(raw: bytes) -> PrepTimeModel:
    """A published model (pydantic's ValidationError names the field when it is not one)."""
    return PrepTimeModel.model_validate_json(raw)
