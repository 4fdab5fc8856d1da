"""Consolidation, the decision (docs/carriers.md, "Consolidation and splits"): which orders of
a wave share one parcel and one label. Pure: the shipment requests and when each order was
ready are passed in.

One customer's orders ship together when they go to the same address from the same location,
at the same temperature class, were ready within the window of the group's first, and none is
cash on delivery (each of those collects its own amount, so ships alone). The group's shipment
is the first order's reference (its idempotency key: a wave run again after a crash asks for
the same shipment even if another order has joined since), one parcel of their weights and
their declared values; its cost is split over the orders by weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from events.shipping import Parcel, Party, ShipmentRequest


@dataclass(frozen=True)
class Candidate:
    order_id: str
    request: ShipmentRequest
    ready_at: datetime


def _address(party: Party) -> tuple[str | None, ...]:
    return (
        party.name,
        party.phone,
        party.country,
        party.province,
        party.city,
        party.district,
        party.street,
        party.postal_code,
    )


def consolidate(candidates: list[Candidate], *, within: timedelta) -> list[list[Candidate]]:
    """The candidates in parcels: each group in ready order, groups in the order of their
    first. `within` zero: every order alone."""
    groups: list[list[Candidate]] = []
    open_groups: dict[tuple[object, ...], list[Candidate]] = {}
    for candidate in sorted(candidates, key=lambda c: c.ready_at):
        request = candidate.request
        if within <= timedelta(0) or request.cod_amount:
            groups.append([candidate])
            continue
        key = (
            _address(request.sender),
            _address(request.recipient),
            request.temperature,
            request.currency,
        )
        group = open_groups.get(key)
        if group is not None and candidate.ready_at - group[0].ready_at <= within:
            group.append(candidate)
            continue
        group = [candidate]
        open_groups[key] = group
        groups.append(group)
    return groups


def merged_request(group: list[Candidate]) -> ShipmentRequest:
    """The one shipment of a group: the first order's reference, one parcel of them all."""
    first = group[0].request
    if len(group) == 1:
        return first
    weight = sum(c.request.weight_g for c in group)
    box = first.parcels[0]
    declared = [c.request.declared_value for c in group]
    return first.model_copy(
        update={
            "parcels": [
                Parcel(
                    weight_g=weight,
                    length_mm=box.length_mm,
                    width_mm=box.width_mm,
                    height_mm=box.height_mm,
                    description=box.description,
                )
            ],
            "declared_value": None if None in declared else sum(d or 0 for d in declared),
        }
    )


def split_cost(total: int, weights: list[int]) -> list[int]:
    """`total` over the orders in proportion to their weights, in whole minor units that add
    up to it (the remainder goes to the first)."""
    whole = sum(weights)
    if whole <= 0:
        shares = [total // len(weights)] * len(weights)
    else:
        shares = [total * weight // whole for weight in weights]
    shares[0] += total - sum(shares)
    return shares
