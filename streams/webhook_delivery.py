"""Outbound webhooks, the decisions (docs/architecture.md, "Outbound webhooks"): which
subscriptions an event of the order log goes to, the message and its Standard Webhooks
signature, when a failed delivery is tried again, and when a subscription that keeps failing is
disabled. Pure: the clock and the randomness of the jitter are passed in; `oms/webhooks.py`
does the I/O.

Signing follows https://www.standardwebhooks.com: the secret is `whsec_` + base64 of 24 to 64
random bytes; `webhook-signature` is `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")),
so a receiver verifies with any Standard Webhooks (or Svix) library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from events.models import OrderEvent, deterministic_id
from events.webhook_subscriptions import Subscription

SECRET_PREFIX = "whsec_"
KEY_BYTES = (24, 64)  # the spec's bounds on the key's length


class InvalidSecret(ValueError):
    """A secret that is not `whsec_` + base64 of 24 to 64 bytes: nothing is signed with it."""


def new_secret(key: bytes) -> str:
    """The secret of `key` (random bytes from the caller), as shown once to the subscriber."""
    secret = SECRET_PREFIX + base64.b64encode(key).decode()
    key_of(secret)  # refuses a key of the wrong size
    return secret


def key_of(secret: str) -> bytes:
    """The HMAC key of a secret; `InvalidSecret` for anything else (fail closed)."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidSecret(f"a secret starts with {SECRET_PREFIX}")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidSecret("the part after whsec_ is not base64") from exc
    if not KEY_BYTES[0] <= len(key) <= KEY_BYTES[1]:
        raise InvalidSecret(f"the key is {len(key)} bytes, not {KEY_BYTES[0]} to {KEY_BYTES[1]}")
    return key


def sign(secret: str, *, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header of one attempt."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key_of(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, *, webhook_id: str, timestamp: int, body: bytes, header: str) -> bool:
    """What a receiver does: one of the header's space-separated signatures matches."""
    expected = sign(secret, webhook_id=webhook_id, timestamp=timestamp, body=body).encode()
    return any(hmac.compare_digest(expected, given.encode()) for given in header.split())


def webhook_id(subscription_id: str, event_id: str) -> str:
    """The delivery's idempotency id: the same event to the same subscription, however often
    it is sent (retries, a sender restarted, a replay), carries the same id."""
    return "msg_" + deterministic_id("webhook", subscription_id, event_id)


def matches(subscription: Subscription, event: OrderEvent) -> bool:
    """Whether `event` goes to `subscription`. A store filter keeps the events that name one of
    its stores (`location`), as the event feed does: an order's events before it is routed to a
    store name none."""
    if not subscription.enabled:
        return False
    if subscription.event_types and event.event_type not in subscription.event_types:
        return False
    if subscription.channels and event.channel not in subscription.channels:
        return False
    return not subscription.stores or getattr(event, "location", None) in subscription.stores


def message(event: OrderEvent) -> bytes:
    """The body: the event as the log holds it (personal fields empty, `sealed` sealed), in the
    `type`/`timestamp`/`data` shape Standard Webhooks suggests."""
    document = {
        "type": event.event_type,
        "timestamp": event.recorded_at.isoformat(),
        "data": event.model_dump(mode="json"),
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


# -- trying again, and giving up


@dataclass(frozen=True)
class RetryPolicy:
    backoff_base_s: float
    backoff_cap_s: float
    retry_for: timedelta  # from the first attempt: past it, a delivery is failed for good
    disable_after_failures: int  # consecutive failed attempts of one subscription ...
    disable_after: timedelta  # ... over at least this long: the subscription is disabled


def retry_delay_s(attempt: int, policy: RetryPolicy, *, jitter: float) -> float:
    """The wait after failed attempt `attempt` (1, 2, ...): base x 2^(attempt-1), capped, less
    up to half of it by `jitter` (0 to 1, the caller's randomness), so retries of many
    deliveries do not march in step."""
    full = min(policy.backoff_cap_s, policy.backoff_base_s * 2 ** min(attempt - 1, 60))
    return full * (1 - 0.5 * jitter)


@dataclass(frozen=True)
class Health:
    """A subscription's run of failed attempts since its last delivery."""

    failures: int = 0
    failing_since: datetime | None = None


def after_attempt(
    health: Health, *, delivered: bool, now: datetime, policy: RetryPolicy
) -> tuple[Health, str | None]:
    """The health after one attempt, and why the subscription is to be disabled (or None)."""
    if delivered:
        return Health(), None
    since = health.failing_since or now
    health = replace(health, failures=health.failures + 1, failing_since=since)
    if health.failures >= policy.disable_after_failures and now - since >= policy.disable_after:
        return health, (
            f"{health.failures} failed attempts in a row since {since.isoformat()}, no delivery"
        )
    return health, None


def gives_up(*, first_attempt: datetime, now: datetime, policy: RetryPolicy) -> bool:
    """Whether a delivery that has just failed is failed for good (past its retry window)."""
    return now - first_attempt >= policy.retry_for


# -- what a subscription's progress remembers


@dataclass(frozen=True)
class Retrying:
    """The head delivery of a partition, failed and waiting for its next attempt."""

    offset: int
    attempts: int
    first_attempt: datetime
    due: datetime


@dataclass(frozen=True)
class Progress:
    """What a committed offset of a subscription's group carries beside the offset (Kafka's
    commit metadata): the start it was made under, the subscription's run of failures, and
    the partition's head delivery being retried. Committed with the offset, so a sender that
    restarts (or crashes over and over) resumes the retry clock and the count towards
    disabling instead of starting them afresh."""

    mark: str
    health: Health = Health()
    retrying: Retrying | None = None

    def note(self) -> str:
        """The metadata text (well under the broker's 4,096 bytes)."""
        value: dict[str, object] = {"mark": self.mark}
        if self.health.failures:
            since = self.health.failing_since
            value["failures"] = self.health.failures
            value["since"] = since.isoformat() if since else None
        if self.retrying is not None:
            head = self.retrying
            value["retrying"] = {
                "offset": head.offset,
                "attempts": head.attempts,
                "first": head.first_attempt.isoformat(),
                "due": head.due.isoformat(),
            }
        return json.dumps(value, separators=(",", ":"))

    @classmethod
    def read(cls, note: str | None) -> Progress:
        """The progress a commit carries; a plain mark (as commits before this carried) or a
        note that cannot be read is a mark with nothing remembered."""
        if not note or not note.startswith("{"):
            return cls(mark=note or "")
        try:
            value = json.loads(note)
            health = Health()
            if value.get("failures"):
                since = value.get("since")
                health = Health(
                    failures=int(value["failures"]),
                    failing_since=datetime.fromisoformat(since) if since else None,
                )
            retrying = None
            if isinstance(head := value.get("retrying"), dict):
                retrying = Retrying(
                    offset=int(head["offset"]),
                    attempts=int(head["attempts"]),
                    first_attempt=datetime.fromisoformat(head["first"]),
                    due=datetime.fromisoformat(head["due"]),
                )
            return cls(mark=str(value["mark"]), health=health, retrying=retrying)
        except (ValueError, KeyError, TypeError):
            return cls(mark="")
