"""The polling base on the real broker: cursor saved only after Kafka acked the page."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import pytest

from connectors.base import ChannelEvent
from connectors.polling import CursorStore, Page, PollingConnector, poll_once
from connectors.webshop import WebshopConnector
from events.codec import AvroCodec
from infra.publisher import Publisher
from infra.settings import Settings
from tests.conftest import FIXTURES, read_topic

pytestmark = pytest.mark.integration
ORDER = json.loads((FIXTURES / "webshop" / "ship_order.json").read_bytes())


class FakeShopPlatform(PollingConnector):
    """A fake platform API (in memory) in front of the webshop payload format."""

    name = "webshop"

    def __init__(self, orders: list[bytes], *, page_size: int = 2) -> None:
        super().__init__()
        self.orders = orders
        self.page_size = page_size
        self.fetches: list[str | None] = []
        self.parser = WebshopConnector()

    def fetch(self, cursor: str | None) -> Page:
        self.fetches.append(cursor)
        start = int(cursor or 0)
        end = min(start + self.page_size, len(self.orders))
        return Page(self.orders[start:end], str(end), more=end < len(self.orders))

    def parse(
        self, raw: bytes, *, received_at: datetime, headers: Mapping[str, str] | None = None
    ) -> ChannelEvent:
        return self.parser.parse(raw, received_at=received_at, headers=headers)


def orders(ids: range) -> list[bytes]:
    return [json.dumps(ORDER | {"id": n}).encode() for n in ids]


def test_polling_publishes_every_page_and_resumes_after_the_saved_cursor(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    cursors = CursorStore(tmp_path / "cursors")
    platform = FakeShopPlatform([*orders(range(1, 4)), b"{broken", *orders(range(4, 6))])
    report = poll_once(platform, publisher=Publisher(isolated_settings), cursors=cursors)
    assert (report.pages, report.published, report.dead_lettered) == (3, 5, 1)
    assert cursors.load("webshop") == "6"

    platform.orders += orders(range(6, 8))
    again = poll_once(platform, publisher=Publisher(isolated_settings), cursors=cursors)
    assert platform.fetches[-1] == "6" and again.published == 2
    events = read_topic(isolated_settings, isolated_settings.topics.intake, expect=7)
    assert sorted(int(AvroCodec().decode(m.value()).external_id) for m in events) == [  # type: ignore[union-attr]
        1, 2, 3, 4, 5, 6, 7]  # fmt: skip


def test_a_crash_before_the_cursor_is_saved_refetches_the_page(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    cursors = CursorStore(tmp_path / "cursors")
    platform = FakeShopPlatform(orders(range(1, 5)))

    class CrashingPublisher(Publisher):
        def flush(self, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
            raise KeyboardInterrupt  # the process dies while waiting for acks

    dying = CrashingPublisher(isolated_settings)
    with pytest.raises(KeyboardInterrupt):
        poll_once(platform, publisher=dying, cursors=cursors)
    assert cursors.load("webshop") is None  # nothing was confirmed: the page is not skipped
    # The worst case, made certain: the first page reached Kafka before the process died.
    assert not Publisher.flush(dying, 30.0).failed
    report = poll_once(platform, publisher=Publisher(isolated_settings), cursors=cursors)
    assert report.published == 4 and cursors.load("webshop") == "4"
    messages = read_topic(isolated_settings, isolated_settings.topics.intake, expect=6)
    assert len(messages) == 6  # the first page twice, the second once
    decoded = [AvroCodec().decode(m.value()) for m in messages]  # type: ignore[union-attr]
    by_order = {(e.external_id, e.event_id) for e in decoded}
    assert sorted(int(order) for order, _ in by_order) == [1, 2, 3, 4]
    # re-sent orders keep their ids, so the worker recognises them as redeliveries
