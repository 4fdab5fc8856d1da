"""`oms simulate` drives the real connectors into the real broker."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from connectors.simulator import PROFILES
from events.codec import AvroCodec
from events.models import OrderModified
from oms.settings import Settings
from tests.conftest import read_topic, settings_env

pytestmark = pytest.mark.integration


def figure(output: str, label: str) -> int:
    match = re.search(rf"^{label}\s+(\d+)", output, re.MULTILINE)
    assert match, f"no {label!r} in:\n{output}"
    return int(match.group(1))


@pytest.mark.parametrize("profile", ["restaurant", "retail"])
def test_simulated_traffic_is_all_acknowledged_or_dead_lettered(
    isolated_settings: Settings, profile: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "oms.cli", "simulate", "--profile", profile, "--rate", "150",
         "--duration", "3", "--seed", "3"],
        env=settings_env(isolated_settings), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    generated, malformed = figure(out, "generated"), figure(out, "malformed")
    assert 300 <= generated <= 600
    for channel in PROFILES[profile].channels:
        assert re.search(rf"^  {channel}\s+\d+", out, re.MULTILINE), channel
    assert figure(out, "duplicates") > 0 and figure(out, "revisions") > 0 and malformed > 0
    acknowledged = int(re.search(r"acknowledged\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    assert acknowledged + malformed == generated

    topics = isolated_settings.topics
    intake = read_topic(isolated_settings, topics.intake, expect=acknowledged, timeout_s=60)
    events = [AvroCodec().decode(m.value()) for m in intake]
    modified = {e.event_id for e in events if isinstance(e, OrderModified)}
    assert len(modified) == figure(out, "revisions")
    distinct = {e.event_id for e in events}  # type: ignore[union-attr]
    assert len(distinct) == acknowledged - figure(out, "duplicates")
    assert len(read_topic(isolated_settings, topics.dlq, expect=malformed)) == malformed
