"""Connectors are found through the entry-point group `orderstream.connectors`, so a channel
can live in its own package: `[project.entry-points."orderstream.connectors"] fax = "pkg:Cls"`."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points

from connectors.base import Connector

ENTRY_POINT_GROUP = "orderstream.connectors"


class UnknownChannel(LookupError):
    """No connector is registered under that channel name."""


@dataclass(frozen=True)
class Registered:
    name: str
    target: str  # "module:Class"
    distribution: str
    connector: type[Connector] | None
    error: str | None = None


def registered() -> list[Registered]:
    """Every registered connector; one that fails to load is listed with its error."""
    found = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        distribution = entry.dist.name if entry.dist else "?"
        try:
            loaded = entry.load()
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not hide the others
            found.append(Registered(entry.name, entry.value, distribution, None, repr(exc)))
            continue
        if not (isinstance(loaded, type) and issubclass(loaded, Connector)):
            found.append(
                Registered(
                    entry.name,
                    entry.value,
                    distribution,
                    None,
                    "not a connectors.base.Connector subclass",
                )
            )
        else:
            found.append(Registered(entry.name, entry.value, distribution, loaded))
    return sorted(found, key=lambda r: r.name)


def available() -> dict[str, type[Connector]]:
    return {r.name: r.connector for r in registered() if r.connector is not None}


def connector_for(channel: str) -> Connector:
    connectors = available()
    if channel not in connectors:
        known = ", ".join(sorted(connectors)) or "none"
        raise UnknownChannel(f"no connector named {channel!r} (installed: {known})")
    return connectors[channel]()
