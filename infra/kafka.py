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
- Every client speaks the broker's security protocol (`OMS_KAFKA_SECURITY_PROTOCOL`: TLS,
  SASL/SCRAM or both, `client_security`), taken from the process's settings; a caller
  holding settings of its own (the stack, the projector) adds `client_security(settings)`.
  A protocol that needs a secret the settings lack is refused before any client is built
  (fail closed), never downgraded to PLAINTEXT.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from infra.settings import Settings, get_settings

LIBRDKAFKA_LOG = logging.getLogger("librdkafka")
# The largest message any OrderStream producer sends: librdkafka's `message.max.bytes`
# (its default, set explicitly so it cannot drift), below the broker's own limit (1,048,588
# by default). A larger `produce` raises at once (MSG_SIZE_TOO_LARGE): whatever could be that
# large — a channel's body, a dead letter carrying one — is bounded before it gets here.
MAX_MESSAGE_BYTES = 1_000_000


class KafkaSecurityError(ValueError):
    """The settings ask for a protocol they do not have the secrets for; names the variable."""


def client_security(settings: Settings | None = None) -> dict[str, Any]:
    """librdkafka's security properties for `settings` (default: this process's).

    SASL needs a user name and a password, and says so naming the variable rather than
    connecting without them (the broker would only refuse later, after retries). TLS trusts
    `OMS_KAFKA_SSL_CA_FILE` when set, else the system's CAs; librdkafka checks the broker's
    host name against its certificate (`ssl.endpoint.identification.algorithm=https`).
    """
    settings = settings or get_settings()
    protocol = settings.kafka_security_protocol
    config: dict[str, Any] = {"security.protocol": protocol}
    if protocol.startswith("SASL_"):
        username, password = sasl_credentials(settings)
        config |= {
            "sasl.mechanism": settings.kafka_sasl_mechanism,
            "sasl.username": username,
            "sasl.password": password,
        }
    if protocol.endswith("SSL"):
        config["ssl.endpoint.identification.algorithm"] = "https"
        if settings.kafka_ssl_ca_file is not None:
            config["ssl.ca.location"] = str(settings.kafka_ssl_ca_file)
    return config


def sasl_credentials(settings: Settings) -> tuple[str, str]:
    """The SASL user name and password, or KafkaSecurityError naming what is missing."""
    protocol = settings.kafka_security_protocol
    password = settings.kafka_sasl_password
    if not settings.kafka_sasl_username:
        raise KafkaSecurityError(
            f"OMS_KAFKA_SECURITY_PROTOCOL={protocol} needs OMS_KAFKA_SASL_USERNAME"
        )
    if password is None or not password.get_secret_value():
        raise KafkaSecurityError(
            f"OMS_KAFKA_SECURITY_PROTOCOL={protocol} needs OMS_KAFKA_SASL_PASSWORD "
            f"(the SASL password of {settings.kafka_sasl_username!r})"
        )
    return settings.kafka_sasl_username, password.get_secret_value()


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for Python clients (aiokafka under Faust), trusting the same CAs as
    librdkafka and checking the broker's host name; None when the protocol has no TLS."""
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    cafile = settings.kafka_ssl_ca_file
    return ssl.create_default_context(cafile=str(cafile) if cafile else None)


def producer_config(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """An idempotent, `acks=all` producer; `overrides` use librdkafka's names; security from
    this process's settings (a caller with settings of its own adds `client_security(them)`)."""
    return (
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "partitioner": "murmur2_random",
            "message.max.bytes": MAX_MESSAGE_BYTES,
            "logger": LIBRDKAFKA_LOG,
        }
        | client_security()
        | overrides
    )


def consumer_config(bootstrap: str, *, group_id: str, **overrides: Any) -> dict[str, Any]:
    """A consumer that commits nothing by itself; `overrides` use librdkafka's names; security
    as `producer_config`'s."""
    return (
        {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "enable.auto.commit": False,
            "logger": LIBRDKAFKA_LOG,
        }
        | client_security()
        | overrides
    )


def admin_config(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "logger": LIBRDKAFKA_LOG} | client_security()
