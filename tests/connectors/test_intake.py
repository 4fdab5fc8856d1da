"""File intake on the real broker: JSON lines, CSV, and the parallel path for large files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors.intake import PARALLEL_FROM, import_file
from connectors.phone import PhoneConnector
from connectors.webshop import WebshopConnector
from events.codec import AvroCodec
from oms.publisher import Publisher
from oms.settings import Settings
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
