"""Customer history: recent orders per phone, address and device (velocity), and per-customer
aggregates (norms, tiers) for fraud screening and priority.

The one mutable piece next to the pure decisions: the worker feeds it from the order log,
possibly out of order and with redeliveries, so recording is idempotent by order id. Screening
reads it before the order is recorded; `excluding=` keeps an already recorded order from
counting against itself.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from typing import Literal

from events.models import OrderReceived
from events.privacy import customer_identity, normalise_phone

Tier = Literal["new", "regular", "vip"]

# A customer is "vip" from this many orders, or from this much spend (minor units of the
# customer's currency: 5,000.00 CNY / USD / ...), whichever comes first.
VIP_ORDERS = 10
VIP_SPEND = 500_000


@lru_cache(maxsize=1 << 16)
def normalise_address(text: str) -> str:
    """Casefolded, whitespace collapsed: how addresses are compared for velocity and blocking."""
    return " ".join(text.split()).casefold()


def customer_key(order: OrderReceived) -> str | None:
    """Who placed the order: the customer's pseudonymous key (`Customer.key`, the keyed hash
    sealing sets, and the subject of their data key), else — an order never sealed — who they
    are (`events.privacy.customer_identity`: the channel's customer id, else the phone), else
    None. The key, not the phone, is what the views hold for each customer (and snapshot)."""
    customer = order.customer
    if customer is not None and customer.key:
        return customer.key
    return customer_identity(customer, order.channel)


@dataclass(frozen=True)
class CustomerNorm:
    """What a customer usually orders: how many orders and their mean total (minor units)."""

    orders: int
    mean_total: int


@dataclass(frozen=True)
class _Recent:
    """An order as the velocity indexes and the exclusion need it."""

    placed_at: datetime
    phone: str | None
    address: str | None
    device: str | None
    customer: str | None
    total: int


class CustomerHistory:
    """Recent orders (for velocity) and per-customer count and spend (for norms and tiers).

    `prune(before)` drops the velocity entries and their ids but keeps the aggregates, so the
    velocity indexes stay bounded while norms and tiers survive. The price: an order placed
    before the last prune horizon is no longer recognised, so a redelivery of it would be
    counted in the aggregates again. Prune with a horizon longer than any redelivery delay
    (hours, not minutes) and that does not happen.
    """

    def __init__(self) -> None:
        self._recent: dict[str, _Recent] = {}
        self._by_phone: dict[str, set[str]] = {}
        self._by_address: dict[str, set[str]] = {}
        self._by_device: dict[str, set[str]] = {}
        # Per customer: (orders, spend). Tuples, not an object each: the views' snapshot holds
        # every customer of the history, and a million objects took ~9 s to unpickle at a
        # restart against ~0.6 s for tuples (docs/benchmarks.md, "Recovery").
        self._customers: dict[str, tuple[int, int]] = {}
        self._horizon: datetime | None = None

    @property
    def tracked_orders(self) -> int:
        """Orders held in the velocity indexes (what `prune` bounds)."""
        return len(self._recent)

    def size(self) -> int:
        """Entries held: orders in the velocity indexes and customers' aggregates."""
        return len(self._recent) + len(self._customers)

    def holds(self, order_id: str) -> bool:
        """Whether the order is recorded (and still within the prune horizon)."""
        return order_id in self._recent

    def record(self, order: OrderReceived) -> None:
        """Add the order; recording an order id that is already held changes nothing."""
        if order.order_id in self._recent:
            return
        entry = _Recent(
            placed_at=order.placed_at,
            phone=None  # a virtual number's relay is many buyers' (streams/fraud.py)
            if order.customer.phone_extension
            else normalise_phone(order.customer.phone or "") or None,
            address=(normalise_address(order.address.text) or None) if order.address else None,
            device=(order.device_id or "").strip() or None,
            customer=customer_key(order),
            total=order.total,
        )
        if entry.customer is not None:
            orders, spend = self._customers.get(entry.customer, (0, 0))
            self._customers[entry.customer] = (orders + 1, spend + entry.total)
        # An order older than the prune horizon counts for norms and tiers (a replay of the
        # log rebuilds them whenever prune runs) but is past every velocity window already.
        if self._horizon is not None and entry.placed_at < self._horizon:
            return
        self._recent[order.order_id] = entry
        for index, key in self._indexes(entry):
            index.setdefault(key, set()).add(order.order_id)

    def recent(
        self,
        *,
        phone: str | None = None,
        address: str | None = None,
        device: str | None = None,
        since: datetime,
        until: datetime | None = None,
        excluding: str | None = None,
    ) -> int:
        """Recorded orders with this phone, address text or device id (exactly one of them,
        normalised like `record` does) placed at or after `since` (and at or before `until`)."""
        keys = [
            (self._by_phone, None if phone is None else normalise_phone(phone)),
            (self._by_address, None if address is None else normalise_address(address)),
            (self._by_device, None if device is None else device.strip()),
        ]
        given = [(index, key) for index, key in keys if key is not None]
        if len(given) != 1:
            raise ValueError("recent() counts by exactly one of phone, address or device")
        index, key = given[0]
        placed = [self._recent[oid].placed_at for oid in index.get(key, ()) if oid != excluding]
        return sum(1 for at in placed if at >= since and (until is None or at <= until))

    def norm(self, customer_key: str, *, excluding: str | None = None) -> CustomerNorm | None:
        """Orders and mean total (floored) of the customer's recorded orders; None for none."""
        orders, spend = self._totals(customer_key, excluding=excluding)
        if orders <= 0:
            return None
        return CustomerNorm(orders=orders, mean_total=spend // orders)

    def tier(self, customer_key: str, *, excluding: str | None = None) -> Tier:
        """ "new" with no orders, "vip" from VIP_ORDERS orders or VIP_SPEND, else "regular"."""
        orders, spend = self._totals(customer_key, excluding=excluding)
        if orders <= 0:
            return "new"
        if orders >= VIP_ORDERS or spend >= VIP_SPEND:
            return "vip"
        return "regular"

    def copy(self) -> CustomerHistory:
        """A copy that later records and prunes leave alone (entries and aggregates are
        immutable, so only the containers are copied)."""
        other = CustomerHistory()
        other._recent = dict(self._recent)
        other._by_phone = {key: set(ids) for key, ids in self._by_phone.items()}
        other._by_address = {key: set(ids) for key, ids in self._by_address.items()}
        other._by_device = {key: set(ids) for key, ids in self._by_device.items()}
        other._customers = dict(self._customers)
        other._horizon = self._horizon
        return other

    def prune(self, before: datetime) -> None:
        """Forget velocity entries placed before `before`; aggregates stay."""
        if self._horizon is None or before > self._horizon:
            self._horizon = before
        for order_id in [oid for oid, e in self._recent.items() if e.placed_at < before]:
            entry = self._recent.pop(order_id)
            for index, key in self._indexes(entry):
                ids = index[key]
                ids.discard(order_id)
                if not ids:
                    del index[key]

    def forget(self, customers: Collection[str], orders: Collection[str] = ()) -> int:
        """A forgotten customer's (or order's) phone, address and device leave the velocity
        indexes — what a rebuild from the log, unable to open them, would hold; the orders
        still count for the customer's pseudonymous norm and tier, as they do on the log.
        How many orders were scrubbed."""
        scrubbed = 0
        for order_id, entry in list(self._recent.items()):
            if entry.customer not in customers and order_id not in orders:
                continue
            if entry.phone is None and entry.address is None and entry.device is None:
                continue
            for index, key in self._indexes(entry):
                ids = index[key]
                ids.discard(order_id)
                if not ids:
                    del index[key]
            self._recent[order_id] = replace(entry, phone=None, address=None, device=None)
            scrubbed += 1
        return scrubbed

    def _indexes(self, entry: _Recent) -> list[tuple[dict[str, set[str]], str]]:
        keys = (
            (self._by_phone, entry.phone),
            (self._by_address, entry.address),
            (self._by_device, entry.device),
        )
        return [(index, key) for index, key in keys if key is not None]

    def _totals(self, customer_key: str, *, excluding: str | None) -> tuple[int, int]:
        orders, spend = self._customers.get(customer_key, (0, 0))
        # Only an order still held can be taken out; one past the prune horizon is old enough
        # not to be the order being screened.
        excluded = self._recent.get(excluding) if excluding is not None else None
        if excluded is not None and excluded.customer == customer_key:
            orders, spend = orders - 1, spend - excluded.total
        return orders, spend
