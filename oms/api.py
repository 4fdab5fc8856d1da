"""`oms api`: the HTTP side of OrderStream — channel webhooks, operators' commands (reviews,
cancellations, stock), the read API and the live dashboard."""

from __future__ import annotations

from aiohttp import web

from connectors import webhooks
from infra.publisher import AsyncPublisher
from infra.settings import Settings
from oms import operations
from projections import read_api


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=webhooks.MAX_BODY_BYTES)
    publisher = AsyncPublisher(settings)
    webhooks.add_routes(app, publisher)
    operations.add_routes(app, publisher, settings)
    read_api.add_routes(app, settings)

    async def close_publisher(_: web.Application) -> None:
        publisher.close()

    app.on_cleanup.append(close_publisher)
    return app


def serve(settings: Settings, *, host: str, port: int) -> None:
    web.run_app(create_app(settings), host=host, port=port, print=None)
