"""Carriers are found through the entry-point group `orderstream.carriers`, so a carrier can
live in its own package: `[project.entry-points."orderstream.carriers"] dhl = "pkg:Cls"`."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points

from connectors.carriers.base import Carrier

ENTRY_POINT_GROUP = "orderstream.carriers"


@dataclass(frozen=True)
class Registered:
    name: str
    target: str  # "module:Class"
    distribution: str
    carrier: type[Carrier] | None
    error: str | None = None


def registered() -> list[Registered]:
    """Every registered carrier; one that fails to load is listed with its error."""
    found = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        distribution = entry.dist.name if entry.dist else "?"
        try:
            loaded = entry.load()
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not hide the others
            found.append(Registered(entry.name, entry.value, distribution, None, repr(exc)))
            continue
        missing = [
            name
            for name in ("name", "quote", "create", "cancel", "track", "parse_push")
            if not hasattr(loaded, name)
        ]
        if not isinstance(loaded, type) or missing:
            why = f"not a carrier: no {', '.join(missing)}" if missing else "not a class"
            found.append(Registered(entry.name, entry.value, distribution, None, why))
        else:
            found.append(Registered(entry.name, entry.value, distribution, loaded))
    return sorted(found, key=lambda r: r.name)
