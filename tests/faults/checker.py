"""What must hold after a fault run, checked over what the run left behind (an `Observation`:
the topics as read back, ClickHouse's tables, what the workload sent and was acknowledged).

Pure functions over plain values: each property is a function `Observation -> list[Violation]`
in `PROPERTIES`, so each can be fed a small hand-made log (tests/faults/test_checker.py). The
order lifecycle is `events.lifecycle.TRANSITIONS` (the specification, held strictly by
`tests.events.lifecycle_checker`); the stock ledger is folded here, in plain Python, and once
more with `streams.inventory.apply` to hold the code's own fold to the conservation law.
Expected read models come from `tests.projections.scenario`, never from the projector's code.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from events.lifecycle import OrderStatus
from events.models import (
    DeadLetter,
    ExpiryBatchAdded,
    ExpiryBatchExpired,
    OrderEvent,
    OrderReceived,
    OrderReservationFailed,
    OrderReservationReleased,
    OrderReserved,
    OrderRouted,
    SafetyStockSet,
    StockAdjusted,
    StockCommitted,
    StockCounted,
    StockEvent,
    StockReceived,
    StockReleased,
    StockReserved,
    stock_key,
)
from tests.events.lifecycle_checker import InvalidTransition
from tests.events.lifecycle_checker import fold as lifecycle_fold

S = OrderStatus
# Statuses the system itself must move an order on from; every other status is at rest
# (prioritised, held for a reviewer, rejected, cancelled, or further on in a store's hands).
IN_FLIGHT = frozenset(
    {S.RECEIVED, S.ACCEPTED, S.ROUTED, S.PARTIALLY_RESERVED, S.RESERVATION_FAILED, S.RESERVED}
)
VOID = frozenset({S.REJECTED, S.CANCELLED})
# Statuses in which an order holds the units of its last reservation.
HOLDING = frozenset({S.RESERVED, S.PRIORITISED, S.ACCEPTED_BY_STORE, S.PREPARING, S.READY})
MESSAGES_PER_ORDER = 20  # the amplification bound, per topic
EXAMPLES = 5


@dataclass(frozen=True)
class ClickHouseSnapshot:
    """The read models the checker compares with the log, keyed as the log is."""

    orders: Mapping[str, tuple[str, int]]  # order id -> (status, total)
    order_events: Mapping[str, tuple[int, int]]  # order id -> (events, sum of sequences)
    stock: Mapping[str, int]  # sku@location -> rows (one per ledger event, append-only)
    stock_levels: Mapping[str, tuple[int, int, int]]  # sku@location -> on hand, reserved, ATP
    behind: int = 0  # messages of the two logs the projector had not yet written


@dataclass(frozen=True)
class TailSample:
    """The last messages of a command topic's busiest partition: what it is full of."""

    topic: str
    partition: int
    messages: int
    distinct_ids: int
    types: Mapping[str, int]

    def describe(self) -> str:
        kinds = ", ".join(f"{n} {kind}" for kind, n in Counter(self.types).most_common(3))
        return (
            f"last {self.messages} of {self.topic}[{self.partition}]: {kinds}; "
            f"{self.distinct_ids} distinct event ids"
        )


@dataclass(frozen=True)
class Observation:
    """Everything a run left behind, read back after the settle period."""

    acknowledged: frozenset[str]  # order ids whose OrderReceived Kafka acknowledged
    order_log: Sequence[OrderEvent]  # per partition in offset order (so per order in order)
    ledger: Sequence[StockEvent]
    dead_letters: Sequence[DeadLetter]
    malformed: Sequence[bytes]  # raw inputs that must each be dead-lettered exactly once
    topic_sizes: Mapping[str, int] = field(default_factory=dict)  # messages per topic
    growth: Mapping[str, int] = field(default_factory=dict)  # command topic -> added when quiet
    quiet_s: float = 0.0  # how long `growth` was measured over
    settle_s: float = 0.0  # the liveness bound the run waited, after the faults stopped
    clickhouse: ClickHouseSnapshot | None = None
    unexpected_exits: Sequence[str] = ()  # processes that died without the nemesis
    tails: Sequence[TailSample] = ()
    # ReleaseStock commands seen on the stock-command topic per reservation id, for the open
    # reservations `suspect_reservations` names (None: not looked for).
    release_commands: Mapping[str, int] | None = None
    lag: Mapping[str, int] = field(default_factory=dict)  # worker group: unread input messages
    command_topics: tuple[str, ...] = ("oms.stock-commands.v1", "oms.order-commands.v1")


@dataclass(frozen=True)
class Violation:
    property: str
    summary: str
    examples: tuple[str, ...] = ()

    def describe(self) -> str:
        lines = [f"{self.property}: {self.summary}"]
        lines += [f"    e.g. {example}" for example in self.examples[:EXAMPLES]]
        return "\n".join(lines)


def _violation(name: str, summary: str, examples: Iterable[Any] = ()) -> Violation:
    return Violation(name, summary, tuple(str(e) for e in list(examples)[:EXAMPLES]))


# ---------------------------------------------------------------- folds


def histories(log: Iterable[OrderEvent]) -> dict[str, list[OrderEvent]]:
    """Each order's events in log order, duplicates (same event id) left out."""
    by_order: dict[str, list[OrderEvent]] = defaultdict(list)
    seen: set[str] = set()
    for event in log:
        if event.event_id not in seen:
            seen.add(event.event_id)
            by_order[event.order_id].append(event)
    return dict(by_order)


def status_of(events: Sequence[OrderEvent]) -> OrderStatus | None:
    """The lifecycle status the history adds up to; None if it breaks the lifecycle."""
    try:
        return lifecycle_fold(events).status
    except (InvalidTransition, ValueError):
        return None


def at_rest(events: Sequence[OrderEvent]) -> bool:
    status = status_of(events)
    return status is not None and status not in IN_FLIGHT


def holdings(events: Sequence[OrderEvent]) -> Counter[str] | None:
    """Units per sku@location the order's own log says the ledger holds for it; None while it
    is in flight or its history is broken (other properties report those)."""
    status = status_of(events)
    if status is None or status in IN_FLIGHT - {S.RESERVED}:
        return None
    held: Counter[str] = Counter()
    if status not in HOLDING:
        return held
    for event in events:  # the last routing's reservation, less what was given back since
        if isinstance(event, OrderRouted):
            held = Counter()
        elif isinstance(event, OrderReserved):
            held = Counter({stock_key(x.sku, x.location or ""): x.quantity for x in event.lines})
        elif isinstance(event, OrderReservationReleased):
            held.subtract({stock_key(x.sku, x.location or ""): x.quantity for x in event.lines})
    return +held


@dataclass
class _Level:
    """One sku@location ledger folded from its events' quantities (independently of
    `streams.inventory`)."""

    on_hand: int = 0
    reserved: int = 0
    safety: int = 0
    sequence: int = 0
    open: dict[str, tuple[str, int]] = field(default_factory=dict)  # rid -> order, units
    ever: set[str] = field(default_factory=set)

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved - self.safety


@dataclass
class LedgerFold:
    """The ledger folded step by step, with what went wrong on the way."""

    levels: dict[str, _Level] = field(default_factory=dict)
    negative_atp: list[str] = field(default_factory=list)
    not_conserved: list[str] = field(default_factory=list)
    out_of_sequence: list[str] = field(default_factory=list)

    def open_by_order(self) -> dict[str, Counter[str]]:
        held: dict[str, Counter[str]] = defaultdict(Counter)
        for key, level in self.levels.items():
            for order_id, units in level.open.values():
                held[order_id][key] += units
        return dict(held)

    def open_reservations(self) -> dict[str, dict[str, str]]:
        """Order id -> its open reservations' ids -> their sku@location."""
        found: dict[str, dict[str, str]] = defaultdict(dict)
        for key, level in self.levels.items():
            for rid, (order_id, _) in level.open.items():
                found[order_id][rid] = key
        return dict(found)

    def excess(self, order_id: str, expected: Counter[str] | None) -> list[str]:
        """The open reservations of `order_id` at the sku@locations where the ledger holds
        other than `expected` (all of them for None: the order should hold nothing)."""
        held = +self.open_by_order().get(order_id, Counter())
        return [
            rid
            for rid, key in self.open_reservations().get(order_id, {}).items()
            if expected is None or held[key] != expected[key]
        ]


def fold_ledger(ledger: Iterable[StockEvent]) -> LedgerFold:
    fold = LedgerFold()
    seen: set[str] = set()
    for event in ledger:
        if event.event_id in seen:
            continue  # a duplicate: `no_event_twice` reports it
        seen.add(event.event_id)
        key = stock_key(event.sku, event.location)
        level = fold.levels.setdefault(key, _Level())
        if event.sequence != level.sequence + 1:
            fold.out_of_sequence.append(
                f"{key}: {event.event_type} has sequence {event.sequence} after {level.sequence}"
            )
        level.sequence = event.sequence
        _step(level, event, key, fold)
        if level.available < 0:
            fold.negative_atp.append(
                f"{key} seq {event.sequence} ({event.event_type}): on hand {level.on_hand}, "
                f"reserved {level.reserved}, safety {level.safety} -> ATP {level.available}"
            )
    return fold


def _step(level: _Level, event: StockEvent, key: str, fold: LedgerFold) -> None:
    match event:
        case StockReceived(quantity=q) | ExpiryBatchAdded(quantity=q):
            level.on_hand += q
        case StockAdjusted(delta=delta):
            level.on_hand += delta
        case StockCounted(counted=counted):
            level.on_hand = counted
        case ExpiryBatchExpired(quantity=q):
            level.on_hand -= q
        case SafetyStockSet(quantity=q):
            level.safety = q
        case StockReserved(reservation_id=rid, order_id=order_id, quantity=q):
            if rid in level.ever:
                fold.not_conserved.append(f"{key}: reservation {rid} reserved twice")
            level.ever.add(rid)
            level.open[rid] = (order_id, q)
            level.reserved += q
        case (
            StockReleased(reservation_id=rid, quantity=q)
            | StockCommitted(reservation_id=rid, quantity=q)
        ):
            held = level.open.pop(rid, None)
            if held is None or held[1] != q:
                fold.not_conserved.append(
                    f"{key}: {event.event_type} of {q} for reservation {rid}, which holds "
                    f"{held[1] if held else 'nothing (not open)'}"
                )
            level.reserved -= held[1] if held else 0
            if isinstance(event, StockCommitted):
                level.on_hand -= q
    if level.on_hand < 0:
        fold.not_conserved.append(f"{key} seq {event.sequence}: on hand {level.on_hand}")


# ---------------------------------------------------------------- safety


def nothing_lost(obs: Observation) -> list[Violation]:
    logged = {event.order_id for event in obs.order_log if isinstance(event, OrderReceived)}
    lost = sorted(obs.acknowledged - logged)
    if not lost:
        return []
    return [
        _violation(
            "nothing_lost",
            f"{len(lost)} of {len(obs.acknowledged)} acknowledged "
            "orders have no OrderReceived on the order log",
            lost,
        )
    ]


def no_event_twice(obs: Observation) -> list[Violation]:
    found = []
    for name, log in (("order log", obs.order_log), ("stock ledger", obs.ledger)):
        twice = [(i, n) for i, n in Counter(e.event_id for e in log).items() if n > 1]
        if twice:
            found.append(
                _violation(
                    "no_event_twice",
                    f"{len(twice)} event ids on the {name} more than once",
                    (f"{i} x{n}" for i, n in twice),
                )
            )
    return found


def sequences_intact(obs: Observation) -> list[Violation]:
    broken = [
        f"{order_id}: {[e.sequence for e in events]}"
        for order_id, events in histories(obs.order_log).items()
        if [e.sequence for e in events] != list(range(1, len(events) + 1))
    ]
    broken += fold_ledger(obs.ledger).out_of_sequence
    if not broken:
        return []
    return [
        _violation(
            "sequences_intact", f"{len(broken)} histories not numbered 1..n without gaps", broken
        )
    ]


def lifecycle_obeyed(obs: Observation) -> list[Violation]:
    broken = []
    for events in histories(obs.order_log).values():
        try:
            lifecycle_fold(events)
        except (InvalidTransition, ValueError) as exc:
            broken.append(str(exc))
    if not broken:
        return []
    return [_violation("lifecycle_obeyed", f"{len(broken)} orders break the lifecycle", broken)]


def failures_name_what_is_missing(obs: Observation) -> list[Violation]:
    """Every OrderReservationFailed names the lines that could not be reserved (issue 19: an
    order revised and re-reserved until its routing attempts ran out failed with none)."""
    empty = [e for e in obs.order_log if isinstance(e, OrderReservationFailed) and not e.missing]
    if not empty:
        return []
    reasons = Counter(e.reason for e in empty)
    return [
        _violation(
            "failures_name_what_is_missing",
            f"{len(empty)} OrderReservationFailed events name no missing line ("
            + ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
            + ")",
            (f"{e.order_id} seq {e.sequence}: {e.reason}" for e in empty),
        )
    ]


def atp_never_negative(obs: Observation) -> list[Violation]:
    negative = fold_ledger(obs.ledger).negative_atp
    if not negative:
        return []
    return [
        _violation(
            "atp_never_negative",
            f"{len(negative)} ledger steps leave reserved > on hand - safety stock",
            negative,
        )
    ]


def stock_conserved(obs: Observation) -> list[Violation]:
    """Every release or commit closes an open reservation of exactly its units, no reservation
    is taken twice, on hand never goes below 0 — and the code's own fold
    (`streams.inventory.apply`) keeps on_hand = received - committed + adjusted and agrees."""
    from streams import inventory

    fold = fold_ledger(obs.ledger)
    broken = list(fold.not_conserved)
    levels: dict[str, inventory.StockLevel] = {}
    failed: set[str] = set()
    seen: set[str] = set()
    for event in obs.ledger:
        key = stock_key(event.sku, event.location)
        if key in failed or event.event_id in seen:
            continue
        seen.add(event.event_id)
        level = levels.get(key) or inventory.empty(event.sku, event.location)
        try:
            level = inventory.apply(level, event)
        except inventory.LedgerInconsistent as exc:
            broken.append(f"streams.inventory.apply refuses it: {exc}")
            failed.add(key)
            continue
        if level.on_hand != level.received - level.committed + level.adjusted:
            broken.append(
                f"{key} seq {event.sequence}: on hand {level.on_hand} != received "
                f"{level.received} - committed {level.committed} + adjusted "
                f"{level.adjusted}"
            )
            failed.add(key)
        levels[key] = level
    for key, level in levels.items():
        mine = fold.levels[key]
        if key not in failed and (level.on_hand, level.reserved) != (mine.on_hand, mine.reserved):
            broken.append(
                f"{key}: streams.inventory folds on hand {level.on_hand}, reserved "
                f"{level.reserved}; the ledger's quantities add up to "
                f"{mine.on_hand}, {mine.reserved}"
            )
    if not broken:
        return []
    return [_violation("stock_conserved", f"{len(broken)} ledger steps do not add up", broken)]


def void_orders_hold_nothing(obs: Observation) -> list[Violation]:
    """An order whose last status is rejected or cancelled holds no open reservation."""
    open_by_order = fold_ledger(obs.ledger).open_by_order()
    leaks = []
    for order_id, events in histories(obs.order_log).items():
        held = open_by_order.get(order_id)
        if held and status_of(events) in VOID:
            leaks.append((order_id, events[-1].event_type, dict(held)))
    if not leaks:
        return []
    units = sum(sum(held.values()) for _, _, held in leaks)
    fold = fold_ledger(obs.ledger)
    rids = [rid for order_id, _, _ in leaks for rid in fold.excess(order_id, None)]
    return [
        _violation(
            "void_orders_hold_nothing",
            f"{len(leaks)} rejected or cancelled orders still hold {units} units in "
            f"{len(rids)} open reservations{_releases(obs, rids)}",
            (f"{order_id} (last {last}) holds {held}" for order_id, last, held in leaks),
        )
    ]


def _releases(obs: Observation, rids: Sequence[str]) -> str:
    """Whether the order agent ever asked for these reservations back."""
    if obs.release_commands is None or not rids:
        return ""
    never = sum(1 for rid in rids if not obs.release_commands.get(rid))
    return f"; for {never} of the {len(rids)} reservations in excess no ReleaseStock was ever sent"


def suspect_reservations(order_log: Sequence[OrderEvent], fold: LedgerFold) -> list[str]:
    """Open reservations of orders that should not hold them (void, or holding other than
    their log says): the harness looks for the ReleaseStock commands sent for these."""
    open_by_order = fold.open_by_order()
    suspects = []
    for order_id, events in histories(order_log).items():
        if order_id not in open_by_order:
            continue
        expected = holdings(events)
        if status_of(events) in VOID:
            suspects += fold.excess(order_id, None)
        elif expected is not None and expected != +open_by_order[order_id]:
            suspects += fold.excess(order_id, expected)
    return suspects


def ledger_matches_orders(obs: Observation) -> list[Violation]:
    """What the ledger holds for each settled, live order is what its log says it holds
    (the last reservation, less what was released since); nothing is held for unknown orders."""
    fold = fold_ledger(obs.ledger)
    open_by_order = fold.open_by_order()
    by_order = histories(obs.order_log)
    wrong = []
    rids: list[str] = []
    for order_id, events in by_order.items():
        expected = holdings(events)
        if expected is None or status_of(events) in VOID:
            continue  # in flight (liveness), or void (void_orders_hold_nothing)
        actual = +open_by_order.get(order_id, Counter())
        if actual != expected:
            rids += fold.excess(order_id, expected)
            wrong.append(
                f"{order_id} ({status_of(events)}): log says {dict(expected)}, "
                f"ledger holds {dict(actual)}"
            )
    strangers = [o for o in open_by_order if o not in by_order and +open_by_order[o]]
    wrong += [
        f"{o}: ledger holds {dict(open_by_order[o])} for an order not on the log" for o in strangers
    ]
    if not wrong:
        return []
    return [
        _violation(
            "ledger_matches_orders",
            f"{len(wrong)} orders' holdings differ between the order log and the stock "
            f"ledger{_releases(obs, rids)}",
            wrong,
        )
    ]


def clickhouse_equals_log(obs: Observation) -> list[Violation]:
    snapshot = obs.clickhouse
    if snapshot is None:
        return [_violation("clickhouse_equals_log", "ClickHouse could not be read")]
    wrong: list[str] = []
    if snapshot.behind:
        wrong.append(f"the projector is {snapshot.behind} messages behind the logs")
    wrong += _orders_differences(snapshot, histories(obs.order_log))
    wrong += _stock_differences(snapshot, obs.ledger)
    if not wrong:
        return []
    return [
        _violation(
            "clickhouse_equals_log",
            f"{len(wrong)} differences between ClickHouse and the logs",
            wrong,
        )
    ]


def _orders_differences(
    snapshot: ClickHouseSnapshot, by_order: Mapping[str, list[OrderEvent]]
) -> list[str]:
    from tests.projections.scenario import order_facts

    wrong = []
    for order_id, events in by_order.items():
        try:
            facts = order_facts(events)
        except (InvalidTransition, ValueError):
            continue  # lifecycle_obeyed reports it
        row = snapshot.orders.get(order_id)
        if row != (facts.status, facts.total):
            wrong.append(
                f"orders {order_id}: {row} in ClickHouse, {(facts.status, facts.total)} on the log"
            )
        counted = (len(events), sum(e.sequence for e in events))
        if snapshot.order_events.get(order_id) != counted:
            wrong.append(
                f"order_events {order_id}: (events, sum of sequences) "
                f"{snapshot.order_events.get(order_id)}, log {counted}"
            )
    wrong += [
        f"orders {o}: in ClickHouse, not on the log" for o in snapshot.orders if o not in by_order
    ]
    return wrong


def _stock_differences(snapshot: ClickHouseSnapshot, ledger: Sequence[StockEvent]) -> list[str]:
    from tests.projections.scenario import stock_facts

    by_key: dict[str, list[StockEvent]] = defaultdict(list)
    seen: set[str] = set()
    for event in ledger:
        if event.event_id not in seen:
            seen.add(event.event_id)
            by_key[stock_key(event.sku, event.location)].append(event)
    wrong = []
    for key in sorted(set(by_key) | set(snapshot.stock) | set(snapshot.stock_levels)):
        events = by_key.get(key, [])
        if snapshot.stock.get(key, 0) != len(events):
            wrong.append(
                f"stock {key}: {snapshot.stock.get(key, 0)} rows, {len(events)} ledger events"
            )
        facts = stock_facts(events)
        expected = (facts.on_hand, facts.reserved, facts.available) if events else None
        if snapshot.stock_levels.get(key) != expected:
            wrong.append(
                f"stock_levels {key}: (on hand, reserved, ATP) "
                f"{snapshot.stock_levels.get(key)}, log {expected}"
            )
    return wrong


def dead_letters_once(obs: Observation) -> list[Violation]:
    """Each malformed input is on the DLQ under exactly one dead-letter id. (A redelivered
    input's letter has the same id: copies of one letter are counted, not refused.)"""
    ids: dict[bytes, set[str]] = defaultdict(set)
    for letter in obs.dead_letters:
        ids[letter.raw].add(letter.dead_letter_id)
    missing = [raw for raw in obs.malformed if not ids.get(raw)]
    twice = [(raw, len(ids[raw])) for raw in obs.malformed if len(ids.get(raw, ())) > 1]
    found = []
    if missing:
        found.append(
            _violation(
                "dead_letters_once",
                f"{len(missing)} of {len(obs.malformed)} malformed inputs are not on the DLQ",
                (raw[:60] for raw in missing),
            )
        )
    if twice:
        found.append(
            _violation(
                "dead_letters_once",
                f"{len(twice)} malformed inputs are on the DLQ as more than one letter",
                (f"{raw[:60]!r} x{n}" for raw, n in twice),
            )
        )
    return found


# ---------------------------------------------------------------- liveness


def orders_settle(obs: Observation) -> list[Violation]:
    by_order = histories(obs.order_log)
    restless = {o: status_of(events) for o, events in by_order.items() if not at_rest(events)}
    if not restless:
        return []
    counts = Counter(str(s.value if s else "broken") for s in restless.values())
    behind = ", ".join(f"{n:,} on {t}" for t, n in obs.lag.items() if n)
    return [
        _violation(
            "orders_settle",
            f"{len(restless)} of {len(by_order)} orders not at rest {obs.settle_s:.0f} s after the "
            f"faults stopped ({', '.join(f'{n} {s}' for s, n in counts.most_common())})"
            + (f"; the workers have not read {behind}" if behind else ""),
            (
                f"{o} ({s.value if s else 'broken'}, last {by_order[o][-1].event_type})"
                for o, s in sorted(restless.items())
            ),
        )
    ]


def bounded_amplification(obs: Observation) -> list[Violation]:
    orders = max(len(obs.acknowledged), len(histories(obs.order_log)), 1)
    over = {t: n for t, n in obs.topic_sizes.items() if n > MESSAGES_PER_ORDER * orders}
    if not over:
        return []
    tails = [t.describe() for t in obs.tails if t.topic in over]
    return [
        _violation(
            "bounded_amplification",
            f"over {MESSAGES_PER_ORDER} messages per order ({orders} orders) on "
            + ", ".join(f"{t}: {n:,} ({n / orders:.0f} per order)" for t, n in over.items()),
            tails,
        )
    ]


def command_topics_quiet(obs: Observation) -> list[Violation]:
    grew = {t: n for t, n in obs.growth.items() if t in obs.command_topics and n > 0}
    if not grew:
        return []
    tails = [t.describe() for t in obs.tails if t.topic in grew]
    return [
        _violation(
            "command_topics_quiet",
            f"still growing {obs.settle_s:.0f} s after the faults stopped: "
            + ", ".join(f"{t} +{n:,} in {obs.quiet_s:.0f} s" for t, n in grew.items()),
            tails,
        )
    ]


def processes_stay_up(obs: Observation) -> list[Violation]:
    """Only the nemesis ends a process: none exits on its own (a broker or ClickHouse restart
    is a transient error to ride out)."""
    if not obs.unexpected_exits:
        return []
    return [
        _violation(
            "processes_stay_up",
            f"{len(obs.unexpected_exits)} processes exited without being killed",
            obs.unexpected_exits,
        )
    ]


Property = Callable[[Observation], list[Violation]]
SAFETY: tuple[Property, ...] = (
    nothing_lost,
    no_event_twice,
    sequences_intact,
    lifecycle_obeyed,
    failures_name_what_is_missing,
    atp_never_negative,
    stock_conserved,
    void_orders_hold_nothing,
    ledger_matches_orders,
    clickhouse_equals_log,
    dead_letters_once,
)
LIVENESS: tuple[Property, ...] = (
    orders_settle,
    bounded_amplification,
    command_topics_quiet,
    processes_stay_up,
)
PROPERTIES = SAFETY + LIVENESS


@dataclass(frozen=True)
class Result:
    violations: tuple[Violation, ...]
    checked: tuple[str, ...]
    stats: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def failed(self) -> list[str]:
        return sorted({v.property for v in self.violations})

    def report(self) -> str:
        failed = set(self.failed())
        lines = [
            f"{'OK' if self.ok else 'FAILED'}: {len(failed)} of {len(self.checked)} "
            "properties violated"
        ]
        for name in self.checked:
            kind = "safety  " if name in {p.__name__ for p in SAFETY} else "liveness"
            lines.append(f"  {kind} {name:<26} {'VIOLATED' if name in failed else 'ok'}")
        for violation in self.violations:
            lines.append("  " + violation.describe().replace("\n", "\n  "))
        if self.stats:
            lines.append("  stats: " + ", ".join(f"{k} {v}" for k, v in self.stats.items()))
        return "\n".join(lines)


def check(obs: Observation, properties: Sequence[Property] = PROPERTIES) -> Result:
    violations = [v for prop in properties for v in prop(obs)]
    by_order = histories(obs.order_log)
    outcomes = Counter(str(status_of(events) or "broken") for events in by_order.values())
    stats = {
        "orders": len(by_order),
        "acknowledged": len(obs.acknowledged),
        "order events": len(obs.order_log),
        "ledger events": len(obs.ledger),
        "dead letters": len(obs.dead_letters),
        "outcomes": dict(outcomes.most_common()),
        "unread by the workers": {t: n for t, n in obs.lag.items() if n},
    }
    return Result(tuple(violations), tuple(p.__name__ for p in properties), stats)
