"""`oms dlq list` and `oms dlq replay` on the real broker."""

from __future__ import annotations

import subprocess
import sys

import pytest

from connectors.dead_letters import read_dead_letters, replay
from events.codec import AvroCodec
from events.models import DeadLetter
from infra.publisher import Publisher
from infra.settings import Settings
from tests.conftest import FIXTURES, read_topic, settings_env

pytestmark = pytest.mark.integration
GOOD = (FIXTURES / "webshop" / "ship_order.json").read_bytes()


def park(settings: Settings, *letters: DeadLetter) -> None:
    publisher = Publisher(settings)
    for letter in letters:
        publisher.dead_letter(letter)
    publisher.flush()


def test_dead_letters_are_listed_with_source_reference_and_reason(
    isolated_settings: Settings,
) -> None:
    park(
        isolated_settings,
        DeadLetter.of(source="webshop", source_ref="orders.jsonl:7", reason="not JSON", raw=b"{"),
        DeadLetter.of(source="meituan", source_ref="webhook:r-1", reason="bad sig", raw=b"x=1"),
    )
    letters = list(read_dead_letters(isolated_settings))
    assert {(d.source, d.source_ref, d.reason, d.raw) for d in letters} == {
        ("webshop", "orders.jsonl:7", "not JSON", b"{"),
        ("meituan", "webhook:r-1", "bad sig", b"x=1"),
    }
    listed = subprocess.run(
        [sys.executable, "-m", "oms.cli", "dlq", "list", "--source", "webshop"],
        env=settings_env(isolated_settings),
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0, listed.stderr
    assert "orders.jsonl:7" in listed.stdout and "not JSON" in listed.stdout
    assert "webhook:r-1" not in listed.stdout


def test_replay_publishes_what_now_parses_and_reports_what_still_does_not(
    isolated_settings: Settings,
) -> None:
    fixed = DeadLetter.of(source="webshop", source_ref="a.jsonl:1", reason="old bug", raw=GOOD)
    broken = DeadLetter.of(source="webshop", source_ref="a.jsonl:2", reason="not JSON", raw=b"{")
    orphan = DeadLetter.of(source="oms.orders.v1", source_ref="t/0/1", reason="x", raw=b"\x00")
    park(isolated_settings, fixed, broken, orphan)
    report = replay(isolated_settings, ids={fixed.dead_letter_id, broken.dead_letter_id,
                                            orphan.dead_letter_id})  # fmt: skip
    assert report.replayed == [fixed.dead_letter_id]
    assert [letter_id for letter_id, _ in report.still_rejected] == [broken.dead_letter_id]
    assert [letter_id for letter_id, _ in report.skipped] == [orphan.dead_letter_id]
    (message,) = read_topic(isolated_settings, isolated_settings.topics.intake, expect=1)
    assert AvroCodec().decode(message.value()).external_id == "5501234567890"  # type: ignore[union-attr]

    cli = subprocess.run(
        [sys.executable, "-m", "oms.cli", "dlq", "replay", "--id", broken.dead_letter_id],
        env=settings_env(isolated_settings), capture_output=True, text=True,
    )  # fmt: skip
    assert cli.returncode == 1
    assert f"still rejected  {broken.dead_letter_id}: not JSON" in cli.stdout
