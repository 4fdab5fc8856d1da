"""HTTP intake: `POST /webhooks/{channel}` answers 2xx only after Kafka acknowledged the event.

- 200 with the order id: the event is on the intake topic (acks=all, idempotent producer);
- 400 with the reason and field: the payload cannot become an order — including one beyond the
  edge's bounds (connectors/limits.py: JSON nested too deep, a number of too many digits, a text
  too long, a time outside `OMS_INTAKE_WINDOW` around its receipt); 401: bad signature; 413: a
  body over `MAX_BODY_BYTES`, or an order too large for a Kafka message. Each after the raw
  bytes are on the dead-letter topic (a body over the limit cut to it, with its full size and
  SHA-256 digest in the reason), so nothing is lost;
- 404: no connector for that channel; 503: Kafka did not acknowledge, or verifying and parsing
  took longer than `PARSE_BUDGET_S` (the bytes are on the dead-letter topic; the channel should
  retry; nothing was acknowledged).

The body is read here, in chunks, not by aiohttp, whose `client_max_size` would answer a bare
413 and keep nothing. Verifying and parsing run in a small pool of threads (`PARSER_THREADS`),
never on the event loop: every other route is served while a large payload is parsed.

Form posts (`application/x-www-form-urlencoded`, e.g. the phone-order form) reach the connector
as a flat JSON object of their fields.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import logging
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from urllib.parse import parse_qsl

from aiohttp import web
from confluent_kafka import KafkaException

from connectors import limits
from connectors.base import ChannelEvent, Connector, PayloadRejected, SignatureRejected
from connectors.registry import UnknownChannel, connector_for
from events.codec import CodecError
from events.models import utc_now
from infra.http import problem
from infra.publisher import AsyncPublisher, PublishError
from infra.settings import Settings, get_settings

LOG = logging.getLogger(__name__)
MAX_BODY_BYTES = limits.MAX_BODY_BYTES
# A body over the limit is still read, for its size and digest, up to this much: then the
# connection is given up and the reason says the size is at least this.
READ_AT_MOST = 16 << 20
PARSE_BUDGET_S = 2.0
PARSER_THREADS = 4
PUBLISHER = web.AppKey("publisher", AsyncPublisher)
CONNECTORS = web.AppKey("connectors", dict)
PARSERS = web.AppKey("parsers", ThreadPoolExecutor)
PARSE_BUDGET = web.AppKey("parse_budget_s", float)
WINDOW = web.AppKey("intake_window", tuple)
_FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class _Body:
    """A request body as read: its first bytes (all of it, unless it is over the limit), and
    the size and SHA-256 digest of everything read."""

    kept: bytes
    size: int
    sha256: str

    @property
    def whole(self) -> bool:
        return self.size == len(self.kept)


async def _read(request: web.Request) -> _Body:
    digest, kept, size = hashlib.sha256(), bytearray(), 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
        if len(kept) <= MAX_BODY_BYTES:
            kept += chunk[: MAX_BODY_BYTES + 1 - len(kept)]
        if size > READ_AT_MOST:
            break
    if size > MAX_BODY_BYTES:
        del kept[MAX_BODY_BYTES:]
    return _Body(bytes(kept), size, digest.hexdigest())


def _connector(app: web.Application, channel: str) -> Connector:
    connectors: dict[str, Connector] = app[CONNECTORS]
    if channel not in connectors:
        connectors[channel] = connector_for(channel)
    return connectors[channel]


async def receive(request: web.Request) -> web.Response:
    response = await _receive(request)
    if request.content_type != _FORM:
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
    body = await _read(request)
    refuse = partial(
        _refuse,
        request.app[PUBLISHER],
        source=channel,
        source_ref=f"webhook:{request.headers.get('X-Request-Id') or uuid.uuid4()}",
    )
    if not body.whole:
        at_least = "at least " if body.size > READ_AT_MOST else ""
        return await refuse(
            413,
            f"a body of {at_least}{body.size:,} bytes: at most {MAX_BODY_BYTES:,} are taken",
            raw=body.kept,
            size=body.size,
            sha256=body.sha256,
        )
    judge = partial(
        _judge,
        connector,
        body.kept,
        form_charset=(request.charset or "utf-8") if request.content_type == _FORM else None,
        headers=request.headers,
        received_at=utc_now(),
        window=request.app[WINDOW],
    )
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(request.app[PARSE_BUDGET]):
            payload, outcome = await loop.run_in_executor(request.app[PARSERS], judge)
    except TimeoutError:
        budget = request.app[PARSE_BUDGET]
        return await refuse(503, f"not parsed within {budget:g} s: try again", raw=body.kept)
    except Exception as exc:  # noqa: BLE001 - a connector's bug still loses nothing
        LOG.exception("%s connector failed on a payload", channel)
        return await refuse(500, f"the {channel} connector failed: {exc!r}", raw=body.kept)
    if isinstance(outcome, PayloadRejected):
        status = 401 if isinstance(outcome, SignatureRejected) else 400
        return await refuse(status, outcome.reason, field=outcome.field, raw=payload)
    try:
        await request.app[PUBLISHER].intake(outcome)
    except CodecError as exc:  # the contract cannot carry what the connector made of it
        return await refuse(400, f"the order cannot be encoded: {exc}", raw=payload)
    except KafkaException as exc:
        if limits.too_large_for_kafka(exc):
            return await refuse(413, "the order is larger than a Kafka message", raw=payload)
        return problem(503, f"Kafka did not take the order: {exc}")
    except PublishError as exc:
        return problem(503, f"Kafka did not acknowledge the order: {exc}")
    return web.json_response(
        {
            "order_id": outcome.order_id,
            "event_id": outcome.event_id,
            "event_type": outcome.event_type,
        }
    )


def _judge(
    connector: Connector,
    body: bytes,
    *,
    form_charset: str | None,
    headers: Mapping[str, str],
    received_at: datetime,
    window: tuple[timedelta, timedelta],
) -> tuple[bytes, ChannelEvent | PayloadRejected]:
    """In a parser thread: the payload the connector reads (a form post as its JSON object),
    and the event it makes of it, or why it was refused."""
    payload = body
    try:
        if form_charset is not None:
            payload = _form_as_json(body, form_charset)
        connector.verify(headers, payload)
        event = connector.parse(payload, received_at=received_at, headers=headers)
        limits.check_times(event, received_at=received_at, window=window)
    except PayloadRejected as rejected:
        return payload, rejected
    return payload, event


def _form_as_json(body: bytes, charset: str) -> bytes:
    """A form post's fields as one flat JSON object (the last of a repeated field wins)."""
    try:
        fields = parse_qsl(body.rstrip().decode(charset), keep_blank_values=True, encoding=charset)
    except (LookupError, UnicodeDecodeError):
        raise PayloadRejected(f"the form is not {charset} text") from None
    return json.dumps(dict(fields), ensure_ascii=False).encode()


async def _refuse(
    publisher: AsyncPublisher,
    status: int,
    reason: str,
    *,
    source: str,
    source_ref: str,
    raw: bytes,
    field: str | None = None,
    size: int | None = None,
    sha256: str | None = None,
) -> web.Response:
    """Dead-letter `raw` with why, then answer `status` with the reason and the letter's id."""
    letter = limits.dead_letter(
        source=source,
        source_ref=source_ref,
        reason=f"{field}: {reason}" if field else reason,
        raw=raw,
        size=size,
        sha256=sha256,
    )
    try:
        await publisher.dead_letter(letter)
    except (PublishError, KafkaException) as kafka:
        return problem(503, f"rejected, and the dead-letter topic is unavailable: {kafka}")
    shown = limits.shorten(reason, limits.MAX_REASON_CHARS)
    return problem(status, shown, field=field, dead_letter_id=letter.dead_letter_id)


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


def add_routes(
    app: web.Application, publisher: AsyncPublisher, settings: Settings | None = None
) -> None:
    app[PUBLISHER] = publisher
    app[CONNECTORS] = {}
    app[WINDOW] = (settings or get_settings()).intake_window
    app[PARSE_BUDGET] = PARSE_BUDGET_S
    parsers = app[PARSERS] = ThreadPoolExecutor(PARSER_THREADS, thread_name_prefix="webhook")

    async def stop_parsers(_: web.Application) -> None:
        parsers.shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(stop_parsers)
    app.router.add_post("/webhooks/{channel}", receive)
    app.router.add_get("/healthz", health)
    app.router.add_get("/phone", phone_form)
