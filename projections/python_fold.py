"""The projector's fold in Python: the reference (`BatchFold`, projections/fold.py).

Decodes each message with the Python codec and folds the events with `projections.orders.fold`
and `projections.stock.fold`, keeping the most recently used fold states. The projector uses it
where the native extension is not built, or with OMS_NATIVE_FOLD=0; the native fold is held to
it, table by table (tests/projections/test_native_fold.py).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from operator import itemgetter
from typing import Any

from confluent_kafka import Message

from events.bounds import out_of_bounds
from events.codec import AvroCodec, CodecError
from events.models import Event, OrderEvent, StockEvent
from infra import collector
from infra.poison import describe
from projections import orders, stock
from projections.fold import (
    DecodedBatch,
    FoldedBatch,
    HighWater,
    Partition,
    Rejected,
    Rows,
    StoredStates,
    ValueRows,
)
from projections.orders import OrderRow, Position, event_row, seconds
from projections.privacy import AnalystView
from projections.schema import (
    FULFILMENT_STAGES_COLUMNS,
    ORDER_ACTIVITY_COLUMNS,
    ORDER_EVENTS_COLUMNS,
    ORDER_LINES_COLUMNS,
    ORDERS_COLUMNS,
    STOCK_COLUMNS,
    STOCK_LEVELS_COLUMNS,
)
from projections.stock import StockLevel
from projections.store import ClickHouseStore, Row

__all__ = ["PythonFold"]

# A batch's events: the order log's and the stock ledger's, each with where it sits on Kafka.
Events = tuple[list[tuple[OrderEvent, Position]], list[tuple[StockEvent, Position]]]

log = logging.getLogger(__name__)


class _Rows(ValueRows):
    """A table's rows, inserted with the collector paused (see `infra.collector`)."""

    def insert(self, store: ClickHouseStore, table: str) -> None:
        with collector.paused():
            super().insert(store, table)


class _Cache(OrderedDict[Any, dict[str, Any]]):
    """Most recently used fold states; remembers whether it ever had to forget one."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.evicted = False

    def remember(self, key: Any, state: dict[str, Any]) -> None:
        self[key] = state
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)
            self.evicted = True


class PythonFold:
    """Events decoded by the Python codec, folded by `projections.orders` and `.stock`."""

    inserts_in_parallel = False

    def __init__(
        self,
        *,
        codec: AvroCodec,
        orders_topic: str,
        stock_topic: str,
        capacity: int,
        analyst: AnalystView | None = None,
    ) -> None:
        self.codec = codec
        self.analyst = analyst
        self.orders_topic = orders_topic
        self.stock_topic = stock_topic
        self.capacity = capacity
        self._orders = _Cache(capacity)
        self._stock = _Cache(capacity)
        self._complete = False

    def reset(self, *, complete: bool) -> None:
        self._orders = _Cache(self.capacity)
        self._stock = _Cache(self.capacity)
        self._complete = complete

    # ------------------------------------------------------------ decoding

    def decode(self, chunks: Iterable[list[Message]]) -> DecodedBatch[Events]:
        with collector.paused():
            return self._decode(chunks)

    def _decode(self, chunks: Iterable[list[Message]]) -> DecodedBatch[Events]:
        order_events: list[tuple[OrderEvent, Position]] = []
        stock_events: list[tuple[StockEvent, Position]] = []
        rejected: list[Rejected] = []
        ledger: dict[Partition, list[int]] = {}
        orders_topic, stock_topic = self.orders_topic, self.stock_topic
        decode = self.codec.decode
        for chunk in chunks:
            # Decoded as analysts may see it; a rejected message is dead-lettered as it came.
            shown = chunk if self.analyst is None else self.analyst.chunk(chunk)
            for message, seen in zip(chunk, shown, strict=True):
                where = Position(
                    message.topic() or "", message.partition() or 0, message.offset() or 0
                )
                key = (where.topic, where.partition)
                entry = ledger.get(key)
                if entry is None:
                    ledger[key] = [where.offset, 1]
                else:
                    entry[1] += 1
                    if where.offset > entry[0]:
                        entry[0] = where.offset
                raw = seen.value() or b""
                try:
                    event = decode(raw)
                    unstorable = out_of_bounds(event)
                    if unstorable is not None:
                        raise CodecError(f"{type(event).__name__}: {unstorable}")
                    if where.topic == orders_topic and isinstance(event, OrderEvent):
                        order_events.append((event, where))
                    elif where.topic == stock_topic and isinstance(event, StockEvent):
                        stock_events.append((event, where))
                    else:
                        raise CodecError(f"{type(event).__name__} does not belong on {where.topic}")
                except CodecError as exc:
                    rejected.append((*where, message.value() or b"", exc.reason))
        return DecodedBatch(
            (order_events, stock_events), rejected, ledger, len(order_events), len(stock_events)
        )

    # ------------------------------------------------------------ folding

    def fold(
        self, batch: DecodedBatch[Events], *, states: StoredStates, high_water: HighWater
    ) -> FoldedBatch:
        order_events, stock_events = batch.events
        with collector.paused():
            rejected: list[Rejected] = []
            tables, duplicates, orders_written = self._fold_orders(
                order_events, states, high_water, rejected
            )
            stock_tables, stock_duplicates = self._fold_stock(
                stock_events, states, high_water, rejected
            )
        tables.update(stock_tables)
        return FoldedBatch(tables, duplicates + stock_duplicates, orders_written, rejected)

    def _fold_orders(
        self,
        events: list[tuple[OrderEvent, Position]],
        stored: StoredStates,
        high_water: HighWater,
        rejected: list[Rejected],
    ) -> tuple[dict[str, Rows], int, int]:
        states = self._load_orders(events, stored)
        need_event = high_water.unwritten("order_events")
        need_lines = high_water.unwritten("order_lines")
        need_stages = high_water.unwritten("fulfilment_stages")
        need_activity = high_water.unwritten("order_activity_per_minute")
        event_rows: list[Row] = []
        # order_lines and fulfilment_stages are ReplacingMergeTree tables by (order_id, line_no)
        # and (order_id, entered_seq), read with FINAL: of the rows the batch makes for one key,
        # only the last (highest version) would ever be read, so only that one is written. The
        # tables' high-water marks stay those of the full rows: a row is dropped only for a
        # later one of the same batch.
        line_rows: dict[tuple[str, int], Row] = {}
        stage_rows: dict[tuple[str, int], Row] = {}
        activity: dict[tuple[Any, ...], list[int]] = {}
        changed: dict[str, tuple[dict[str, Any], Position]] = {}
        duplicates = 0
        fold = orders.fold
        for event, where in events:
            at = seconds(event.occurred_at)
            order_id = event.order_id
            try:
                change = fold(states.get(order_id), event, where, at)
                if need_event is None or need_event(where):
                    event_rows.append(event_row(event, where, at))
            except Exception as exc:
                rejected.append(self._poisoned(event, where, exc))
                continue
            if change is None:
                duplicates += 1
                continue
            row = change.row
            states[order_id] = row
            changed[order_id] = (row, where)
            if change.lines and (need_lines is None or need_lines(where)):
                for line in change.lines:
                    line_rows[(order_id, line[1])] = line
            if change.stages and (need_stages is None or need_stages(where)):
                for stage in change.stages:
                    stage_rows[(order_id, stage[1])] = stage
            if need_activity is None or need_activity(where):
                a = change.activity
                key = (*a[:4], where.topic, where.partition)
                total = activity.get(key)
                if total is None:
                    activity[key] = [1, a.amount, where.offset]
                else:
                    total[0] += 1
                    total[1] += a.amount
                    if where.offset > total[2]:
                        total[2] = where.offset
        for order_id, (row, _) in changed.items():
            self._orders.remember(order_id, row)
        need_orders = high_water.unwritten("orders")
        tables: dict[str, Rows] = {
            "order_events": _Rows(ORDER_EVENTS_COLUMNS, event_rows),
            "order_lines": _Rows(ORDER_LINES_COLUMNS, list(line_rows.values())),
            "fulfilment_stages": _Rows(FULFILMENT_STAGES_COLUMNS, list(stage_rows.values())),
            "order_activity_per_minute": _Rows(
                ORDER_ACTIVITY_COLUMNS,
                [
                    (*key[:4], n, amount, key[4], key[5], offset)
                    for key, (n, amount, offset) in activity.items()
                ],
            ),
            "orders": _Rows(
                ORDERS_COLUMNS,
                [
                    _order_values(row)
                    for row, where in changed.values()
                    if need_orders is None or need_orders(where)
                ],
            ),
        }
        return tables, duplicates, len(changed)

    def _fold_stock(
        self,
        events: list[tuple[StockEvent, Position]],
        stored: StoredStates,
        high_water: HighWater,
        rejected: list[Rejected],
    ) -> tuple[dict[str, Rows], int]:
        levels = self._load_stock(events, stored)
        need_history = high_water.unwritten("stock")
        history: list[Row] = []
        changed: dict[tuple[str, str], tuple[dict[str, Any], Position]] = {}
        duplicates = 0
        fold = stock.fold
        for event, where in events:
            key = (event.sku, event.location)
            try:
                change = fold(levels.get(key), event, where)
            except Exception as exc:
                rejected.append(self._poisoned(event, where, exc))
                continue
            if change is None:
                duplicates += 1
                continue
            levels[key] = change.level
            changed[key] = (change.level, where)
            if need_history is None or need_history(where):
                history.append(change.history)
        for key, (level, _) in changed.items():
            self._stock.remember(key, level)
        need_levels = high_water.unwritten("stock_levels")
        tables: dict[str, Rows] = {
            "stock": _Rows(STOCK_COLUMNS, history),
            "stock_levels": _Rows(
                STOCK_LEVELS_COLUMNS,
                [
                    _level_values(level)
                    for level, where in changed.values()
                    if need_levels is None or need_levels(where)
                ],
            ),
        }
        return tables, duplicates

    def _poisoned(self, event: Event, where: Position, exc: Exception) -> Rejected:
        """An event the fold raised on, as a rejected message: its bytes as the codec writes
        them (the batch keeps decoded events, not their bytes), and what failed where."""
        log.error("cannot fold %s at %s", event.event_id, where, exc_info=exc)
        return (*where, self.codec.encode(event), f"folding failed: {describe(exc)}")

    # ------------------------------------------------------------ fold states

    def _knows_every_state(self, cache: _Cache) -> bool:
        """The cache holds every state there is: ClickHouse held none at start and nothing has
        been forgotten since, so a miss is a new order or key (saves a query per batch)."""
        return self._complete and not cache.evicted

    def _load_orders(
        self, events: list[tuple[OrderEvent, Position]], stored: StoredStates
    ) -> dict[str, OrderRow]:
        """The state of every order the batch names that has one: from the cache, else from
        ClickHouse. The batch folds into this dict; the cache learns the results after."""
        wanted = {event.order_id for event, _ in events}
        cache = self._orders
        states = {order_id: cache[order_id] for order_id in wanted if order_id in cache}
        if self._knows_every_state(cache):
            return states
        ids = sorted(wanted - states.keys())
        for row in stored.orders(ids, _ORDERS_SELECT) if ids else []:
            state = dict(zip(ORDERS_COLUMNS, row, strict=True))
            states[row[0]] = state
            cache.remember(row[0], state)
        return states

    def _load_stock(
        self, events: list[tuple[StockEvent, Position]], stored: StoredStates
    ) -> dict[tuple[str, str], StockLevel]:
        wanted = {(e.sku, e.location) for e, _ in events}
        cache = self._stock
        levels = {key: cache[key] for key in wanted if key in cache}
        if self._knows_every_state(cache):
            return levels
        keys = wanted - levels.keys()
        for row in stored.levels(keys, _LEVELS_SELECT) if keys else []:
            level = dict(zip(STOCK_LEVELS_COLUMNS, row, strict=True))
            key = (level["sku"], level["location"])
            levels[key] = level
            cache.remember(key, level)
        return levels


_ORDERS_SELECT = ", ".join(ORDERS_COLUMNS)
_LEVELS_SELECT = ", ".join(STOCK_LEVELS_COLUMNS)
_order_values = itemgetter(*ORDERS_COLUMNS)  # an `orders` row (dict) as the INSERT's tuple
_level_values = itemgetter(*STOCK_LEVELS_COLUMNS)
