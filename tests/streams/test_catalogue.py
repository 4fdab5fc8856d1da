from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from events.models import (
    Actor,
    ActorKind,
    Location,
    LocationPaused,
    OpeningHours,
    OrderMode,
    Product,
    ProductUpdated,
)
from streams.catalogue import CatalogueError, distance_m, is_open, slot_start
from streams.reference import load_catalogue

T = datetime(2026, 11, 25, 4, 7, tzinfo=UTC)  # Wednesday 12:07 in Shanghai
SYSTEM = Actor(kind=ActorKind.SYSTEM, id="t")


def store(*hours: OpeningHours) -> Location:
    return Location(id="S01", name="s", latitude=31.23, longitude=121.47, timezone="Asia/Shanghai",
                    capabilities=[OrderMode.PICKUP], opening_hours=list(hours),
                    aliases=["mt-7001"])  # fmt: skip


def test_the_demo_catalogue_loads_with_its_stores_warehouses_and_menu() -> None:
    catalogue = load_catalogue()
    assert {"S01", "S05", "WH-SH", "WH-BJ"} <= set(catalogue.locations)
    assert not catalogue.products["DUMPLING-12"].stock_tracked
    assert catalogue.products["TEA-GIFT-M"].stock_tracked


def test_a_bad_catalogue_file_names_the_file_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"locations": [{"id": "S9", "name": "x", "latitude": "north"}]}))
    with pytest.raises(CatalogueError, match=r"c.json: locations\.0\.latitude"):
        load_catalogue(path)


def test_a_store_is_found_by_its_id_or_a_channel_alias() -> None:
    from streams.catalogue import Catalogue

    catalogue = Catalogue(locations={"S01": store()})
    assert catalogue.location_for("S01") is catalogue.location_for("mt-7001") is not None
    assert catalogue.location_for("nope") is None and catalogue.location_for(None) is None


def test_opening_hours_are_local_and_may_run_past_midnight() -> None:
    wednesday = OpeningHours(weekday=2, opens="10:00", closes="14:00")
    assert is_open(store(wednesday), T)
    assert not is_open(store(OpeningHours(weekday=2, opens="17:00", closes="22:00")), T)
    late = OpeningHours(weekday=1, opens="18:00", closes="02:00")  # Tuesday night
    assert is_open(store(late), datetime(2026, 11, 24, 17, 30, tzinfo=UTC))  # Wed 01:30 local
    assert is_open(store(), T)  # no hours: always open


def test_updates_and_pauses_apply_to_a_new_catalogue_value() -> None:
    from streams.catalogue import Catalogue

    before = Catalogue(locations={"S01": store()})
    common = dict(sequence=1, occurred_at=T, recorded_at=T, correlation_id="c", actor=SYSTEM)
    paused = before.apply(LocationPaused(event_id="p", entity_id="S01", reason="r", **common))
    product = Product(sku="NEW", name="n")
    added = paused.apply(ProductUpdated(event_id="u", entity_id="NEW", product=product, **common))
    assert paused.locations["S01"].paused and not before.locations["S01"].paused
    assert "NEW" in added.products and "NEW" not in paused.products


def test_distance_and_slots() -> None:
    assert 4000 < distance_m(31.2304, 121.4737, 31.1950, 121.4370) < 5500
    assert slot_start(store(), T) == datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
