"""Intake and dedup: a pure decision over one connector event and what the order log already
holds for that order.

- An exact redelivery (an event id already taken in) changes nothing.
- A new `OrderReceived` goes onto the order log with sequence 1, followed by its validation
  verdict.
- An `OrderModified` (a channel revision) is re-sequenced onto the log after the order's last
  event and the merged order is validated again — if the order's status still allows a
  modification and the revision is newer than the last one applied. Otherwise it is refused
  with a reason (the agent dead-letters it: nothing is dropped silently).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import Field

from events.lifecycle import REVISABLE, OrderStatus
from events.models import (
    Frozen,
    OrderEvent,
    OrderModified,
    OrderReceived,
    deterministic_id,
)
from streams import validation
from streams.catalogue import Catalogue

SEEN_KEPT = 64  # intake event ids remembered per order (redeliveries come close together)


class OrderRecord(Frozen):
    """What the intake agent keeps per order (a Faust table value, stored as JSON)."""

    order: OrderReceived = Field(description="the order as received, with revisions merged")
    version: int = Field(description="sequence of the order's last event on the order log")
    status: OrderStatus
    revision: int = 0
    seen: list[str] = Field(default_factory=list, description="intake event ids taken in")


@dataclass(frozen=True)
class IntakeDecision:
    record: OrderRecord | None  # the new state (None: unchanged)
    to_log: list[OrderEvent]  # events for the order log, in sequence
    refusal: str | None = None  # why the input was not taken (dead-lettered by the agent)


def decide(
    record: OrderRecord | None,
    event: OrderReceived | OrderModified,
    *,
    now: datetime,
    catalogue: Catalogue | None = None,
) -> IntakeDecision:
    if record is not None and event.event_id in record.seen:
        return IntakeDecision(None, [])  # an exact redelivery
    if isinstance(event, OrderReceived):
        if record is not None:
            # Same order id, different event id: a connector bug, or a re-numbered channel order.
            return IntakeDecision(None, [], f"order {event.order_id} was already received")
        # Connectors number an order's receipt 1 already: then it goes on the log as it is.
        received = event if event.sequence == 1 else event.model_copy(update={"sequence": 1})
        verdict = validation.verdict(
            received, cause=received.event_id, sequence=2, now=now, catalogue=catalogue
        )
        return IntakeDecision(
            OrderRecord(order=received, version=2, status=_status(verdict), seen=[event.event_id]),
            [received, verdict],
        )
    if record is None:
        first_seen = as_received(event)
        if first_seen is None:
            return IntakeDecision(
                None, [], f"modification of order {event.order_id}, which was never received"
            )
        # The channel showed us this order first as a revision (its counter also moves on
        # payment): the revision is the order. Its original, if it still comes, is then a
        # redelivery of the same OrderReceived id and changes nothing.
        verdict = validation.verdict(
            first_seen, cause=first_seen.event_id, sequence=2, now=now, catalogue=catalogue
        )
        return IntakeDecision(
            OrderRecord(
                order=first_seen,
                version=2,
                status=_status(verdict),
                revision=event.revision,
                seen=[first_seen.event_id, event.event_id],
            ),
            [first_seen, verdict],
        )
    if event.revision <= record.revision:
        return IntakeDecision(
            None, [], f"revision {event.revision} is not newer than {record.revision}: stale"
        )
    if record.status not in REVISABLE:  # (the order process makes it an amendment, or not)
        return IntakeDecision(
            None, [], f"order {event.order_id} is {record.status.value}: too late to modify"
        )
    # On the log a revision names its customer, so it is sealed under their key
    # (events/privacy.py): forgetting them forgets it too.
    modified = event.model_copy(
        update={"sequence": record.version + 1, "customer": event.customer or record.order.customer}
    )
    merged = merge(record.order, event)
    verdict = validation.verdict(
        merged, cause=modified.event_id, sequence=record.version + 2, now=now, catalogue=catalogue
    )
    return IntakeDecision(
        OrderRecord(
            order=merged,
            version=record.version + 2,
            status=_status(verdict),
            revision=event.revision,
            seen=[*record.seen, event.event_id][-SEEN_KEPT:],
        ),
        [modified, verdict],
    )


def merge(order: OrderReceived, revision: OrderModified) -> OrderReceived:
    """The order with a revision applied: lines and amounts are replaced; details the revision
    leaves out (None) stay as they were."""
    amounts = (
        "lines",
        "delivery_fee",
        "packaging_fee",
        "discount",
        "tax",
        "total",
        "rounding",
        "tip",
    )
    details = ("address", "requested_at", "notes", "table", "covers")
    update = {name: getattr(revision, name) for name in amounts}
    update |= {
        name: getattr(revision, name) for name in details if getattr(revision, name) is not None
    }
    return order.model_copy(update=update)


def as_received(event: OrderModified) -> OrderReceived | None:
    """The order a revision describes, when it carries the whole order (contract v3)."""
    if None in (event.mode, event.currency, event.payment_status, event.customer, event.placed_at):
        return None
    fields = event.model_dump(exclude={"event_id", "sequence", "revision"})
    return OrderReceived.model_validate(
        fields
        | {
            "event_id": deterministic_id(event.channel, "OrderReceived", event.external_id),
            "sequence": 1,
        }
    )


def _status(verdict: OrderEvent) -> OrderStatus:
    return OrderStatus.ACCEPTED if verdict.event_type == "OrderAccepted" else OrderStatus.REJECTED
