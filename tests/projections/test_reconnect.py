"""Which failures the projector waits out and which end it, and with what exit code; the wait
between attempts. Unit tests: no Kafka, no ClickHouse."""

from __future__ import annotations

import random

import pytest
from confluent_kafka import KafkaError, KafkaException

from infra.exit_codes import ExitCode
from infra.publisher import PublishError
from projections.reconnect import Backoff, GaveUp, KafkaUnavailable, exit_code, transient
from projections.store import StoreError, StoreMisconfigured, StoreUnavailable, store_error


def test_backoff_doubles_up_to_its_cap_and_each_wait_is_jittered() -> None:
    backoff = Backoff(first_s=0.2, cap_s=5.0, rng=random.Random(1))
    waits = [backoff.delay(attempt) for attempt in range(12)]
    ceilings = [min(5.0, 0.2 * 2**attempt) for attempt in range(12)]
    assert all(c / 2 <= w <= c for w, c in zip(waits, ceilings, strict=True))
    assert max(waits) <= 5.0 and waits[-1] >= 2.5
    assert len({round(backoff.delay(8), 6) for _ in range(20)}) > 1, "no jitter"


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("Code: 252. DB::Exception: Too many parts (300). Merges are processing", StoreUnavailable),
        ("Code: 241, e.displayText() = DB::Exception: Memory limit exceeded", StoreUnavailable),
        ("Code: 210. Connection refused (127.0.0.1:9000)", StoreUnavailable),
        ("Code: 16, e.displayText() = DB::Exception: No such column payload", StoreMisconfigured),
        ("Code: 60. DB::Exception: Table oms.orders doesn't exist.", StoreMisconfigured),
        ("Code: 516. DB::Exception: default: Authentication failed", StoreMisconfigured),
        ("Code: 62. DB::Exception: Syntax error: failed at position 1", StoreError),
        ("something without a code", StoreError),
    ],
)
def test_clickhouse_errors_are_told_apart_by_their_code(message: str, kind: type) -> None:
    assert type(store_error(message)) is kind


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (StoreUnavailable("Connection reset by peer"), ExitCode.TEMPFAIL),
        (KafkaUnavailable("all brokers down"), ExitCode.TEMPFAIL),
        (KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN)), ExitCode.TEMPFAIL),
        (KafkaException(KafkaError(KafkaError._TRANSPORT)), ExitCode.TEMPFAIL),
        (PublishError("1 messages not confirmed by Kafka within 60s"), ExitCode.TEMPFAIL),
        (GaveUp("unavailable for 30 s"), ExitCode.TEMPFAIL),
        (StoreMisconfigured("No such column payload"), ExitCode.CONFIG),
        (KafkaException(KafkaError(KafkaError._INVALID_ARG)), ExitCode.CONFIG),
        (StoreError("Syntax error"), ExitCode.BUG),
        (KafkaException(KafkaError(KafkaError._TRANSPORT, fatal=True)), ExitCode.BUG),
        (KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)), ExitCode.BUG),
        (ValueError("a bug"), ExitCode.BUG),
    ],
)
def test_each_failure_has_the_documented_exit_code(error: Exception, code: ExitCode) -> None:
    assert exit_code(error) == code
    assert transient(error) == (code == ExitCode.TEMPFAIL and not isinstance(error, GaveUp))
