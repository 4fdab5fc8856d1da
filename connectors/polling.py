"""Polled platforms (Tmall, JD and others with order-search APIs): fetch pages after a cursor.

The cursor is saved only after Kafka acknowledged every order of the page, so a crash
re-fetches the page instead of skipping it; the re-fetched orders get the same event ids and
are recognised downstream as redeliveries.
"""

from __future__ import annotations

import json
import os
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaException

from connectors import limits
from connectors.base import Connector, PayloadRejected
from events.codec import CodecError
from events.models import utc_now
from infra.publisher import Publisher, PublishError


@dataclass(frozen=True)
class Page:
    payloads: list[bytes]
    cursor: str | None  # where the next fetch starts
    more: bool = False  # another page is ready now


class PollingConnector(Connector):
    """A connector that also knows how to fetch orders from its platform."""

    @abstractmethod
    def fetch(self, cursor: str | None) -> Page:
        """The orders after `cursor` (None: from the platform's beginning or a configured time)."""


class CursorStore:
    """One small JSON file per channel under `directory`, replaced atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def load(self, channel: str) -> str | None:
        path = self.directory / f"{channel}.json"
        if not path.exists():
            return None
        cursor = json.loads(path.read_text())["cursor"]
        return None if cursor is None else str(cursor)

    def save(self, channel: str, cursor: str | None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{channel}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"cursor": cursor, "saved_at": utc_now().isoformat()}))
        os.replace(temporary, path)


@dataclass
class PollReport:
    pages: int = 0
    published: int = 0
    dead_lettered: int = 0
    cursor: str | None = None
    errors: list[str] = field(default_factory=list)


def poll_once(
    connector: PollingConnector, *, publisher: Publisher, cursors: CursorStore
) -> PollReport:
    """Fetch and publish until the platform has no more ready pages."""
    report = PollReport(cursor=cursors.load(connector.name))
    while True:
        page = connector.fetch(report.cursor)
        for number, raw in enumerate(page.payloads):
            try:
                limits.check_size(raw, what="payload")
                publisher.intake(connector.parse(raw, received_at=utc_now()))
                report.published += 1
            except (PayloadRejected, CodecError, KafkaException) as exc:
                if isinstance(exc, KafkaException) and not limits.too_large_for_kafka(exc):
                    raise
                ref = f"poll:{report.cursor}:{number}"
                publisher.dead_letter(
                    limits.dead_letter(
                        source=connector.name, source_ref=ref, reason=str(exc), raw=raw
                    )
                )
                report.dead_lettered += 1
                report.errors.append(f"{ref}: {exc}")
        delivered = publisher.flush()
        if sum(delivered.failed.values()):
            raise PublishError(f"Kafka did not acknowledge the page: {delivered.errors[:3]}")
        cursors.save(connector.name, page.cursor)
        report.cursor = page.cursor
        report.pages += 1
        if not page.more:
            return report
