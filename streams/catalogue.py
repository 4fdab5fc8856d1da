"""The product catalogue and the location registry: checked from a JSON document (read from
its file by `streams.reference`), kept current by catalogue events (`ProductUpdated`,
`LocationUpdated`, `LocationPaused`, `LocationResumed`).

A `Catalogue` is an immutable value; `apply` returns the next one, so a decision always sees
one consistent version of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import TypeAdapter, ValidationError

from events.models import (
    CatalogueEvent,
    Location,
    LocationPaused,
    LocationResumed,
    LocationUpdated,
    Product,
    ProductUpdated,
)


class CatalogueError(ValueError):
    """A catalogue file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Catalogue:
    products: dict[str, Product] = field(default_factory=dict)
    locations: dict[str, Location] = field(default_factory=dict)

    def location_for(self, hint: str | None) -> Location | None:
        """The location a channel's store id (or our own id) names, if any."""
        if hint is None:
            return None
        if hint in self.locations:
            return self.locations[hint]
        return next((loc for loc in self.locations.values() if hint in loc.aliases), None)

    def apply(self, event: CatalogueEvent) -> Catalogue:
        if isinstance(event, ProductUpdated):
            return replace(self, products={**self.products, event.product.sku: event.product})
        if isinstance(event, LocationUpdated):
            return replace(self, locations={**self.locations, event.location.id: event.location})
        if isinstance(event, LocationPaused | LocationResumed):
            current = self.locations.get(event.entity_id)
            if current is None:
                return self
            paused = isinstance(event, LocationPaused)
            changed = current.model_copy(update={"paused": paused})
            return replace(self, locations={**self.locations, current.id: changed})
        raise TypeError(f"not a catalogue event: {type(event).__name__}")


_PRODUCTS = TypeAdapter(list[Product])
_LOCATIONS = TypeAdapter(list[Location])


def parse_catalogue(document: Any, *, source: str) -> Catalogue:
    """Check `{"products": [...], "locations": [...]}`; errors name `source` and the field."""
    if not isinstance(document, dict):
        raise CatalogueError(f"{source}: expected an object with products and locations")
    section = "products"
    try:
        products = _PRODUCTS.validate_python(document.get("products", []))
        section = "locations"
        locations = _LOCATIONS.validate_python(document.get("locations", []))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in (section, *first["loc"]))
        raise CatalogueError(f"{source}: {where}: {first['msg']}") from exc
    for location in locations:
        ZoneInfo(location.timezone)  # an unknown zone fails here, not mid-stream
        for hours in location.opening_hours:
            if not 0 <= hours.weekday <= 6:
                raise CatalogueError(f"{source}: {location.id}: weekday {hours.weekday} not 0-6")
    return Catalogue(
        products={p.sku: p for p in products}, locations={loc.id: loc for loc in locations}
    )


@lru_cache(maxsize=4096)  # one order asks for the same pairs in fraud and routing
def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> int:
    """Great-circle distance in metres (haversine)."""
    r = 6_371_000.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return round(2 * r * math.asin(math.sqrt(a)))


def is_open(location: Location, at: datetime) -> bool:
    """Whether `at` (UTC) falls in the location's opening hours; no hours = always open."""
    if not location.opening_hours:
        return True
    local = at.astimezone(ZoneInfo(location.timezone))
    minute = local.hour * 60 + local.minute
    for hours in location.opening_hours:
        opens, closes = _minutes(hours.opens), _minutes(hours.closes)
        today = hours.weekday == local.weekday()
        if today and (opens <= minute < closes or (closes <= opens and minute >= opens)):
            return True
        # Hours that run past midnight count on the next day too.
        yesterday = (local - timedelta(days=1)).weekday()
        if hours.weekday == yesterday and closes <= opens and minute < closes:
            return True
    return False


def slot_start(location: Location, at: datetime) -> datetime:
    """The start of the capacity slot `at` falls in (slots count from midnight UTC)."""
    size = max(location.slot_minutes, 1) * 60
    epoch = int(at.timestamp())
    return datetime.fromtimestamp(epoch - epoch % size, tz=at.tzinfo)


def _minutes(hhmm: str) -> int:
    hours, _, minutes = hhmm.partition(":")
    return int(hours) * 60 + int(minutes)
