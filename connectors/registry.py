"""Connectors are found through the entry-point group `orderstream.connectors`."""

from __future__ import annotations

from importlib.metadata import entry_points

from connectors.base import Connector

ENTRY_POINT_GROUP = "orderstream.connectors"


class UnknownChannel(LookupError):
    """No connector is registered under that channel name."""


def available() -> dict[str, type[Connector]]:
    found: dict[str, type[Connector]] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found[entry.name] = entry.load()
    return found


def connector_for(channel: str) -> Connector:
    connectors = available()
    if channel not in connectors:
        known = ", ".join(sorted(connectors)) or "none"
        raise UnknownChannel(f"no connector named {channel!r} (installed: {known})")
    return connectors[channel]()
