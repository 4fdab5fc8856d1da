"""`oms api`'s metrics and health, served on its own port: `GET /livez` (the event loop
answers), `GET /readyz` (and Kafka answers it: webhooks and commands need it), `GET /metrics`
(Prometheus text; an analyst's or admin's key, see oms/access.py), and the middleware that
gives each request an id, counts it, and sets the ids its log lines carry
(infra/structured_logs.py). `/healthz` stays as it was (connectors/webhooks.py).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from infra.kafka import admin_config
from infra.metrics import CONTENT_TYPE_LATEST, HTTP_REQUESTS, HTTP_SECONDS, exposition
from infra.settings import Settings
from infra.structured_logs import log_context

READY_TIMEOUT_S = 2.0  # longest a readiness probe waits for Kafka
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id(request: web.Request) -> str:
    """The caller's X-Request-Id when it is a plain token, else a new one."""
    given = request.headers.get("X-Request-Id", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: every line logged while the request is handled carries its request id (and
    the order id of its path); the answer says the id back (X-Request-Id); the request is
    counted per route template (never the path itself: bounded, and no ids in labels)."""
    rid = request_id(request)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    began = time.perf_counter()
    status = 500
    try:
        with log_context(request_id=rid, order_id=request.match_info.get("order_id")):
            response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = rid
        return response
    except web.HTTPException as exc:  # a redirect, or what a handler raised as its answer
        status = exc.status
        exc.headers["X-Request-Id"] = rid
        raise
    finally:
        HTTP_REQUESTS.labels(route, str(status)).inc()
        HTTP_SECONDS.labels(route).observe(time.perf_counter() - began)


class KafkaProbe:
    """Whether Kafka answers this process now: a metadata request for the intake topic."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topics.intake
        self._admin = AdminClient(admin_config(settings.kafka_bootstrap))

    def why_not(self) -> str | None:
        try:
            found = self._admin.list_topics(self.topic, timeout=READY_TIMEOUT_S).topics
        except KafkaException as exc:
            return f"Kafka does not answer: {exc}"
        metadata = found.get(self.topic)
        if metadata is None or metadata.error is not None:
            return f"Kafka does not have the topic {self.topic}"
        return None


KAFKA_PROBE = web.AppKey("kafka_probe", KafkaProbe)


async def livez(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def readyz(request: web.Request) -> web.Response:
    why_not = await asyncio.to_thread(request.app[KAFKA_PROBE].why_not)
    body = {"status": "ok"} if why_not is None else {"status": "unavailable", "reason": why_not}
    return web.json_response(
        body, status=200 if why_not is None else 503, headers={"Cache-Control": "no-store"}
    )


async def metrics(_: web.Request) -> web.Response:
    response = web.Response(body=exposition(), headers={"Cache-Control": "no-store"})
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def add_routes(app: web.Application, settings: Settings) -> None:
    app[KAFKA_PROBE] = KafkaProbe(settings)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
