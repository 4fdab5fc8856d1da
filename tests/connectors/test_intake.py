"""File intake on the real broker: JSON lines, CSV, and the parallel path for large files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from connectors.intake import PARALLEL_FROM, import_file
from connectors.phone import PhoneConnector
from connectors.webshop import WebshopConnector
from events.codec import AvroCodec
from events.models import OrderModified, OrderReceived
from infra.publisher import Publisher
from infra.settings import Settings
from tests.conftest import FIXTURES, read_topic

pytestmark = pytest.mark.integration
ORDER = json.loads((FIXTURES / "webshop" / "ship_order.json").read_bytes())


def test_a_large_file_is_published_by_several_processes_and_nothing_is_lost(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    count = PARALLEL_FROM + 2000
    bad_lines = {101, 5003, count}
    path = tmp_path / "big.jsonl"
    with path.open("wb") as out:
        for line in range(1, count + 1):
            body = b"{not json" if line in bad_lines else json.dumps(ORDER | {"id": line}).encode()
            out.write(body + b"\n")
    seen: list[int] = []
    report = import_file(path, connector=WebshopConnector(), publisher=Publisher(isolated_settings),
                         workers=2, on_line=lambda r: seen.append(1))  # fmt: skip
    assert (report.lines, report.acknowledged, report.dead_lettered) == (
        count, count - 3, 3)  # fmt: skip
    assert [error.line for error in report.errors] == sorted(bad_lines)
    assert len(seen) == count  # the progress callback saw every line
    letters = read_topic(isolated_settings, isolated_settings.topics.dlq, expect=3)
    refs = {AvroCodec().decode(m.value()).source_ref for m in letters}  # type: ignore[union-attr]
    assert refs == {f"big.jsonl:{line}" for line in bad_lines}


def test_csv_rows_become_the_channels_json_and_bad_rows_keep_their_header(
    isolated_settings: Settings,
) -> None:
    path = FIXTURES / "phone" / "tickets.csv"
    report = import_file(path, connector=PhoneConnector(), publisher=Publisher(isolated_settings))
    assert report.dead_lettered == 0 and report.acknowledged == report.lines >= 3
    events = read_topic(isolated_settings, isolated_settings.topics.intake, expect=report.lines)
    assert all(AvroCodec().decode(m.value()).channel == "phone" for m in events)  # type: ignore[union-attr]


def test_a_line_the_contract_cannot_carry_is_dead_lettered_and_the_rest_published(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    too_many = json.loads(json.dumps(ORDER))
    too_many["line_items"][0]["quantity"] = 2**70  # more than 64 bits
    lines = [ORDER | {"id": 1}, too_many | {"id": 2}, ORDER | {"id": 3}]
    path = tmp_path / "orders.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = import_file(path, connector=WebshopConnector(), publisher=Publisher(isolated_settings))
    assert (report.lines, report.acknowledged, report.dead_lettered) == (3, 2, 1)
    assert [(e.line, e.reason) for e in report.errors] == [
        (2, f"lines[0].quantity: {2**70} does not fit in 64 bits")
    ]
    assert published_and_dead_lettered(isolated_settings, published=2, dead=1) == (
        ["1", "3"],
        [("orders.jsonl:2", report.errors[0].reason)],
    )


class UncheckedConnector(WebshopConnector):
    """A fake third-party connector that builds its events itself, without the SDK's checks
    (`Connector.order`): every quantity it sends is `quantity`."""

    quantity = 2**64

    def parse(self, raw: bytes, **kwargs: Any) -> OrderReceived | OrderModified:
        event = super().parse(raw, **kwargs)
        if b"UNCHECKED" not in raw:
            return event
        lines = [line.model_copy(update={"quantity": self.quantity}) for line in event.lines]
        return event.model_copy(update={"lines": lines})


def test_an_event_that_cannot_be_encoded_is_that_lines_dead_letter(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    lines = [ORDER | {"id": 1}, ORDER | {"id": 2, "note": "UNCHECKED"}, ORDER | {"id": 3}]
    path = tmp_path / "orders.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = import_file(path, connector=UncheckedConnector(),
                         publisher=Publisher(isolated_settings))  # fmt: skip
    assert (report.lines, report.acknowledged, report.dead_lettered) == (3, 2, 1)
    assert [(e.line, e.reason) for e in report.errors] == [
        (2, f"cannot encode OrderReceived: lines[0].quantity: {2**64} does not fit in 64 bits")
    ]
    assert published_and_dead_lettered(isolated_settings, published=2, dead=1) == (
        ["1", "3"],
        [("orders.jsonl:2", report.errors[0].reason)],
    )


def published_and_dead_lettered(
    settings: Settings, *, published: int, dead: int
) -> tuple[list[str], list[tuple[str, str]]]:
    """The external ids on the intake topic, and (source_ref, reason) of each dead letter."""
    codec = AvroCodec()
    orders = [codec.decode(m.value()) for m in read_topic(settings, settings.topics.intake,
                                                           expect=published)]  # fmt: skip
    letters = [codec.decode(m.value()) for m in read_topic(settings, settings.topics.dlq,
                                                            expect=dead)]  # fmt: skip
    return (
        sorted(order.external_id for order in orders),  # type: ignore[union-attr]
        sorted((letter.source_ref, letter.reason) for letter in letters),  # type: ignore[union-attr]
    )


def test_a_line_too_large_for_a_message_is_dead_lettered_cut_and_the_rest_published(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    """A line over the body limit is refused before it is parsed and kept cut, with its size
    and digest; a line within it whose event is larger than a message (each dish's name is its
    SKU too) is refused when Kafka's producer says so. Neither ends the file."""
    huge = json.dumps(ORDER | {"id": 2, "note": "x" * (1 << 20)}).encode()
    dishes = [{"title": "宫" * 1000, "quantity": 1, "price": "1.00"} for _ in range(180)]
    bulky = json.dumps(ORDER | {"id": 3, "line_items": dishes}, ensure_ascii=False).encode()
    path = tmp_path / "orders.jsonl"
    path.write_bytes(b"\n".join([json.dumps(ORDER | {"id": 1}).encode(), huge, bulky,
                                 json.dumps(ORDER | {"id": 4}).encode()]) + b"\n")  # fmt: skip
    report = import_file(path, connector=WebshopConnector(), publisher=Publisher(isolated_settings))
    assert (report.lines, report.acknowledged, report.dead_lettered) == (4, 2, 2)
    assert [error.line for error in report.errors] == [2, 3]
    assert "MSG_SIZE_TOO_LARGE" in report.errors[1].reason
    ids, letters = published_and_dead_lettered(isolated_settings, published=2, dead=2)
    assert ids == ["1", "4"]
    assert [ref for ref, _ in letters] == ["orders.jsonl:2", "orders.jsonl:3"]
    assert hashlib.sha256(huge).hexdigest() in letters[0][1]
