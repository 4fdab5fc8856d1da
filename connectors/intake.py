"""File intake: JSON lines (one channel payload per line) or CSV (one order per row, as the
channel's flat JSON object). Rejected lines go to the dead-letter topic with their bytes."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from connectors import limits
from connectors.base import ChannelEvent, Connector, PayloadRejected
from events.codec import CodecError
from events.models import utc_now
from infra.publisher import Publisher
from infra.settings import Settings


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


@dataclass(frozen=True)
class Payload:
    line: int
    raw: bytes  # what goes to the dead-letter topic if it is rejected
    body: bytes  # what the connector parses


def _json_lines(path: Path) -> Iterator[Payload]:
    with path.open("rb") as source:
        for number, line in enumerate(source, start=1):
            stripped = line.strip()
            if stripped:
                yield Payload(number, stripped, stripped)


def _csv_rows(path: Path) -> Iterator[Payload]:
    with path.open(newline="", encoding="utf-8-sig") as source:
        reader = csv.reader(source)
        header = next(reader, None)
        if header is None:
            return
        columns = [name.strip() for name in header]
        while True:
            start = reader.line_num + 1
            row = next(reader, None)
            if row is None:
                return
            if not any(cell.strip() for cell in row):
                continue
            # The dead-letter copy is a one-row CSV with its header, so it can be replayed alone.
            text = io.StringIO()
            csv.writer(text).writerows([header, row])
            raw = text.getvalue().encode()
            if len(row) != len(columns):
                # Let the connector see the mismatch as a payload problem, with the raw row.
                body = json.dumps({"_columns": len(row), "_expected": len(columns)}).encode()
            else:
                body = json.dumps(dict(zip(columns, row, strict=True)), ensure_ascii=False).encode()
            yield Payload(start, raw, body)


def csv_row_as_json(raw: bytes) -> bytes:
    """A dead-lettered CSV row (header + row) back into the connector's JSON object."""
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    if len(rows) != 2 or len(rows[0]) != len(rows[1]):
        raise PayloadRejected("not a header and one row of CSV")
    return json.dumps(dict(zip(rows[0], rows[1], strict=True)), ensure_ascii=False).encode()


def payloads(path: Path) -> Iterator[Payload]:
    return _csv_rows(path) if path.suffix.lower() == ".csv" else _json_lines(path)


def count_payloads(path: Path) -> int:
    return sum(1 for _ in payloads(path))


KEYS_CHUNK = 500  # payloads parsed before they are published: their new data keys go together


def _chunks(payloads: Iterable[Payload], size: int) -> Iterator[list[Payload]]:
    iterator = iter(payloads)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _parse(connector: Connector, payload: Payload) -> ChannelEvent | PayloadRejected:
    try:
        limits.check_size(payload.raw, what="line")
        return connector.parse(payload.body, received_at=utc_now())
    except PayloadRejected as exc:
        return exc


def _publish_one(
    payload: Payload,
    event: ChannelEvent | PayloadRejected,
    report: ImportReport,
    file_name: str,
    connector: Connector,
    publisher: Publisher,
) -> None:
    """One line: its event onto the intake topic, or its bytes onto the DLQ with the reason."""
    report.lines += 1
    try:
        if isinstance(event, PayloadRejected):
            raise event
        # `intake` encodes before it queues: an event the contract cannot carry (CodecError),
        # or larger than a message (MSG_SIZE_TOO_LARGE), is this line's dead letter, not the
        # end of the file.
        publisher.intake(event)
    except (PayloadRejected, CodecError, KafkaException) as exc:
        if isinstance(exc, KafkaException) and not limits.too_large_for_kafka(exc):
            raise
        report.errors.append(LineError(payload.line, str(exc)))
        publisher.dead_letter(
            limits.dead_letter(
                source=connector.name,
                source_ref=f"{file_name}:{payload.line}",
                reason=str(exc),
                raw=payload.raw,
            )
        )
        report.dead_lettered += 1
    else:
        report.published += 1


def _publish(
    batch: Iterable[Payload],
    *,
    file_name: str,
    connector: Connector,
    publisher: Publisher,
    on_line: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Parse and publish `batch`; returns once Kafka has acknowledged (or refused) all of it."""
    report = ImportReport()
    topics = publisher.settings.topics
    acked_before = publisher.count.acknowledged[topics.intake]
    failed_before = publisher.count.failed[topics.intake] + publisher.count.failed[topics.dlq]
    for chunk in _chunks(batch, KEYS_CHUNK):
        # Parsed a chunk at a time, so that the chunk's new customers get their data keys
        # with one round trip to the key store, not one each.
        parsed = [(payload, _parse(connector, payload)) for payload in chunk]
        publisher.prepare(event for _, event in parsed if not isinstance(event, PayloadRejected))
        for payload, event in parsed:
            _publish_one(payload, event, report, file_name, connector, publisher)
            if on_line is not None:
                on_line(report)
    delivered = publisher.flush()
    report.acknowledged = delivered.acknowledged[topics.intake] - acked_before
    failed = delivered.failed[topics.intake] + delivered.failed[topics.dlq] - failed_before
    if failed:
        report.errors.append(
            LineError(0, f"{failed} messages not acknowledged by Kafka: {delivered.errors[-3:]}")
        )
    return report


PARALLEL_FROM = 10_000  # below this many payloads, starting processes costs more than it saves


_done: Any = None  # a worker's shared progress counter, set by `_start_worker`


def _start_worker(done: Any) -> None:
    global _done
    _done = done


def _publish_share(
    settings: Settings, connector: Connector, path: Path, share: int, shares: int
) -> ImportReport:
    """One worker process: every `shares`-th payload of the file, from the `share`-th on."""
    publisher = Publisher(settings)
    mine = (p for n, p in enumerate(payloads(path)) if n % shares == share)

    def count(report: ImportReport) -> None:
        if report.lines % 500 == 0:  # the shared counter is locked: update it now and then
            with _done.get_lock():
                _done.value += 500

    report = _publish(
        mine, file_name=path.name, connector=connector, publisher=publisher, on_line=count
    )
    with _done.get_lock():
        _done.value += report.lines % 500
    return report


def import_file(
    path: Path,
    *,
    connector: Connector,
    publisher: Publisher,
    workers: int = 1,
    on_line: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Publish every parseable payload; report and dead-letter the rest. Returns once Kafka has
    acknowledged everything (or reports what it did not).

    With `workers` > 1 and a large file, that many processes each read the file and take
    every n-th payload (parsing is CPU-bound; reading is cheap). Orders then reach Kafka in a
    slightly different order than the file's; a revision is recognised by its revision number,
    not by its position.
    """
    total_payloads = count_payloads(path) if workers > 1 else 0
    if total_payloads < PARALLEL_FROM:
        return _publish(
            payloads(path),
            file_name=path.name,
            connector=connector,
            publisher=publisher,
            on_line=on_line,
        )
    context = multiprocessing.get_context("spawn")  # librdkafka's threads do not survive fork
    done = context.Value("q", 0)
    total = ImportReport()
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=(done,)
    ) as pool:
        futures = [
            pool.submit(_publish_share, publisher.settings, connector, path, share, workers)
            for share in range(workers)
        ]
        reported = 0
        while not all(future.done() for future in futures):
            time.sleep(0.1)
            if on_line is not None:
                for _ in range(done.value - reported):
                    on_line(total)
                reported = done.value
        for future in futures:
            part = future.result()
            total.lines += part.lines
            total.published += part.published
            total.acknowledged += part.acknowledged
            total.dead_lettered += part.dead_lettered
            total.errors.extend(part.errors)
        if on_line is not None:
            for _ in range(max(total.lines - reported, 0)):
                on_line(total)
    total.errors.sort(key=lambda error: error.line)
    return total
