"""On the real broker: a prep-time model published by `oms eta learn`'s code path reaches the
worker's shared views, and the order it routes is promised on the model's estimate."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from events.codec import AvroCodec
from events.models import OrderPrioritised, utc_now
from infra.publisher import Publisher
from infra.settings import Settings
from oms.prep_times import latest, publish
from streams import eta
from tests.conftest import read_topic, settings_env
from tests.streams.test_eta import learned, spaced
from tests.streams.test_orders import lunch

pytestmark = pytest.mark.integration


def test_a_published_model_sets_the_promise_of_the_next_routed_order(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    settings = isolated_settings
    assert latest(settings) is None
    # S01 makes dumplings in about half an hour: far from the fixed 45-minute delivery promise.
    model = learned(spaced("S01", ("DUMPLING-12",), [28, 29, 30, 30, 31, 32, 33]))
    publish(settings, model)
    assert latest(settings) == model
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "oms.cli", "worker"],
        env=settings_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        now = utc_now().replace(microsecond=0)
        order = lunch(placed_at=now, occurred_at=now, recorded_at=now)
        publisher = Publisher(settings)
        publisher.intake(order)
        publisher.flush()
        codec = AvroCodec()
        deadline = time.monotonic() + 90
        prioritised: Any = None
        while prioritised is None:
            assert worker.poll() is None, "the worker died"
            assert time.monotonic() < deadline, "the order was not prioritised"
            found = read_topic(settings, settings.topics.orders, expect=1, timeout_s=90)
            events = [codec.decode(m.value()) for m in found]
            prioritised = next((e for e in events if isinstance(e, OrderPrioritised)), None)
            time.sleep(0.3 if prioritised is None else 0)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
    assert prioritised.eta_model == model.version
    expected = eta.estimate(model, order, location="S01", open_tickets=0,
                            now=prioritised.occurred_at)  # fmt: skip
    assert prioritised.promised_at == expected.due_at
    assert prioritised.estimated_ready_at == expected.ready_at
    assert prioritised.promised_at != now + timedelta(minutes=45)
