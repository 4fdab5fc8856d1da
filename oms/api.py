"""`oms api`: the HTTP side of OrderStream — channel webhooks, operators' commands (reviews,
cancellations, stock), the read API and the live dashboard, and the OpenAPI document that
describes them all (`GET /openapi.json`, oms/openapi.py)."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from connectors import webhooks
from infra.http import problem
from infra.publisher import AsyncPublisher
from infra.settings import Settings
from oms import openapi, operations
from projections import read_api

log = logging.getLogger(__name__)


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What aiohttp itself refuses (no route: 404, a method the route does not take: 405, a
    body over the app's limit: 413, a body its Content-Encoding does not decode: 400) is
    answered in the same form as every other error; so is a bug (500, the traceback logged)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        answer = problem(exc.status, exc.reason)
        if "Allow" in exc.headers:
            answer.headers["Allow"] = exc.headers["Allow"]
        return answer
    except web.RequestPayloadError as exc:
        # Raised while the body is read (a gzip body that is not gzip): nothing readable to
        # keep or dead-letter, and the client's fault.
        reason = getattr(exc.__cause__, "message", None) or str(exc)
        return problem(400, f"the body cannot be read: {reason}")
    except Exception as exc:
        log.exception("%s %s failed", request.method, request.path)
        return problem(500, f"internal error ({type(exc).__name__}); the log has the details")


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=webhooks.MAX_BODY_BYTES, middlewares=[problems])
    publisher = AsyncPublisher(settings)
    webhooks.add_routes(app, publisher, settings)
    operations.add_routes(app, publisher, settings)
    read_api.add_routes(app, settings)
    openapi.add_routes(app)

    async def close_publisher(_: web.Application) -> None:
        publisher.close()

    app.on_cleanup.append(close_publisher)
    return app


def serve(settings: Settings, *, host: str, port: int) -> None:
    web.run_app(create_app(settings), host=host, port=port, print=None)
