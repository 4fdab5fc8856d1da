from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from events.codec import AvroCodec
from events.models import (
    Actor,
    ActorKind,
    FulfilmentGroup,
    OrderReceived,
    OrderRouted,
    StockReceived,
)
from events.privacy import PrivateCodec
from infra.keystore import MemoryKeys
from streams.reference import load_catalogue
from streams.worker.views import SharedViews
from tests.factories import received

NOW = datetime(2026, 11, 25, 4, 7, tzinfo=UTC)
SYSTEM = Actor(kind=ActorKind.SYSTEM, id="t")


def test_views_fold_stock_routes_and_customers_once_each() -> None:
    views = SharedViews(catalogue=load_catalogue(), codec=AvroCodec())
    receipt = StockReceived(event_id="s1", sequence=1, occurred_at=NOW, recorded_at=NOW,
                            correlation_id="c", actor=SYSTEM, sku="MUG-CERAMIC",
                            location="WH-SH", quantity=7)  # fmt: skip
    routed = OrderRouted(event_id="r1", sequence=3, occurred_at=NOW, recorded_at=NOW,
                         correlation_id="o-1", actor=SYSTEM, order_id="o-1", channel="webshop",
                         external_id="1", location="S01", reasons=[],
                         groups=[FulfilmentGroup(location="S01", lines=[])])  # fmt: skip
    for event in (receipt, receipt, routed, routed, received()):
        views.note(event)
    assert views.available("MUG-CERAMIC", "WH-SH") == 7
    assert views.available("MUG-CERAMIC", "WH-BJ") == 0
    assert views.load(NOW)["S01"] == 1 and views.load(NOW)["S02"] == 0
    assert views.history.tracked_orders == 1


def _routed(n: int, at: datetime) -> OrderRouted:
    return OrderRouted(event_id=f"r{n}", sequence=3, occurred_at=at, recorded_at=at,
                       correlation_id=f"o-{n}", actor=SYSTEM, order_id=f"o-{n}",
                       channel="webshop", external_id=str(n), location="S01", reasons=[],
                       groups=[FulfilmentGroup(location="S01", lines=[])])  # fmt: skip


def test_the_reading_thread_and_the_event_loop_never_see_a_view_half_changed() -> None:
    """The views thread folds while the agents read (fraud velocity walks a phone's orders,
    the capacity timer forgets past slots): without the views' lock either side raised
    "changed size during iteration" within a few hundred rounds."""
    import threading
    from datetime import timedelta

    views = SharedViews(catalogue=load_catalogue(), codec=AvroCodec())
    stop = threading.Event()
    errors: list[BaseException] = []

    def fold() -> None:  # what the views thread does
        n = 0
        while not stop.is_set():
            n += 1
            at = NOW + timedelta(minutes=15 * (n % 400))
            try:
                views.note(received(order_id=f"o-{n}", event_id=f"e-{n}", placed_at=NOW))
                views.note(_routed(n, at))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    import sys

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as possible
    thread = threading.Thread(target=fold)
    thread.start()
    try:
        for round_ in range(3000):
            with views.reading():
                views.history.recent(phone="+8613800000000", since=NOW)
                if round_ % 10 == 0:
                    views.forget_before(NOW + timedelta(hours=round_ % 100))
            if errors:
                break
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(switch)
    assert not errors, errors[0]


def test_an_order_this_worker_noted_is_not_opened_again_when_the_log_brings_it() -> None:
    """The reading thread meets the worker's own outputs on the log: an `OrderReceived` it
    holds already is skipped before it is decoded (and its personal data opened); another
    is decoded and folded."""
    decoded: list[str] = []

    class Counting(AvroCodec):
        def decode(self, data: bytes, *, where: str = "") -> Any:
            event = super().decode(data, where=where)
            decoded.append(event.event_type)
            return event

    codec = Counting()
    views = SharedViews(catalogue=load_catalogue(), codec=codec)
    mine = received(order_id="o-mine", event_id="e-mine")
    views.note(mine)
    views._fold(codec.encode(mine), b"o-mine")
    assert decoded == []
    other = received(order_id="o-other", event_id="e-other")
    views._fold(codec.encode(other), b"o-other")
    assert decoded == ["OrderReceived"] and views.history.tracked_orders == 2


def test_a_cut_pickles_outside_the_lock_and_what_changes_meanwhile_is_not_in_it(
    monkeypatch: Any,
) -> None:
    """The views' snapshot is pickled with the lock free (a second and more at a million
    orders, while the views' thread and the agents' decisions would wait), from a copy:
    what is noted while it is pickled belongs to the next cut, not half to this one."""
    import pickle
    import threading

    from streams.worker import views as module

    views = SharedViews(catalogue=load_catalogue(), codec=AvroCodec())
    receipt = StockReceived(event_id="s1", sequence=1, occurred_at=NOW, recorded_at=NOW,
                            correlation_id="c", actor=SYSTEM, sku="MUG-CERAMIC",
                            location="WH-SH", quantity=7)  # fmt: skip
    for event in (receipt, _routed(1, NOW), received()):
        views.note(event)
    meanwhile = [
        _routed(2, NOW),  # into the same slot's set
        received(event_id="e-2", order_id="o-2"),  # the same customer: indexes and aggregates
        receipt.model_copy(update={"event_id": "s2", "sequence": 2}),
    ]
    locked_while_pickling: list[bool] = []
    real = pickle.dumps

    def dumps(obj: Any, protocol: int) -> bytes:
        def try_lock() -> None:  # from another thread (the lock is re-entrant in this one)
            taken = views._lock.acquire(blocking=False)
            if taken:
                views._lock.release()
            locked_while_pickling.append(not taken)

        other = threading.Thread(target=try_lock)
        other.start()
        other.join()
        for event in meanwhile:  # the views' thread goes on meanwhile
            views.note(event)
        return real(obj, protocol)

    monkeypatch.setattr(module.pickle, "dumps", dumps)
    blob = views.cut()
    assert locked_while_pickling == [False]

    restored = SharedViews(catalogue=load_catalogue(), codec=AvroCodec())
    restored.restore(blob)
    assert restored.available("MUG-CERAMIC", "WH-SH") == 7
    assert restored.load(NOW)["S01"] == 1
    assert restored.history.tracked_orders == 1 and restored.history.holds("o-1")
    assert restored.history.size() == views.history.size() - 1  # o-2 only in the live one
    assert views.available("MUG-CERAMIC", "WH-SH") == 14 and views.load(NOW)["S01"] == 2


def test_a_forgotten_customer_leaves_the_views_and_their_next_cut() -> None:
    keys = MemoryKeys()
    codec = PrivateCodec(keys)
    views = SharedViews(catalogue=load_catalogue(), codec=codec)
    order = codec.decode(codec.encode(received(device_id="dev-7f3a")))
    assert isinstance(order, OrderReceived) and order.customer.key
    views.note(order)
    assert b"8613800000000" in views.cut() and not views.recut
    keys.forget([order.customer.key])

    assert views.forget({order.customer.key}) == 1
    assert views.recut  # the snapshot is cut again at the next chance
    cut = views.cut()
    for text in (b"8613800000000", b"88 nanjing rd", b"dev-7f3a"):
        assert text not in cut, text
    assert not views.recut
    assert views.forget({order.customer.key}) == 0 and not views.recut  # nothing to cut for
    restored = SharedViews(catalogue=load_catalogue(), codec=codec)
    restored.restore(cut)
    assert restored.history.tier(order.customer.key) == "regular"  # counted, pseudonymously
