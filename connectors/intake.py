"""File intake: one channel payload per line (JSON lines); bad lines go to the dead-letter topic."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from connectors.base import Connector, PayloadRejected
from events.models import DeadLetter, utc_now
from oms.publisher import Publisher


@dataclass(frozen=True)
class LineError:
    line: int
    reason: str


@dataclass
class ImportReport:
    lines: int = 0
    published: int = 0
    acknowledged: int = 0
    dead_lettered: int = 0
    errors: list[LineError] = field(default_factory=list)


def _payload_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as source:
        for number, line in enumerate(source, start=1):
            stripped = line.strip()
            if stripped:
                yield number, stripped


def import_file(
    path: Path,
    *,
    connector: Connector,
    publisher: Publisher,
    on_line: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Publish every parseable line; report and dead-letter the rest. Returns after Kafka acked."""
    report = ImportReport()
    for number, raw in _payload_lines(path):
        report.lines += 1
        try:
            event = connector.parse(raw, received_at=utc_now())
        except PayloadRejected as exc:
            report.errors.append(LineError(number, str(exc)))
            publisher.dead_letter(
                DeadLetter.of(
                    source=connector.name,
                    source_ref=f"{path.name}:{number}",
                    reason=str(exc),
                    raw=raw,
                )
            )
            report.dead_lettered += 1
        else:
            publisher.intake(event)
            report.published += 1
        if on_line is not None:
            on_line(report)
    delivered = publisher.flush()
    topics = publisher.settings.topics
    report.acknowledged = delivered.acknowledged[topics.intake]
    failed = delivered.failed[topics.intake] + delivered.failed[topics.dlq]
    if failed:
        report.errors.append(
            LineError(0, f"{failed} messages not acknowledged by Kafka: {delivered.errors[:3]}")
        )
    return report
