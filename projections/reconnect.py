"""When the projector reconnects: which failures are transient (Kafka or ClickHouse away for a
while: wait and resume), how long it waits between attempts (capped exponential backoff with
jitter), and the exit code of a failure that is not (infra/exit_codes.py).

A transient failure never ends the projector: it resumes as a start does, from what ClickHouse
holds (projections/projector.py), whatever the failure cut short. Only a retry budget, when one
is set, turns a long outage into an exit (75, for the supervisor to restart it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from pydantic import ValidationError

from infra.exit_codes import ExitCode
from infra.kafka import KafkaSecurityError
from infra.keystore import KeyStoreUnavailable
from infra.publisher import PublishError
from projections.store import StoreMisconfigured, StoreUnavailable


class KafkaUnavailable(RuntimeError):
    """Kafka could not be reached, or could not serve the projector, for now."""


class GaveUp(RuntimeError):
    """Kafka or ClickHouse stayed unavailable longer than the retry budget."""


# librdkafka's own (negative) codes for "not now", and the broker's codes it retries itself;
# a KafkaError built from a code alone does not say whether it is retriable, so they are listed.
_KAFKA_TRANSIENT = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT_QUEUE,
        KafkaError._RESOLVE,
        KafkaError._WAIT_COORD,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.KAFKA_STORAGE_ERROR,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
    }
)


def kafka_transient(error: KafkaError) -> bool:
    return not error.fatal() and (error.retriable() or error.code() in _KAFKA_TRANSIENT)


def transient(exc: BaseException) -> bool:
    """Whether `exc` means "not now" (wait and resume) rather than "never" (stop)."""
    if isinstance(exc, StoreUnavailable | KafkaUnavailable | PublishError | KeyStoreUnavailable):
        return True  # PublishError: Kafka did not confirm a dead letter in time
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return kafka_transient(exc.args[0])
    return False


def exit_code(exc: Exception) -> ExitCode:
    """What `oms project` exits with after `exc` (docs/operations.md)."""
    if isinstance(exc, GaveUp) or transient(exc):
        return ExitCode.TEMPFAIL
    # ValidationError: OMS_* settings; KafkaSecurityError: a SASL protocol without its secret.
    if isinstance(exc, StoreMisconfigured | ValidationError | KafkaSecurityError):
        return ExitCode.CONFIG
    if (
        isinstance(exc, KafkaException)
        and exc.args
        and isinstance(exc.args[0], KafkaError)
        # a consumer setting Kafka refused, or the brokers refused the SASL user
        and exc.args[0].code() in (KafkaError._INVALID_ARG, KafkaError._AUTHENTICATION)
    ):
        return ExitCode.CONFIG
    return ExitCode.BUG


@dataclass
class Backoff:
    """The wait before each attempt to reconnect: doubling from `first_s` up to `cap_s`, each
    drawn from its upper half so that several processes do not retry in step; `give_up_after_s`
    (None: never) is the retry budget of one outage."""

    first_s: float = 0.2
    cap_s: float = 5.0
    give_up_after_s: float | None = None
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        """The wait before attempt `attempt` (0 for the first)."""
        ceiling = min(self.cap_s, self.first_s * 2 ** min(attempt, 32))
        return self.rng.uniform(ceiling / 2, ceiling)
