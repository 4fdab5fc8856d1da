"""Why a channel payload was refused: the SDK's two exceptions, with the field to blame.

They live below `connectors.base` and `connectors.money` so both can raise them; connectors
import them from `connectors.base`, the SDK's one import.
"""

from __future__ import annotations


class PayloadRejected(ValueError):
    """A channel payload that cannot become an order; `field` names the offending field."""

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"{field}: {reason}" if field else reason)


class SignatureRejected(PayloadRejected):
    """The payload's signature or token does not match: it may not come from the channel."""


class SecretMissing(SignatureRejected):
    """The channel's secret is not configured (or empty): nothing can be verified, so every
    payload is refused (fail closed). Not a verdict on the payload: once the secret is set, a
    dead letter refused for this verifies again on replay."""


class StaleSignature(SignatureRejected):
    """The signature is right but the time it signs is outside the window around receipt: a
    replay of an old message (or a clock far off)."""
