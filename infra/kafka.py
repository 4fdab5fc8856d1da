"""The one Kafka client configuration: every producer, consumer and admin client of
OrderStream starts from these (the worker's sink, the publisher, replay, the views, the
projector, the stack, the benchmarks), so a setting that must hold everywhere is set once.

- Producers are idempotent with `acks=all` and use Java's murmur2 partitioner, so a key lands
  on the same partition whoever writes it — Faust (aiokafka) included, which the order
  agent's state relies on.
- Consumers never commit offsets themselves unless asked: who owns an offset decides that
  (Faust for the worker, ClickHouse's offset ledger for the projector).
- librdkafka's own log lines (broker connects and disconnects, idempotence retries) go
  through Python's logging under `librdkafka`, at WARNING and above by default, instead of
  raw `%4|...` lines on stderr.
"""

from __future__ import annotations

import logging
from typing import Any

LIBRDKAFKA_LOG = logging.getLogger("librdkafka")
# The largest message any OrderStream producer sends: librdkafka's `message.max.bytes`
# (its default, set explicitly so it cannot drift), below the broker's own limit (1,048,588
# by default). A larger `produce` raises at once (MSG_SIZE_TOO_LARGE): whatever could be that
# large — a channel's body, a dead letter carrying one — is bounded before it gets here.
MAX_MESSAGE_BYTES = 1_000_000


def producer_config(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """An idempotent, `acks=all` producer; `overrides` use librdkafka's names."""
    return {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "partitioner": "murmur2_random",
        "message.max.bytes": MAX_MESSAGE_BYTES,
        "logger": LIBRDKAFKA_LOG,
    } | overrides


def consumer_config(bootstrap: str, *, group_id: str, **overrides: Any) -> dict[str, Any]:
    """A consumer that commits nothing by itself; `overrides` use librdkafka's names."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "logger": LIBRDKAFKA_LOG,
    } | overrides


def admin_config(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "logger": LIBRDKAFKA_LOG}
