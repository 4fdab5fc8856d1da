"""What ClickHouse may hold of a customer, and erasing it (events/privacy.py has the why).

- `AnalystView` rewrites the order log's messages that carry personal data before either
  fold sees them: opened with the data key if there is one, then masked (`张*`, `138****5678`,
  `j***@example.com`; addresses, coordinates, devices, notes and channel customer ids
  emptied), the customer's pseudonymous key set, `sealed` dropped. So `orders`, `order_lines`
  and `order_events.payload` never hold clear personal data, and a rebuild after a customer
  was forgotten finds nothing to show.
- `erase` empties what ClickHouse already holds of a forgotten customer: their masked name,
  phone and address in `orders`, and the payloads of their orders' events. ClickHouse applies
  it as a mutation (`ALTER TABLE ... UPDATE`, which ClickHouse 18.16 has), in the background.
- `expire_payloads` empties `order_events.payload` older than the retention, for the same
  reason ClickHouse's TTL exists (which 18.16 does not have): the statuses, amounts and times
  stay in their columns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from confluent_kafka import Message

from events.codec import AvroCodec, CodecError
from events.models import Event
from events.privacy import (
    SEALABLE,
    CustomerFields,
    DataKeys,
    SealError,
    analysts_customer,
    for_analysts,
)
from projections.store import ClickHouseStore, sql_string

_PERSONAL_TYPES = frozenset(model.__name__ for model in SEALABLE)


class _Rewritten:
    """A Kafka message with another value; the folds read it through the same methods."""

    __slots__ = ("_message", "_value")

    def __init__(self, message: Message, value: bytes) -> None:
        self._message = message
        self._value = value

    def value(self) -> bytes:
        return self._value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)


Shown = tuple[str | None, str | None, str | None, str | None]


class AnalystView:
    """Order-log messages as ClickHouse may store them (the module docstring). The Python fold
    reads messages rewritten by `chunk`; the native fold's decoder does the rewriting itself,
    on the event it decoded, and asks `native()` only what needs keys and the masks."""

    def __init__(self, codec: AvroCodec, keys: DataKeys) -> None:
        self.codec = codec
        self.keys = keys
        self._personal: dict[int, bool] = {}  # schema id -> carries personal fields

    def chunk(self, messages: list[Message]) -> list[Any]:
        return [self.message(message) for message in messages]

    def message(self, message: Message) -> Any:
        raw = message.value()
        if not raw or len(raw) < 5 or raw[0] != 0 or not self._carries(raw):
            return message
        try:
            decoded = self.codec.decode(raw)
            event = for_analysts(decoded, self.keys) if isinstance(decoded, Event) else decoded
            return _Rewritten(message, self.codec.encode(event))
        except (CodecError, SealError):
            return message  # the fold rejects what does not decode; a tampered seal stays shut

    def native(
        self,
    ) -> Callable[
        [
            str | None,
            str,
            str,
            str,
            CustomerFields | None,
            tuple[str | None, str | None] | None,
        ],
        Shown | None,
    ]:
        """The native decoder's `analyst(sealed, event_id, channel, order_id, customer,
        platform_masks)`: `events.privacy.analysts_customer`, or None where `message` leaves
        the message as it is (a `sealed` value that is not one)."""
        keys = self.keys

        def analyst(
            sealed: str | None,
            event_id: str,
            channel: str,
            order_id: str,
            customer: CustomerFields | None,
            platform_masks: tuple[str | None, str | None] | None,
        ) -> Shown | None:
            try:
                return analysts_customer(
                    keys,
                    sealed=sealed,
                    event_id=event_id,
                    channel=channel,
                    order_id=order_id,
                    customer=customer,
                    platform_masks=platform_masks,
                )
            except SealError:
                return None

        return analyst

    def _carries(self, raw: bytes) -> bool:
        schema_id = int.from_bytes(raw[1:5], "big")
        known = self._personal.get(schema_id)
        if known is None:
            try:
                name = self.codec.schema_ids.by_id(schema_id).name
            except CodecError:
                name = ""
            known = self._personal[schema_id] = name in _PERSONAL_TYPES
        return known


def erase(store: ClickHouseStore, customer_key: str) -> list[str]:
    """Empties the customer's masked details and their orders' event payloads; their order ids
    (what the caller also forgets the order-subject keys of)."""
    key, db = sql_string(customer_key), store.database
    order_ids = [
        row[0]
        for row in store.query(
            f"SELECT DISTINCT order_id FROM {db}.orders WHERE customer_key = {key}"
        )
    ]
    store.execute(
        f"ALTER TABLE {db}.orders UPDATE customer_name = '', customer_phone = '', address = '' "
        f"WHERE customer_key = {key}"
    )
    for start in range(0, len(order_ids), 1000):
        ids = ", ".join(sql_string(order_id) for order_id in order_ids[start : start + 1000])
        store.execute(
            f"ALTER TABLE {db}.order_events UPDATE payload = '' WHERE order_id IN ({ids})"
        )
    return order_ids


def expire_payloads(store: ClickHouseStore, *, older_than: timedelta, now: datetime) -> None:
    """Empties event payloads recorded before `now - older_than` (a mutation, in the background)."""
    cutoff = (now - older_than).strftime("%Y-%m-%d %H:%M:%S")
    store.execute(
        f"ALTER TABLE {store.database}.order_events UPDATE payload = '' "
        f"WHERE recorded_at < toDateTime('{cutoff}') "
        "AND payload != ''"
    )


def wait_for_mutations(store: ClickHouseStore, *, timeout_s: float = 120.0) -> None:
    """Until this database's mutations are done (18.16 has no `mutations_sync`), so fold
    states read back afterwards are the erased ones."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = store.query(
            "SELECT count() FROM system.mutations WHERE database = "
            f"{sql_string(store.database)} AND is_done = 0"
        )
        if not running or not running[0][0]:
            return
        time.sleep(0.1)
    raise TimeoutError(f"ClickHouse mutations still running after {timeout_s:.0f} s")
