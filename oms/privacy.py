"""A customer's rights over their data (PIPL art. 45 and 47, GDPR art. 15 and 17): `export`
answers an access request with everything held about them, `forget` erases them.

A customer is named the way operators meet them: a phone number, `channel:customer-id`, or
the pseudonymous key the reports show (`c` and 24 hex digits). Forgetting deletes their data
keys (events/privacy.py, infra/keystore.py) and the keys of their orders' revisions, so no
topic can give their personal data back, and empties what ClickHouse derived from it
(projections/privacy.py); orders, amounts and statuses stay. The projector erases again when
it sees the keys go, so what it was folding meanwhile is caught too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer

from events.models import OrderModified, OrderReceived
from events.privacy import (
    customer_key,
    normalise_phone,
    order_subject,
)
from infra.kafka import admin_config
from infra.keystore import KafkaKeys, private_codec
from infra.replay import read_partition
from infra.settings import Settings
from projections.privacy import erase, wait_for_mutations
from projections.store import connect, sql_string

_KEY = re.compile(r"c[0-9a-f]{24}")


class UnknownCustomer(ValueError):
    """The text does not name a customer (`field` says which argument)."""

    field = "CUSTOMER"


def subject_for(customer: str, pepper: bytes) -> str:
    """The pseudonymous key of a phone number, a `channel:customer-id` or a key itself."""
    text = customer.strip()
    if _KEY.fullmatch(text):
        return text
    if ":" in text:
        channel, _, customer_id = text.partition(":")
        if channel and customer_id:
            return customer_key(f"{channel}:{customer_id}", pepper)
    elif phone := normalise_phone(text):
        return customer_key(phone, pepper)
    raise UnknownCustomer(
        f"{customer!r} is not a phone number, a channel:customer-id or a customer key (c + 24 hex)"
    )


@dataclass(frozen=True)
class Forgotten:
    customer_key: str
    orders: int  # orders whose personal data was erased from ClickHouse
    keys: int  # data keys deleted (the customer's and their orders' revisions')


def forget(settings: Settings, customer: str) -> Forgotten:
    keys = KafkaKeys(settings)
    store = connect(settings.resolved_clickhouse_url)
    try:
        subject = subject_for(customer, keys.pepper)
        order_ids = erase(store, subject)
        wait_for_mutations(store)
        deleted = keys.forget([subject, *(order_subject(order_id) for order_id in order_ids)])
        return Forgotten(subject, len(order_ids), deleted)
    finally:
        keys.close()
        store.close()


def export(settings: Settings, customer: str) -> dict[str, Any]:
    """Everything held about the customer: their orders' events from the order log (opened
    with their key), the read models' rows, and their data keys' ids."""
    keys = KafkaKeys(settings)
    codec = private_codec(settings, keys)
    store = connect(settings.resolved_clickhouse_url)
    try:
        subject = subject_for(customer, keys.pepper)
        theirs: dict[str, list[dict[str, Any]]] = {}
        for partition in _partitions(settings, settings.topics.orders):
            for event in read_partition(
                settings.kafka_bootstrap, settings.topics.orders, partition, codec=codec
            ):
                order_id = getattr(event, "order_id", None)
                if (
                    isinstance(event, OrderReceived | OrderModified)
                    and event.customer is not None
                    and event.customer.key == subject
                ):
                    theirs.setdefault(event.order_id, [])
                if order_id in theirs:
                    theirs[order_id].append(event.model_dump(mode="json"))
        columns, rows = store.query_with_columns(
            f"SELECT * FROM {store.database}.orders FINAL "
            f"WHERE customer_key = {sql_string(subject)} ORDER BY placed_at"
        )
        return {
            "customer_key": subject,
            "data_keys": keys.subjects().get(subject, []),
            "orders": [{"order_id": k, "events": v} for k, v in theirs.items()],
            "read_model_orders": [
                {c: _plain(v) for c, v in zip(columns, row, strict=True)} for row in rows
            ],
        }
    finally:
        keys.close()
        store.close()


def _partitions(settings: Settings, topic: str) -> list[int]:
    consumer = Consumer(admin_config(settings.kafka_bootstrap) | {"group.id": "oms-privacy"})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        return sorted(metadata.partitions) if metadata and metadata.partitions else []
    finally:
        consumer.close()


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | list | type(None)) else str(value)
