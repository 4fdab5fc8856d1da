"""Priority: a pure score that orders a location's fulfilment queue (higher goes first).

The score is built so its parts never trade against each other in surprising ways: a late
order outranks every order still on time, whatever their tier or value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from events.models import (
    Actor,
    ActorKind,
    OrderMode,
    OrderPrioritised,
    OrderReceived,
    deterministic_id,
    follow_up,
)

if TYPE_CHECKING:  # streams.eta builds on this module's default promises
    from streams.eta import Estimate

ACTOR = Actor(kind=ActorKind.SYSTEM, id="priority")

# What the customer is promised when the channel sends no requested time.
DEFAULT_PROMISE: dict[OrderMode, timedelta] = {
    OrderMode.DELIVERY: timedelta(minutes=45),
    OrderMode.PICKUP: timedelta(minutes=20),
    OrderMode.DINE_IN: timedelta(minutes=15),
    OrderMode.SHIP: timedelta(hours=48),
}

# One point per minute closer to the promise, within this horizon (further away scores 0).
HORIZON_MINUTES = 24 * 60
# A tier is worth that many minutes of urgency; an unknown tier counts as "new".
TIER_BONUS: dict[str, int] = {"new": 0, "regular": 5, "vip": 15}
# One point per this much order value (minor units), at most VALUE_CAP points.
VALUE_STEP = 10_000
VALUE_CAP = 10
# Late orders start above anything an on-time order can reach (horizon + tier + value).
LATE_BASE = 2_000
LATE_POINTS_PER_MINUTE = 2


@dataclass(frozen=True)
class Priority:
    score: int
    promised_at: datetime
    factors: list[str]


@dataclass(frozen=True)
class QueueEntry:
    """One order in a location's fulfilment queue (`oms queue LOCATION`)."""

    order_id: str
    score: int
    promised_at: datetime | None
    status: str


def promised_at(order: OrderReceived) -> datetime:
    """The time the customer asked for, or placement plus the mode's default promise."""
    return order.requested_at or order.placed_at + DEFAULT_PROMISE[order.mode]


def priority(
    order: OrderReceived, *, tier: str, now: datetime, promise: datetime | None = None
) -> Priority:
    """score = urgency + tier bonus + value bonus, all integers:

    - urgency: on time, `max(0, HORIZON_MINUTES - minutes left)` (grows a point a minute as the
      promise nears); late, `LATE_BASE + LATE_POINTS_PER_MINUTE * minutes late`;
    - tier: `TIER_BONUS[tier]` (new 0, regular 5, vip 15);
    - value: `min(total // VALUE_STEP, VALUE_CAP)`.

    LATE_BASE exceeds the most an on-time order can score, so neither tier nor value lifts an
    on-time order above a late one; at equal promise, tier then value decide.

    `promise`: an estimated promise (`streams.eta`) for an order whose channel asked for no
    time; without one, `promised_at(order)`."""
    if promise is None or order.requested_at is not None:
        promise = promised_at(order)
    factors: list[str] = []
    if now > promise:
        late = (now - promise) // timedelta(minutes=1)
        urgency = LATE_BASE + LATE_POINTS_PER_MINUTE * late
        factors.append(f"late by {late} min: +{urgency}")
    else:
        left = (promise - now) // timedelta(minutes=1)
        urgency = max(0, HORIZON_MINUTES - left)
        factors.append(f"due in {left} min: +{urgency}")
    tier_bonus = TIER_BONUS.get(tier, 0)
    known = "" if tier in TIER_BONUS else " (unknown tier, counted as new)"
    factors.append(f"tier {tier}: +{tier_bonus}{known}")
    value_bonus = min(max(order.total, 0) // VALUE_STEP, VALUE_CAP)
    factors.append(f"value {order.total} {order.currency}: +{value_bonus}")
    return Priority(score=urgency + tier_bonus + value_bonus, promised_at=promise, factors=factors)


def prioritise_event(
    order: OrderReceived,
    p: Priority,
    *,
    location: str,
    sequence: int,
    causation_id: str,
    now: datetime,
    estimate: Estimate | None = None,
) -> OrderPrioritised:
    """`OrderPrioritised` for `p` (with the prep-time estimate it was promised on, if any); the
    id follows from the cause, so reprocessing it yields the identical event."""
    envelope = follow_up(order, sequence=sequence, causation_id=causation_id, actor=ACTOR, now=now)
    return OrderPrioritised(
        event_id=deterministic_id(causation_id, "OrderPrioritised"),
        location=location,
        score=p.score,
        promised_at=p.promised_at,
        factors=p.factors,
        estimated_ready_at=None if estimate is None else estimate.ready_at,
        eta_source=None if estimate is None else estimate.source,
        eta_model=None if estimate is None else estimate.model,
        **envelope,
    )


_NEVER = datetime.max.replace(tzinfo=UTC)


def queue_order(entries: Iterable[QueueEntry]) -> list[QueueEntry]:
    """A location's queue, first to serve first: score descending, then the earlier promise
    (none promised goes last), then order id for a stable order."""
    return sorted(entries, key=lambda e: (-e.score, e.promised_at or _NEVER, e.order_id))
