"""Every message on the topics decodes with plain fastavro and the .avsc files (real Kafka)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.avro_schema import CONTRACT, SCHEMA_DIR
from events.models import DeadLetter, Event, OrderEvent
from infra.publisher import Publisher
from infra.settings import Settings
from tests.factories import strategy_for

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).parent / "plain_consumer.py"


def one_of_each() -> list[object]:
    samples: list[object] = []

    @settings(max_examples=1, database=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def draw(data: st.DataObject) -> None:
        samples.extend(data.draw(strategy_for(model)) for model in CONTRACT)

    draw()
    return samples


def test_a_consumer_with_only_the_avsc_files_decodes_every_event_type(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    topics = isolated_settings.topics
    publisher = Publisher(isolated_settings)
    sent = []
    for value in one_of_each():
        if isinstance(value, DeadLetter):
            publisher.dead_letter(value)
            sent.append((topics.dlq, "DeadLetter", value.dead_letter_id))
        elif isinstance(value, Event):
            topic = topics.orders if isinstance(value, OrderEvent) else topics.inventory
            publisher.publish(topic, value)
            sent.append((topic, value.event_type, value.event_id))
    publisher.flush()
    assert len(sent) == len(CONTRACT)

    result = subprocess.run(
        [sys.executable, "-I", str(SCRIPT), isolated_settings.kafka_bootstrap, str(SCHEMA_DIR),
         topics.orders, topics.inventory, topics.dlq],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["failures"] == []
    assert summary["project_modules"] == []
    decoded = sorted((d["topic"], d["type"], d["id"]) for d in summary["decoded"])
    assert decoded == sorted(sent)
