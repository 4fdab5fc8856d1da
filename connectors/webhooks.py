"""HTTP intake: `POST /webhooks/{channel}` answers 2xx only after Kafka acknowledged the event.

- 200 with the order id: the event is on the intake topic (acks=all, idempotent producer);
- 400 with the reason and field: the payload cannot become an order; 401: bad signature;
  both after the raw bytes are on the dead-letter topic, so nothing is lost;
- 404: no connector for that channel; 413: body too large; 503: Kafka did not acknowledge
  (the channel should retry; nothing was acknowledged).

Form posts (`application/x-www-form-urlencoded`, e.g. the phone-order form) reach the connector
as a flat JSON object of their fields.
"""

from __future__ import annotations

import html
import json
import uuid

from aiohttp import web

from connectors.base import Connector, PayloadRejected, SignatureRejected
from connectors.registry import UnknownChannel, connector_for
from events.models import DeadLetter, utc_now
from infra.http import problem
from infra.publisher import AsyncPublisher, PublishError

MAX_BODY_BYTES = 1 << 20
PUBLISHER = web.AppKey("publisher", AsyncPublisher)
CONNECTORS = web.AppKey("connectors", dict)


async def _body(request: web.Request) -> bytes:
    if request.content_type == "application/x-www-form-urlencoded":
        form = await request.post()
        return json.dumps({k: str(v) for k, v in form.items()}, ensure_ascii=False).encode()
    return await request.read()


def _connector(app: web.Application, channel: str) -> Connector:
    connectors: dict[str, Connector] = app[CONNECTORS]
    if channel not in connectors:
        connectors[channel] = connector_for(channel)
    return connectors[channel]


async def receive(request: web.Request) -> web.Response:
    response = await _receive(request)
    if request.content_type != "application/x-www-form-urlencoded":
        return response
    # A person submitted the phone form: answer with the form again and what happened.
    answer = json.loads(response.text or "{}")
    if response.status == 200:
        message = f"<p>✔ Order {html.escape(answer['order_id'])} received.</p>"
    else:
        where = f" ({html.escape(str(answer.get('field')))})" if answer.get("field") else ""
        message = f"<p>✘ Not accepted{where}: {html.escape(str(answer.get('error')))}</p>"
    return web.Response(text=_form_page(message), status=response.status, content_type="text/html")


async def _receive(request: web.Request) -> web.Response:
    channel = request.match_info["channel"]
    try:
        connector = _connector(request.app, channel)
    except UnknownChannel as exc:
        return problem(404, str(exc))
    raw = await _body(request)
    publisher = request.app[PUBLISHER]
    request_id = request.headers.get("X-Request-Id") or str(uuid.uuid4())
    try:
        connector.verify(request.headers, raw)
        event = connector.parse(raw, received_at=utc_now(), headers=request.headers)
    except PayloadRejected as exc:
        status = 401 if isinstance(exc, SignatureRejected) else 400
        letter = DeadLetter.of(
            source=channel, source_ref=f"webhook:{request_id}", reason=str(exc), raw=raw
        )
        try:
            await publisher.dead_letter(letter)
        except PublishError as kafka:
            return problem(503, f"rejected, and the dead-letter topic is unavailable: {kafka}")
        return problem(status, exc.reason, field=exc.field, dead_letter_id=letter.dead_letter_id)
    try:
        await publisher.intake(event)
    except PublishError as exc:
        return problem(503, f"Kafka did not acknowledge the order: {exc}")
    return web.json_response(
        {"order_id": event.order_id, "event_id": event.event_id, "event_type": event.event_type}
    )


_FORM_PAGE = """<!doctype html>
<html lang="zh"><head><meta charset="utf-8"><title>Phone order · OrderStream</title>
<style>body{{font-family:sans-serif;max-width:40rem;margin:2rem auto}}
label{{display:block;margin:.4rem 0}}input,textarea{{width:100%}}</style></head>
<body><h1>Phone order 电话订单</h1>{message}
<form method="post" action="/webhooks/phone">{fields}
<button type="submit">Submit 提交</button></form></body></html>"""
_FORM_HINTS = {
    "placed_at": "2026-11-25 11:32",
    "mode": "delivery / pickup / dine_in (外卖 / 自取 / 堂食)",
    "items": "[SKU] 宫保鸡丁饭 x2 @26.00 (少辣); 酸辣汤 x1 @15.50",
    "payment": "paid / cash_on_delivery / unpaid",
    "revision": "0",
}


def _form_page(message: str = "") -> str:
    from connectors.phone import CSV_COLUMNS

    fields = "".join(
        f'<label>{html.escape(name)} <input name="{html.escape(name)}" '
        f'placeholder="{html.escape(_FORM_HINTS.get(name, ""))}"></label>'
        for name in CSV_COLUMNS
    )
    return _FORM_PAGE.format(message=message, fields=fields)


async def phone_form(_: web.Request) -> web.Response:
    """The page staff type phone orders into; it posts to /webhooks/phone."""
    return web.Response(text=_form_page(), content_type="text/html")


async def health(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def add_routes(app: web.Application, publisher: AsyncPublisher) -> None:
    app[PUBLISHER] = publisher
    app[CONNECTORS] = {}
    app.router.add_post("/webhooks/{channel}", receive)
    app.router.add_get("/healthz", health)
    app.router.add_get("/phone", phone_form)
