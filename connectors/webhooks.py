"""HTTP intake: `POST /webhooks/{channel}` answers 2xx only after Kafka acknowledged the event.

- 200 with the order id: the event is on the intake topic (acks=all, idempotent producer);
- 400 with the reason and field: the payload cannot become an order — including one beyond the
  edge's bounds (connectors/limits.py: JSON nested too deep, a number of too many digits, a text
  too long, a time outside `OMS_INTAKE_WINDOW` around its receipt); 401: bad signature; 413: a
  body over `MAX_BODY_BYTES`, or an order too large for a Kafka message. Each after the raw
  bytes are on the dead-letter topic (a body over the limit cut to it, with its full size and
  SHA-256 digest in the reason), so nothing is lost;
- 404: no connector for that channel, a channel that is not pushed (Tmall and JD orders are
  polled: `oms poll`), or a pushed one that verifies no signature (fail closed); 503: Kafka did
  not acknowledge, or verifying and parsing took longer than `PARSE_BUDGET_S` (the bytes are on
  the dead-letter topic; the channel should retry; nothing was acknowledged).

Authenticity (docs/connectors.md, "Signatures"). Every pushed channel verifies its platform's
signature with its secret, `OMS_<CHANNEL>_SECRET`; unset or empty, everything is refused (401,
and `oms api` will not start without `--allow-missing-webhook-secrets`). The phone channel is
staff typing: it is in `STAFF_ONLY_CHANNELS`, which the app's access middleware reads to demand
a staff login for `POST /webhooks/phone` (this module checks no logins). A message refused as
not authentic — forged, unsigned, or replayed — is dead-lettered `replayable: false`, with the
headers its connector verifies, and `oms dlq replay` never sends it on.

Replays. Where the signature covers a time (Meituan's `timestamp`, Ele.me's `timestamp`, WeChat
Pay's `Wechatpay-Timestamp`: `Connector.signed_at`), a message signed more than
`SIGNATURE_WINDOW` (5 minutes) before or after its receipt is refused: 401, a replay (or a clock
far off). Within the window the platforms retry what they think was not received, so an exact
re-send is not an attack: a message verified and acknowledged is remembered (`Recent`: its
channel, kept headers and body digest) until its window closes, and the same message again is
answered 200 with the first answer and `"duplicate": true`, without publishing it twice (until
its signed time, or its receipt where no time is signed, is a window old). The memory is the
process's own: a re-send reaching another `oms api` process is published again, and the
pipeline takes it once by its deterministic event id. The
web shop (Shopify), WooCommerce and Square sign no time: a captured message of theirs verifies
forever, and is harmless because the same body makes the same event id, which the pipeline
takes once (connectors/base.py).

The body is read here, in chunks, not by aiohttp, whose `client_max_size` would answer a bare
413 and keep nothing. Verifying and parsing run in a small pool of threads (`PARSER_THREADS`),
never on the event loop: every other route is served while a large payload is parsed.

Form posts (`application/x-www-form-urlencoded`, e.g. the phone-order form) reach the connector
as a flat JSON object of their fields.

A platform's other pushes — cancellations, refund requests and their outcome, rider status
(`Connector.parse_update`; docs/connectors.md, "Inbound sync") — arrive at
`POST /webhooks/{channel}/{kind}` (a callback URL per kind, `Connector.updates`) or at the
channel's own URL, are checked as orders are, and go to the order-commands topic for the order
agent: 200 once Kafka has the update.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from urllib.parse import parse_qsl

from aiohttp import web
from confluent_kafka import KafkaException

from connectors import limits
from connectors.base import (
    ChannelEvent,
    Connector,
    PayloadRejected,
    PlatformUpdate,
    SecretMissing,
    SignatureRejected,
    StaleSignature,
)
from connectors.registry import UnknownChannel, available, connector_for
from events.codec import CodecError
from events.models import OrderModified, OrderReceived, utc_now
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
SIGNATURE_WINDOW_S = 300.0
SIGNATURE_WINDOW = web.AppKey("signature_window", timedelta)
COMMANDS_TOPIC = web.AppKey("order_commands", str)
_FORM = "application/x-www-form-urlencoded"
# Channels whose orders staff type in: served to a staff login only (the app's access
# middleware reads these; a platform has no login, and this module checks none).
STAFF_ONLY_CHANNELS = frozenset({"phone"})
STAFF_ONLY_PATHS = frozenset(f"/webhooks/{channel}" for channel in STAFF_ONLY_CHANNELS)


class Recent:
    """The messages acknowledged within the signature window: an exact re-send (a platform's
    retry) is answered as the first time was, not published twice. At most `size` are kept, the
    oldest forgotten first (measured: 100,000 take 42 MiB; a key and its lookup 5 µs); one past
    its window is not answered from any more. One forgotten early is published again, and taken
    once downstream by its deterministic event id."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._answers: OrderedDict[str, tuple[datetime, dict[str, object]]] = OrderedDict()

    def get(self, key: str, *, now: datetime) -> dict[str, object] | None:
        kept = self._answers.get(key)
        if kept is None or kept[0] < now:
            return None
        return kept[1]

    def remember(self, key: str, answer: dict[str, object], *, until: datetime) -> None:
        self._answers[key] = (until, answer)
        self._answers.move_to_end(key)
        while len(self._answers) > self.size:
            self._answers.popitem(last=False)


RECENT = web.AppKey("recent", Recent)


def kept_headers(connector: Connector, headers: Mapping[str, str]) -> dict[str, str]:
    """The request headers the connector verifies and reads, as a dead letter keeps them."""
    wanted = {name.lower() for name in connector.kept_headers}
    return {name: value for name, value in headers.items() if name.lower() in wanted}


def _message_key(channel: str, kept: Mapping[str, str], digest: str) -> str:
    signed = "\n".join(f"{k.lower()}:{v}" for k, v in sorted(kept.items()))
    return hashlib.sha256(f"{channel}\n{signed}\n{digest}".encode(errors="replace")).hexdigest()


def missing_secrets() -> dict[str, list[str]]:
    """Each pushed, signed channel's settings that are not set (`oms api`'s start check)."""
    missing = {}
    for name, connector_class in sorted(available().items()):
        if connector_class.delivery != "webhook" or not connector_class.signed:
            continue
        if needed := connector_class().missing_settings():
            missing[name] = needed
    return missing


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
    kind = request.match_info.get("kind")  # a platform's other push: /webhooks/{channel}/{kind}
    try:
        connector = _connector(request.app, channel)
    except UnknownChannel as exc:
        return problem(404, str(exc))
    if connector.delivery == "polled":
        return problem(404, f"{channel} orders are polled from the platform, never pushed here")
    if connector.delivery == "webhook" and not connector.signed:
        return problem(404, f"{channel} verifies no signature: it is not served as a webhook")
    if kind is not None and kind not in connector.updates:
        served = ", ".join(connector.updates) or "none"
        return problem(404, f"{channel} pushes no {kind!r} here (served: {served})")
    body = await _read(request)
    kept = kept_headers(connector, request.headers)
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4()
    refuse = partial(
        _refuse,
        request.app[PUBLISHER],
        source=channel,
        source_ref=f"webhook:{request_id}" if kind is None else f"webhook/{kind}:{request_id}",
        headers=kept,
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
    received_at = utc_now()
    recent = request.app[RECENT]
    key = _message_key(channel if kind is None else f"{channel}/{kind}", kept, body.sha256)
    if connector.signed and (first := recent.get(key, now=received_at)) is not None:
        return web.json_response(first | {"duplicate": True})
    judge = partial(
        _judge,
        connector,
        body.kept,
        kind=kind,
        form_charset=(request.charset or "utf-8") if request.content_type == _FORM else None,
        headers=request.headers,
        received_at=received_at,
        window=request.app[WINDOW],
        signature_window=request.app[SIGNATURE_WINDOW],
    )
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(request.app[PARSE_BUDGET]):
            payload, outcome, good_until = await loop.run_in_executor(request.app[PARSERS], judge)
    except TimeoutError:
        budget = request.app[PARSE_BUDGET]
        return await refuse(503, f"not parsed within {budget:g} s: try again", raw=body.kept)
    except Exception as exc:  # noqa: BLE001 - a connector's bug still loses nothing
        LOG.exception("%s connector failed on a payload", channel)
        return await refuse(500, f"the {channel} connector failed: {exc!r}", raw=body.kept)
    if isinstance(outcome, PayloadRejected):
        status = 401 if isinstance(outcome, SignatureRejected) else 400
        return await refuse(
            status,
            outcome.reason,
            field=outcome.field,
            raw=payload,
            replayable=not_forged(outcome),
        )
    try:
        if isinstance(outcome, OrderReceived | OrderModified):
            await request.app[PUBLISHER].intake(outcome)
        else:  # a platform's update: for the order agent, with the people's and stores' commands
            await request.app[PUBLISHER].publish(request.app[COMMANDS_TOPIC], outcome)
    except CodecError as exc:  # the contract cannot carry what the connector made of it
        return await refuse(400, f"the order cannot be encoded: {exc}", raw=payload)
    except KafkaException as exc:
        if limits.too_large_for_kafka(exc):
            return await refuse(413, "the order is larger than a Kafka message", raw=payload)
        return problem(503, f"Kafka did not take the order: {exc}")
    except PublishError as exc:
        return problem(503, f"Kafka did not acknowledge the order: {exc}")
    answer: dict[str, object] = {
        "order_id": outcome.order_id,
        "event_id": outcome.event_id,
        "event_type": outcome.event_type,
    }
    if connector.signed:
        recent.remember(key, answer, until=good_until)
    return web.json_response(answer)


def not_forged(rejected: PayloadRejected) -> bool:
    """Whether a refused message may be replayed from the dead-letter topic: anything but a
    signature that failed (forged, unsigned, or outside its window). A message refused only
    because the channel's secret was not set is verified again when replayed."""
    return not isinstance(rejected, SignatureRejected) or isinstance(rejected, SecretMissing)


def _judge(
    connector: Connector,
    body: bytes,
    *,
    kind: str | None = None,
    form_charset: str | None,
    headers: Mapping[str, str],
    received_at: datetime,
    window: tuple[timedelta, timedelta],
    signature_window: timedelta,
) -> tuple[bytes, ChannelEvent | PlatformUpdate | PayloadRejected, datetime]:
    """In a parser thread: the payload the connector reads (a form post as its JSON object),
    the event it makes of it, or why it was refused, and until when the same message would be
    taken (a window after its signed time, or after its receipt where no time is signed). A
    push to `/webhooks/{channel}/{kind}` (`kind`), or one to the channel's own URL that its
    connector reads as an update, is a `PlatformUpdate`; anything else at the channel's own
    URL is an order."""
    payload, good_until = body, received_at + signature_window
    try:
        if form_charset is not None:
            payload = _form_as_json(body, form_charset)
        if kind is None:
            connector.verify(headers, payload)
        else:
            connector.verify_update(kind, headers, payload)
        good_until = check_signed_time(connector, headers, payload, received_at, signature_window)
        update = connector.parse_update(
            payload, kind=kind, received_at=received_at, headers=headers
        )
        if update is not None:
            _check_update_time(update, received_at=received_at, window=window)
            return payload, update, good_until
        if kind is not None:
            raise PayloadRejected(f"not a {connector.name} {kind} push")
        event = connector.parse(payload, received_at=received_at, headers=headers)
        limits.check_times(event, received_at=received_at, window=window)
    except PayloadRejected as rejected:
        return payload, rejected, good_until
    return payload, event, good_until


def _check_update_time(
    update: PlatformUpdate, *, received_at: datetime, window: tuple[timedelta, timedelta]
) -> None:
    """An update's time (when the platform says it happened) within `OMS_INTAKE_WINDOW` of its
    receipt, as an order's are."""
    before, after = window
    if not received_at - before <= update.occurred_at <= received_at + after:
        raise PayloadRejected(
            f"{update.occurred_at.isoformat()} is more than the intake window from its receipt "
            f"at {received_at.isoformat(timespec='seconds')} (OMS_INTAKE_WINDOW)",
            field="occurred_at",
        )


def check_signed_time(
    connector: Connector,
    headers: Mapping[str, str],
    payload: bytes,
    received_at: datetime,
    window: timedelta,
) -> datetime:
    """Refuse a verified message whose signed time is further than `window` from its receipt;
    else until when it would be taken: a window after its signed time (or its receipt)."""
    signed_at = connector.signed_at(headers, payload)
    if signed_at is None:
        return received_at + window
    if abs(received_at - signed_at) > window:
        raise StaleSignature(
            f"signed at {signed_at:%Y-%m-%d %H:%M:%S} UTC, received {received_at:%H:%M:%S}: "
            f"more than {window.total_seconds() / 60:g} minutes apart (a replay?)",
            field="timestamp",
        )
    return signed_at + window


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
    headers: Mapping[str, str] | None = None,
    replayable: bool = True,
) -> web.Response:
    """Dead-letter `raw` with why (and the headers to verify it again), then answer `status`
    with the reason and the letter's id."""
    letter = limits.dead_letter(
        source=source,
        source_ref=source_ref,
        reason=f"{field}: {reason}" if field else reason,
        raw=raw,
        size=size,
        sha256=sha256,
        headers=headers,
        replayable=replayable,
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
    app[SIGNATURE_WINDOW] = timedelta(seconds=SIGNATURE_WINDOW_S)
    app[RECENT] = Recent()
    app[COMMANDS_TOPIC] = (settings or get_settings()).topics.order_commands
    parsers = app[PARSERS] = ThreadPoolExecutor(PARSER_THREADS, thread_name_prefix="webhook")

    async def stop_parsers(_: web.Application) -> None:
        parsers.shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(stop_parsers)
    app.router.add_post("/webhooks/{channel}", receive)
    app.router.add_post("/webhooks/{channel}/{kind}", receive)
    app.router.add_get("/healthz", health)
    app.router.add_get("/phone", phone_form)
