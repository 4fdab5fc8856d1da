"""The error answer of OrderStream's HTTP routes: `{"error": reason, ...details}` with a status.

The webhooks and the read API answer errors alike, so a client reads one shape everywhere.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web


def problem(status: int, error: str, **details: Any) -> web.Response:
    """A JSON error response: `error` says what went wrong, `details` (field, parameter,
    dead_letter_id, ...) what a client needs to act on it."""
    return web.json_response({"error": error, **details}, status=status)
