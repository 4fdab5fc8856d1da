"""`oms track run`: following shipments to the door (docs/carriers.md, "Tracking").

The tracker folds the order log into the shipments that are on their way (`ShipmentCreated`
opens one; `OrderDelivered`, `OrderCancelled` and `OrderCompleted` close it) and asks each
shipment's carrier what happened to it every `OMS_TRACK_POLL_S`, and reads the carriers'
pushes that `POST /carriers/{carrier}/push` verified and put on `oms.carrier-updates.v1`.
Each tracking event it has not seen becomes a `ShipmentStatusUpdated` command to the order
agent (normalised status, the carrier's own word, the place); the first `delivered` also an
`OrderDelivered`.

Exactly once, across restarts: a command's id is derived from the carrier, the tracking
number and the event (its carrier status and time), and the ids already on the order log are
the fold's `seen`. A command sent but not yet logged when the tracker stops is sent again with
the same id, which the order agent takes once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from connectors.carriers.base import Carrier, PushRefused
from connectors.outbound import CallFailed
from events.codec import AvroCodec, CodecError
from events.models import (
    Actor,
    ActorKind,
    DeadLetter,
    OrderCancelled,
    OrderCompleted,
    OrderDelivered,
    OrderEvent,
    ShipmentCreated,
    ShipmentStatusUpdated,
    deterministic_id,
    utc_now,
)
from events.shipping import Shipment, TrackingEvent, TrackingStatus
from infra.http import problem
from infra.metrics import Health
from infra.publisher import AsyncPublisher, Publisher
from infra.settings import Settings
from oms.outbox import from_the_beginning

log = logging.getLogger(__name__)
TRACKER = Actor(kind=ActorKind.SYSTEM, id="tracker")
PENDING_KEPT = 10_000  # pushes for shipments not on the log yet, kept until they are


@dataclass
class Tracked:
    """One shipment on its way."""

    created: ShipmentCreated
    seen: set[str] = field(default_factory=set)  # command ids already on the log
    delivered: bool = False
    polled_at: float | None = None  # monotonic; None: never asked

    @property
    def key(self) -> str:
        return f"{self.created.carrier}:{self.created.tracking_number}"

    def shipment(self) -> Shipment:
        created = self.created
        return Shipment(
            carrier=created.carrier,
            reference=f"{created.order_id}@{created.location or ''}",
            tracking_number=created.tracking_number,
            service=created.service or "",
            price=created.cost,
            currency=created.cost_currency,
        )


def status_command(tracked: Tracked, event: TrackingEvent) -> ShipmentStatusUpdated:
    """The order agent's command for one tracking event; its id from what the carrier said."""
    created = tracked.created
    event_id = deterministic_id(
        "shipment-status", tracked.key, event.carrier_status, event.at.isoformat()
    )
    return ShipmentStatusUpdated(
        event_id=event_id,
        order_id=created.order_id,
        sequence=1,
        occurred_at=event.at,
        recorded_at=utc_now(),
        correlation_id=created.correlation_id,
        causation_id=created.event_id,
        actor=TRACKER,
        channel=created.channel,
        external_id=created.external_id,
        shipment_id=created.shipment_id,
        tracking_number=created.tracking_number,
        status=event.status.value,
        description=event.description,
        place=event.place,
        carrier=created.carrier,
        carrier_status=event.carrier_status,
    )


def delivered_command(tracked: Tracked, event: TrackingEvent) -> OrderDelivered:
    created = tracked.created
    return OrderDelivered(
        event_id=deterministic_id("shipment-delivered", tracked.key),
        order_id=created.order_id,
        sequence=1,
        occurred_at=event.at,
        recorded_at=utc_now(),
        correlation_id=created.correlation_id,
        causation_id=created.event_id,
        actor=TRACKER,
        channel=created.channel,
        external_id=created.external_id,
        proof=f"{created.carrier} {event.carrier_status}"[:200],
    )


def updates_record(carrier: str, events: list[TrackingEvent]) -> bytes:
    """What `POST /carriers/{carrier}/push` puts on the carrier updates topic."""
    return json.dumps(
        {"carrier": carrier, "events": [e.model_dump(mode="json") for e in events]},
        ensure_ascii=False,
    ).encode()


def read_updates_record(raw: bytes) -> tuple[str, list[TrackingEvent]]:
    value = json.loads(raw)
    return str(value["carrier"]), [TrackingEvent.model_validate(e) for e in value["events"]]


@dataclass
class TrackerStats:
    polled: int = 0
    poll_failures: int = 0
    pushed: int = 0
    commands: int = 0
    unreadable: int = 0


class Tracker:
    def __init__(
        self,
        settings: Settings,
        *,
        carriers: Mapping[str, Carrier],
        poll_every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings, self.carriers = settings, carriers
        self.poll_every_s, self.clock = poll_every_s, clock
        self.codec = AvroCodec.for_registry(settings.schema_registry_url)  # no keys: none needed
        self.publisher = Publisher(settings)
        self.open: dict[str, Tracked] = {}  # by carrier:tracking number
        self.by_order: dict[str, list[str]] = {}
        self.pending: dict[str, list[TrackingEvent]] = {}  # pushes before their shipment
        self.stats = TrackerStats()
        self.caught_up = False
        # Ready (/readyz) once the fold has read the logs to their end (carriers are asked then).
        self.health = Health(why_not_ready=self._why_not_ready)

    def _why_not_ready(self) -> str | None:
        return None if self.caught_up else "reading the order log and the carriers' pushes"

    def run(self, *, until: Callable[[Tracker], bool] | None = None) -> TrackerStats:
        topics = [self.settings.topics.orders, self.settings.topics.carrier_updates]
        for chunk in from_the_beginning(self.settings, topics, group="tracker", label="tracker"):
            self.health.beat()
            for raw, where in chunk:
                if where.startswith(f"{self.settings.topics.carrier_updates}/"):
                    self._pushed(raw, where)
                else:
                    self._logged(raw, where)
            # Carriers are asked once the fold has read the log to its end (the first empty
            # chunk): before that a status already told would look new.
            self.caught_up = self.caught_up or not chunk
            if self.caught_up:
                self._poll_due()
            self.publisher.flush(30)
            if until is not None and until(self):
                break
        return self.stats

    # -- the fold

    def _logged(self, raw: bytes, where: str) -> None:
        try:
            event = self.codec.decode(raw, where=where)
        except CodecError:
            return  # not ours to fold: the order agent dead-letters bad input
        if isinstance(event, ShipmentCreated):
            tracked = Tracked(created=event)
            if tracked.key not in self.open:
                self.open[tracked.key] = tracked
                self.by_order.setdefault(event.order_id, []).append(tracked.key)
                self._report(tracked, self.pending.pop(tracked.key, []))
        elif isinstance(event, ShipmentStatusUpdated) and event.carrier:
            found = self.open.get(f"{event.carrier}:{event.tracking_number}")
            if found is not None:
                found.seen.add(event.event_id)
        elif isinstance(event, OrderDelivered | OrderCancelled | OrderCompleted):
            for key in self.by_order.pop(event.order_id, []):
                self.open.pop(key, None)
        elif isinstance(event, OrderEvent):
            return

    def _pushed(self, raw: bytes, where: str) -> None:
        try:
            carrier, events = read_updates_record(raw)
        except (ValueError, KeyError, TypeError) as exc:
            self.stats.unreadable += 1
            log.warning("tracker: %s cannot be read: %s", where, exc)
            return
        self.stats.pushed += len(events)
        for event in events:
            key = f"{carrier}:{event.tracking_number}"
            tracked = self.open.get(key)
            if tracked is not None:
                self._report(tracked, [event])
            elif len(self.pending) < PENDING_KEPT:
                self.pending.setdefault(key, []).append(event)

    # -- asking the carriers

    def _poll_due(self) -> None:
        now = self.clock()
        for tracked in list(self.open.values()):
            asked = tracked.polled_at
            if tracked.delivered or (asked is not None and now - asked < self.poll_every_s):
                continue
            carrier = self.carriers.get(tracked.created.carrier)
            if carrier is None:
                continue  # not configured here: its pushes still count
            tracked.polled_at = now
            try:
                events = carrier.track(tracked.shipment())
            except CallFailed as exc:
                self.stats.poll_failures += 1
                log.warning("tracker: %s not tracked: %s", tracked.key, exc)
                continue
            self.stats.polled += 1
            self._report(tracked, events)

    def _report(self, tracked: Tracked, events: list[TrackingEvent]) -> None:
        topic = self.settings.topics.order_commands
        for event in sorted(events, key=lambda e: e.at):
            if event.status is TrackingStatus.CREATED:
                continue  # the label itself: ShipmentCreated said it
            command = status_command(tracked, event)
            if command.event_id not in tracked.seen:
                tracked.seen.add(command.event_id)
                self.publisher.publish(topic, command)
                self.stats.commands += 1
            if event.status is TrackingStatus.DELIVERED and not tracked.delivered:
                tracked.delivered = True
                self.publisher.publish(topic, delivered_command(tracked, event))
                self.stats.commands += 1


# ---------------------------------------------------------------- pushes (`oms api`)

CARRIERS = web.AppKey("carriers", dict)
PUSH_PUBLISHER = web.AppKey("carrier-push-publisher", AsyncPublisher)
SETTINGS_KEY = web.AppKey("tracking-settings", Settings)


async def receive_push(request: web.Request) -> web.Response:
    """`POST /carriers/{carrier}/push`: a carrier's tracking push, its authenticity checked by
    the carrier's adapter (a signature, or SF's signed route query) off the event loop, put on
    the carrier updates topic for `oms track run`, then answered as the carrier expects. One
    that does not verify is dead-lettered with its raw bytes and answered 401."""
    name = request.match_info["carrier"]
    carrier: Carrier | None = request.app[CARRIERS].get(name)
    if carrier is None:
        return problem(404, f"no carrier {name!r} is configured here (OMS_CARRIERS)")
    body = await request.read()
    publisher = request.app[PUSH_PUBLISHER]
    headers = {key.lower(): value for key, value in request.headers.items()}
    try:
        events = await asyncio.to_thread(carrier.parse_push, body, headers)
    except PushRefused as exc:
        letter = DeadLetter.of(
            source=f"carrier:{name}", source_ref="push", reason=f"push refused: {exc}", raw=body
        )
        await publisher.dead_letter(letter)
        return problem(401, f"push refused: {exc}")
    except CallFailed as exc:  # the carrier could not be asked to confirm it: push again
        return problem(503, f"the push could not be confirmed now: {exc}")
    topic = request.app[SETTINGS_KEY].topics.carrier_updates
    by_number: dict[str, list[TrackingEvent]] = {}
    for event in events:
        by_number.setdefault(event.tracking_number, []).append(event)
    for number, told in by_number.items():
        await publisher.produce(topic, f"{name}:{number}", updates_record(name, told))
    return web.Response(body=carrier.push_received, content_type="application/json")


def add_routes(app: web.Application, publisher: AsyncPublisher, settings: Settings) -> None:
    """The carriers' push route, for the carriers of OMS_CARRIERS (none: every push is 404)."""
    from oms.shipping import carriers_from_settings, load_config

    carriers: dict[str, Carrier] = {}
    if settings.carriers:
        carriers = carriers_from_settings(settings, load_config(settings.shipping_file))
    app[CARRIERS] = carriers
    app[PUSH_PUBLISHER] = publisher
    app[SETTINGS_KEY] = settings
    app.router.add_post("/carriers/{carrier}/push", receive_push)
