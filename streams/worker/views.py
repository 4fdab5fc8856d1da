"""Shared views every worker keeps of the whole system: the catalogue, stock available to
promise per `sku@location`, orders per location and capacity slot, and customers' history.

They are read in a background thread from all partitions of the catalogue, inventory and
order topics. That thread and the event loop both change them (the worker notes its own
decisions at once) and the event loop walks them while deciding, so every change and every
decision that reads them holds the views' lock (`reading()`): the thread takes it per event,
the worker per input. They are eventually consistent and used only where that is safe: routing may
pick a location whose stock just went — the ledger, which is exact, then refuses the
reservation and the order is re-routed; fraud velocity and capacity are soft limits. The
worker also notes its own decisions at once, so it does not wait for them to come back.

A worker restarting reads them from a snapshot (`cut`, written by the worker that holds
partition 0 of the order log: streams/worker/snapshots.py) and the topics from the offsets it
names on, instead of from their start. The cut is taken under the lock, with the offsets the
thread had folded through (a fold is idempotent, so an event read again after a restore
changes nothing); the worker writes it only once Kafka confirmed every output it had noted
by then, so a snapshot never holds a decision that did not reach the log.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

from events.codec import AvroCodec, CodecError
from events.models import (
    CATALOGUE_EVENTS,
    STOCK_EVENTS,
    CatalogueEvent,
    LocationPaused,
    LocationResumed,
    OrderAcceptedByStore,
    OrderCancelled,
    OrderCompleted,
    OrderDeclinedByStore,
    OrderDelivered,
    OrderEvent,
    OrderPickedUp,
    OrderReady,
    OrderReceived,
    OrderRejected,
    OrderRouted,
    StockEvent,
    stock_key,
)
from infra import collector
from infra.kafka import consumer_config
from infra.metrics import VIEWS_BEHIND
from streams import eta, inventory
from streams.catalogue import Catalogue, slot_start
from streams.customers import CustomerHistory

log = logging.getLogger(__name__)
# A store's open tickets (`open_tickets`): opened by its acceptance, closed by any of these.
TICKET_CLOSED = (
    OrderReady,
    OrderPickedUp,
    OrderDelivered,
    OrderCompleted,
    OrderCancelled,
    OrderRejected,
    OrderDeclinedByStore,
)
FOLDED = frozenset(
    {"OrderReceived", "OrderRouted"}
    | {kind.__name__ for kind in (*STOCK_EVENTS, *CATALOGUE_EVENTS)}
    | {kind.__name__ for kind in (OrderAcceptedByStore, *TICKET_CLOSED)}
)


class SharedViews:
    def __init__(self, *, catalogue: Catalogue, codec: AvroCodec) -> None:
        self.catalogue = catalogue
        self.codec = codec
        self.history = CustomerHistory()
        self.stock: dict[str, inventory.StockLevel] = {}
        self.routed: dict[tuple[str, datetime], set[str]] = defaultdict(set)
        self.auto_paused: set[str] = set()
        # Prep-time estimates: the newest model on the eta-models topic, and per order the
        # last sequence seen, its store while its ticket is open (None once closed) and when.
        self.prep_model: eta.PrepTimeModel | None = None
        self.tickets: dict[str, tuple[int, str | None, datetime]] = {}
        self.open_at: Counter[str] = Counter()
        self._eta_topic: str | None = None
        self._snapshot: Callable[[], bytes | memoryview | None] | None = None
        # The offset after the last event the thread folded, per topic partition, and how many
        # it folded since the views were cut last (or restored).
        self.positions: dict[tuple[str, int], int] = {}
        self.unsnapped = 0
        self.recut = False  # something was forgotten: cut again, however little was folded
        self.ready = threading.Event()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ what decisions read

    def available(self, sku: str, location: str) -> int:
        level = self.stock.get(stock_key(sku, location))
        return 0 if level is None else level.available_to_promise

    def load(self, now: datetime) -> Mapping[str, int]:
        """Orders routed to each location in the capacity slot `now` falls in (computed when
        asked: routing looks at a few candidates, and the counts move as orders are routed)."""
        return _Load(self, now)

    def open_tickets(self) -> Mapping[str, int]:
        """Tickets each store has accepted and not yet marked ready (nor given up)."""
        return self.open_at

    # ------------------------------------------------------------ what feeds them

    def reading(self) -> AbstractContextManager[Any]:
        """Hold while deciding with the views: nothing changes under the reader meanwhile."""
        return self._lock

    def note(self, event: object) -> None:
        """Fold one event into the views (idempotent: each view dedups by id)."""
        with self._lock:
            self._note(event)

    def note_prep_model(self, raw: bytes | None) -> None:
        """A model from the eta-models topic (a bad one is logged and the last one kept)."""
        if not raw:
            return
        try:
            model = eta.parse_model(raw)
        except ValueError:
            log.exception("views: not a prep-time model; keeping the last one")
            return
        with self._lock:
            current = self.prep_model
            if current is None or model.learned_at >= current.learned_at:
                self.prep_model = model

    def _ticket(self, event: OrderEvent) -> None:
        order_id = event.order_id
        seen = self.tickets.get(order_id)
        if seen is not None and seen[0] >= event.sequence:
            return  # noted already (the worker's own, read back), or older
        where = event.location if isinstance(event, OrderAcceptedByStore) else None
        if seen is not None and seen[1] is not None:
            self.open_at[seen[1]] -= 1
            if self.open_at[seen[1]] <= 0:
                del self.open_at[seen[1]]
        if where is not None:
            self.open_at[where] += 1
        self.tickets[order_id] = (event.sequence, where, event.occurred_at)

    def _note(self, event: object) -> None:
        if isinstance(event, (OrderAcceptedByStore, *TICKET_CLOSED)):
            self._ticket(event)
        elif isinstance(event, OrderReceived):
            self.history.record(event)
        elif isinstance(event, OrderRouted):
            location = self.catalogue.locations.get(event.location)
            if location is not None:
                self.routed[(location.id, slot_start(location, event.occurred_at))].add(
                    event.order_id
                )
        elif isinstance(event, StockEvent):
            key = stock_key(event.sku, event.location)
            level = self.stock.get(key) or inventory.empty(event.sku, event.location)
            if event.sequence > level.sequence:
                self.stock[key] = inventory.apply(level, event)
        elif isinstance(event, CatalogueEvent):
            self.catalogue = self.catalogue.apply(event)
            if isinstance(event, LocationPaused) and event.automatic:
                self.auto_paused.add(event.entity_id)
            elif isinstance(event, LocationResumed):
                self.auto_paused.discard(event.entity_id)

    def _fold(self, raw: bytes, key: bytes | None = None) -> None:
        kind = self.codec.event_type_of(raw)
        if kind is not None and kind not in FOLDED:
            return  # most of the order log: not needed here, so not decoded
        if kind == "OrderReceived" and key is not None:
            with self._lock:  # noted already (this worker wrote it): not opened again
                if self.history.holds(key.decode(errors="replace")):
                    return
        try:
            self.note(self.codec.decode(raw))
        except CodecError:
            pass  # bad bytes are the agents' to dead-letter
        except Exception:  # noqa: BLE001 - a view must not die on one event
            log.exception("views: could not fold an event")

    def forget_the_past(self, now: datetime, *, window: timedelta) -> None:
        """What the views keep of the past stays bounded (the worker's timer calls this):
        customers' velocity entries older than any screening looks back (twice fraud's
        `window`, and an hour for orders that arrive late; their norms and tiers stay),
        capacity slots gone by and tickets closed more than two hours ago."""
        with self._lock:
            self.history.prune(now - 2 * window - timedelta(hours=1))
        self.forget_before(now - timedelta(hours=2))

    def forget_before(self, now: datetime) -> None:
        """Drop capacity slots that have passed (memory stays bounded)."""
        with self._lock:
            for key in [k for k in self.routed if k[1] < now.replace(minute=0, second=0)]:
                del self.routed[key]
            # Closed tickets are kept a while against late duplicates; a ticket open half a
            # day was left on a screen: neither counts any more.
            stale = now - timedelta(hours=12)
            for order_id, (_, where, at) in list(self.tickets.items()):
                if (where is None and at < now) or at < stale:
                    del self.tickets[order_id]
                    if where is not None:
                        self.open_at[where] -= 1
                        if self.open_at[where] <= 0:
                            del self.open_at[where]

    # ------------------------------------------------------------ snapshots

    _STATE = ("history", "stock", "routed", "auto_paused", "tickets", "open_at", "catalogue")

    def size(self) -> int:
        return len(self.stock) + len(self.tickets) + self.history.size()

    def forget(self, customers: Collection[str], orders: Collection[str] = ()) -> int:
        """Customers (pseudonymous keys) and orders whose data keys were forgotten: their
        phone, address and device leave the velocity indexes (`CustomerHistory.forget`), and
        the next cut is taken at the next chance (`recut`), so the views' snapshot stops
        holding them too (the superseded one's chunks are tombstoned and compacted away)."""
        with self._lock:
            scrubbed = self.history.forget(customers, orders)
            if scrubbed:
                self.recut = True
            return scrubbed

    def cut(self) -> bytes:
        """The views and the offsets they were read through: copied under the lock (the
        containers only: what they hold is immutable), pickled after it — at a million orders
        the pickling takes a second or more, and the views' thread and the agents' decisions
        wait for nothing meanwhile. Called in a thread (`Worker.snapshot_views`)."""
        with self._lock:
            state = {
                "history": self.history.copy(),
                "stock": dict(self.stock),
                "routed": defaultdict(set, {key: set(ids) for key, ids in self.routed.items()}),
                "auto_paused": set(self.auto_paused),
                "tickets": dict(self.tickets),
                "open_at": Counter(self.open_at),
                "catalogue": self.catalogue,  # replaced, never changed (`Catalogue.apply`)
            }
            assert state.keys() == set(self._STATE), "a view the cut does not copy"
            positions = dict(self.positions)
            self.unsnapped = 0
            self.recut = False
        return pickle.dumps({"positions": positions, "state": state}, pickle.HIGHEST_PROTOCOL)

    def restore(self, blob: bytes | memoryview) -> None:
        """Views cut by `cut` (this version's: the snapshot's fingerprint says so)."""
        data = pickle.loads(blob)  # noqa: S301 - authenticated under the master key
        with self._lock:
            for name, value in data["state"].items():
                setattr(self, name, value)
            self.positions = dict(data["positions"])

    # ------------------------------------------------------------ the reading thread

    def start(
        self,
        *,
        bootstrap: str,
        topics: list[str],
        eta_topic: str | None = None,
        snapshot: Callable[[], bytes | memoryview | None] | None = None,
    ) -> None:
        """Follow `topics` (and the prep-time models on `eta_topic`) from their beginning, or
        from where the views of `snapshot` (asked in the thread) were cut."""
        self._eta_topic = eta_topic
        self._snapshot = snapshot
        if eta_topic is not None:
            topics = [*topics, eta_topic]
        self._thread = threading.Thread(
            target=self._run, args=(bootstrap, topics), name="oms-views", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self, bootstrap: str, topics: list[str]) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        config = consumer_config(
            bootstrap, group_id=f"views-{uuid.uuid4().hex}", **{"fetch.wait.max.ms": 20}
        )
        consumer = Consumer(config)
        # Until the views are read, the collector is paused (`infra.collector`): the snapshot
        # unpickles millions of objects (a million customers), and the collections they set
        # off walked all of them again and again, and the partitions' rebuilds beside them.
        catching_up = contextlib.ExitStack()
        catching_up.enter_context(collector.paused(freeze=True))

        def caught_up() -> None:
            catching_up.close()
            self.ready.set()

        try:
            self._restore_snapshot()
            ends: dict[tuple[str, int], int] = {}
            assignment = []
            for topic in topics:
                metadata = consumer.list_topics(topic, timeout=30).topics[topic]
                for partition in metadata.partitions:
                    start = self.positions.get((topic, partition), OFFSET_BEGINNING)
                    tp = TopicPartition(topic, partition, start)
                    assignment.append(tp)
                    _, high = consumer.get_watermark_offsets(tp, timeout=30)
                    if high > 0 and (start == OFFSET_BEGINNING or start < high):
                        ends[(topic, partition)] = high
            consumer.assign(assignment)
            if not ends:
                caught_up()
            while not self._stop.is_set():
                stamped = 0
                for message in consumer.consume(num_messages=5000, timeout=0.2):
                    if message.error() is None:
                        where = (message.topic() or "", message.partition() or 0)
                        if message.topic() == self._eta_topic:
                            self.note_prep_model(message.value())
                        else:
                            self._fold(message.value() or b"", message.key())
                            self.positions[where] = (message.offset() or 0) + 1
                            self.unsnapped += 1
                            stamped = message.timestamp()[1]
                        if where in ends and (message.offset() or 0) >= ends[where] - 1:
                            del ends[where]
                            if not ends:
                                caught_up()
                if stamped > 0:
                    VIEWS_BEHIND.set(max(0.0, time.time() - stamped / 1000))
        finally:
            catching_up.close()
            consumer.close()

    def _restore_snapshot(self) -> None:
        if self._snapshot is None:
            return
        catalogue = self.catalogue
        try:
            blob = self._snapshot()
            if blob is not None:
                self.restore(blob)
                log.info("views restored from a snapshot (%d partitions)", len(self.positions))
        except Exception:  # noqa: BLE001 - a snapshot only saves time: read from the start
            log.exception("views: the snapshot does not restore; reading from the start")
            with self._lock:
                self.catalogue = catalogue
                self.history = CustomerHistory()
                self.stock, self.tickets, self.positions = {}, {}, {}
                self.routed = defaultdict(set)
                self.auto_paused, self.open_at = set(), Counter()


class _Load(Mapping[str, int]):
    def __init__(self, views: SharedViews, now: datetime) -> None:
        self._views = views
        self._now = now

    def __getitem__(self, location_id: str) -> int:
        location = self._views.catalogue.locations.get(location_id)
        if location is None:
            raise KeyError(location_id)
        return len(self._views.routed.get((location_id, slot_start(location, self._now)), ()))

    def __iter__(self) -> Iterator[str]:
        return iter(self._views.catalogue.locations)

    def __len__(self) -> int:
        return len(self._views.catalogue.locations)
