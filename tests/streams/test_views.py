from __future__ import annotations

from datetime import UTC, datetime

from events.codec import AvroCodec
from events.models import Actor, ActorKind, FulfilmentGroup, OrderRouted, StockReceived
from streams.catalogue import load_catalogue
from streams.views import SharedViews
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
