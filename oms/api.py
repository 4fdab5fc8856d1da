"""`oms api`: the HTTP side of OrderStream — channel webhooks, operators' commands (reviews,
cancellations, stock), the read API and the live dashboard, customers' data for access
requests, and the OpenAPI document that describes them all (`GET /openapi.json`,
oms/openapi.py). Who may call what is oms/access.py's: every route has a rule there."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from connectors import webhooks
from infra.http import problem
from infra.publisher import AsyncPublisher
from infra.settings import Settings
from oms import access, feed, health, openapi, operations, returns, tracking, tracking_page
from projections import pipeline_status, read_api
from projections.queries import order_state

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


async def _order_place(request: web.Request, order_id: str) -> tuple[str, str] | None:
    """The store and channel of an order, from the read models (for store-scoped callers)."""
    state = await request.app[read_api.READ_MODELS].run(lambda store: order_state(store, order_id))
    if state is None:
        return None
    return str(state.get("location") or ""), str(state.get("channel") or "")


async def export_customer(request: web.Request) -> web.Response:
    """Everything held about a customer (an access request under PIPL/GDPR), unsealed."""
    from oms.privacy import UnknownCustomer, export

    settings: Settings = request.app[SETTINGS]
    customer = request.match_info["customer"]
    try:
        document = await asyncio.to_thread(export, settings, customer)
    except UnknownCustomer as exc:
        return problem(404, str(exc), customer=customer)
    response = web.json_response(document)
    response.headers["Cache-Control"] = "no-store"
    return response


async def subscriptions(request: web.Request) -> web.Response:
    """The outbound webhook subscriptions and how far behind the order log each one is (the
    dashboard's panel): where they post (scheme and host only: a URL's path or query may hold
    a token), what they take, whether they are on, and their lag in events."""
    from urllib.parse import urlsplit

    from oms.webhooks import WebhooksUnavailable, lag, read_subscriptions

    settings: Settings = request.app[SETTINGS]

    def read() -> list[dict[str, object]]:
        found, behind = read_subscriptions(settings, timeout_s=10), lag(settings)
        return [
            {
                "id": s.id,
                "host": f"{urlsplit(s.url).scheme}://{urlsplit(s.url).netloc.rpartition('@')[2]}",
                "event_types": s.event_types,
                "enabled": s.enabled,
                "disabled_reason": s.disabled_reason,
                "lag": behind.get(s.id, 0),
            }
            for s in sorted(found.values(), key=lambda s: s.id)
        ]

    try:
        rows = await asyncio.to_thread(read)
    except WebhooksUnavailable as exc:
        return problem(503, f"Kafka did not answer: {exc}")
    return web.json_response({"subscriptions": rows})


SETTINGS = web.AppKey("settings", Settings)


def create_app(settings: Settings, *, audit: access.AuditSink | None = None) -> web.Application:
    """The whole API. AccessMisconfigured when access cannot be enforced (fail closed)."""
    app = web.Application(
        client_max_size=webhooks.MAX_BODY_BYTES,
        middlewares=[health.request_context, access.security_headers, problems, access.enforce],
    )
    app[SETTINGS] = settings
    trail = audit or access.TrailAudit(settings)
    # Access first: an API that could not enforce it stops before it connects to anything.
    access.add_routes(app, settings, audit=trail, order_place=_order_place)
    publisher = AsyncPublisher(settings)
    webhooks.add_routes(app, publisher, settings)
    tracking.add_routes(app, publisher, settings)
    returns.add_routes(app, publisher, settings)
    operations.add_routes(app, publisher, settings)
    read_api.add_routes(app, settings)
    pipeline_status.add_routes(app, settings)  # over read_api's ClickHouse
    health.add_routes(app, settings)
    tracking_page.add_routes(app, settings)  # over read_api's ClickHouse
    feed.add_routes(app, settings)
    openapi.add_routes(app)
    app.router.add_get("/customers/{customer}/export", export_customer)
    app.router.add_get("/subscriptions", subscriptions)

    async def close_publisher(_: web.Application) -> None:
        publisher.close()
        if isinstance(trail, access.TrailAudit):
            await trail.close()

    app.on_cleanup.append(close_publisher)
    return app


def serve(settings: Settings, *, host: str, port: int) -> None:
    from infra.structured_logs import configure_logging

    configure_logging(settings, process="api")
    web.run_app(create_app(settings), host=host, port=port, print=None)
