"""Capacity: a location whose current slot is full is paused (routing skips it anyway, the
pause makes it visible to operators and channels); it resumes when a slot has room again. A
pause set by hand is never lifted here."""

from __future__ import annotations

from collections.abc import Mapping, Set
from datetime import datetime
from typing import Any

from events.models import Actor, ActorKind, LocationPaused, LocationResumed, deterministic_id
from streams.catalogue import Catalogue, slot_start

ACTOR = Actor(kind=ActorKind.SYSTEM, id="capacity")


def changes(
    catalogue: Catalogue, *, load: Mapping[str, int], auto_paused: Set[str], now: datetime
) -> list[LocationPaused | LocationResumed]:
    """Pauses and resumptions due now; ids follow from location and slot (re-sends dedup)."""
    due: list[LocationPaused | LocationResumed] = []
    for location in catalogue.locations.values():
        if location.capacity_per_slot <= 0:
            continue
        orders = load.get(location.id, 0)
        slot = slot_start(location, now).isoformat()
        common: dict[str, Any] = {
            "sequence": 1,
            "occurred_at": now,
            "recorded_at": now,
            "correlation_id": location.id,
            "actor": ACTOR,
            "entity_id": location.id,
            "automatic": True,
        }
        if orders >= location.capacity_per_slot and not location.paused:
            due.append(
                LocationPaused(
                    event_id=deterministic_id(location.id, "LocationPaused", slot),
                    reason=f"{orders} orders in the slot from {slot}, capacity "
                    f"{location.capacity_per_slot}",
                    **common,
                )
            )
        elif (
            orders < location.capacity_per_slot and location.paused and (location.id in auto_paused)
        ):
            due.append(
                LocationResumed(
                    event_id=deterministic_id(location.id, "LocationResumed", slot),
                    reason=f"room again in the slot from {slot} ({orders} of "
                    f"{location.capacity_per_slot})",
                    **common,
                )
            )
    return due
