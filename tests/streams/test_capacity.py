from __future__ import annotations

from datetime import UTC, datetime

from events.models import Location, OrderMode
from streams.capacity import changes
from streams.catalogue import Catalogue

NOW = datetime(2026, 11, 25, 4, 7, tzinfo=UTC)


def catalogue(*, paused: bool = False) -> Catalogue:
    store = Location(id="S01", name="s", latitude=31.2, longitude=121.4,
                     capabilities=[OrderMode.DELIVERY], slot_minutes=15, capacity_per_slot=3,
                     paused=paused)  # fmt: skip
    return Catalogue(locations={"S01": store})


def test_a_full_slot_pauses_the_location_once_per_slot() -> None:
    (paused,) = changes(catalogue(), load={"S01": 3}, auto_paused=set(), now=NOW)
    assert paused.event_type == "LocationPaused" and paused.automatic
    again = changes(catalogue(), load={"S01": 4}, auto_paused=set(), now=NOW)
    assert again[0].event_id == paused.event_id  # same slot, same id: a re-send dedups
    assert changes(catalogue(), load={"S01": 2}, auto_paused=set(), now=NOW) == []


def test_room_again_resumes_only_what_capacity_paused() -> None:
    (resumed,) = changes(catalogue(paused=True), load={"S01": 0}, auto_paused={"S01"}, now=NOW)
    assert resumed.event_type == "LocationResumed"
    by_hand = changes(catalogue(paused=True), load={"S01": 0}, auto_paused=set(), now=NOW)
    assert by_hand == []
