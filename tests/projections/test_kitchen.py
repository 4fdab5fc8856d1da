"""The kitchen screen in headless Chromium, on the whole stack: a worker, a projector and `oms
api` in their own processes over the real broker and the ClickHouse server. A dine-in order
shows up at its store with its table, covers and options; a revision before acceptance shows
what it changed; pressing the bump button puts the store's step on the order log, with the
kitchen's key as the actor, and the ticket moves to the next column."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientSession, web

from events.codec import AvroCodec
from events.models import OrderLine, OrderMode, OrderModified
from infra.principals import AccessFile, Role
from infra.publisher import Publisher
from infra.settings import PROJECT_ROOT, Settings
from tests.conftest import read_topic, settings_env
from tests.factories import T0, received
from tests.projections.conftest import backend_url, isolated
from tests.projections.test_dashboard import (
    DevTools,
    chromium,
    free_port,
    open_tab,
    stop_browser,
    wait_answering,
)

pytestmark = [pytest.mark.integration, pytest.mark.browser]

NOODLES = OrderLine(sku="NOODLE-BEEF", name="红烧牛肉面", quantity=2, unit_price=3250,
                    options=["少辣", "加蛋"])  # fmt: skip
DUMPLINGS = OrderLine(sku="DUMPLING-12", name="猪肉白菜水饺", quantity=1, unit_price=2800)
TEA = OrderLine(sku="TEA-OOLONG", name="冻顶乌龙茶", quantity=2, unit_price=1200)

BUMP = "document.querySelector('[data-ticket=\"o-kitchen\"] button[data-bump]')"
ANSWER = (
    "((answer) => document.querySelector("
    '`[data-ticket="o-kitchen"] button[data-answer="${answer}"]`))'
)
_READ_TICKETS = """JSON.stringify([...document.querySelectorAll("[data-ticket]")].map((t) => ({
  id: t.dataset.ticket, status: t.dataset.status, urgency: t.dataset.urgency,
  column: t.closest("[data-column]").dataset.column,
  where: t.querySelector(".where").textContent,
  amended: !!t.querySelector(":scope > .amended"),
  lines: [...t.querySelectorAll(":scope > ul > li")].map((li) => [li.className, li.dataset.line]),
  bump: t.querySelector("button[data-bump]").dataset.bump,
  change: t.querySelector("[data-change]") ? Number(t.querySelector("[data-change]").dataset.change)
    : null,
  proposed: [...t.querySelectorAll("[data-change] li")].map((li) => li.dataset.line),
  risk: t.querySelector("[data-risk]") ? t.querySelector("[data-risk]").dataset.risk : null,
})))"""


@contextmanager
def signed_in_proxy(upstream: str, key: str) -> Iterator[str]:
    """A local proxy that adds a kitchen's API key to every request the page makes (GET and
    POST): headless Chromium cannot sign in, and the screen admits only the store's staff."""

    async def forward(request: web.Request) -> web.Response:
        headers = {"Authorization": f"Bearer {key}"}
        if request.content_type:
            headers["Content-Type"] = request.content_type
        async with (
            ClientSession() as session,
            session.request(
                request.method,
                f"{upstream}{request.path_qs}",
                headers=headers,
                data=await request.read(),
            ) as answer,
        ):
            body = await answer.read()
            return web.Response(body=body, status=answer.status, content_type=answer.content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    started = threading.Event()

    def serve() -> None:  # its own thread and loop: the test blocks on Kafka reads meanwhile
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


@contextmanager
def processes(settings: Settings, logs: Path, port: int) -> Iterator[None]:
    """A worker, a projector and `oms api`, stopped (and their logs shown on failure) after."""
    env = settings_env(settings) | {"OMS_EXPIRY_CHECK_S": "2"}  # at-risk alerts come soon
    migrated = subprocess.run([sys.executable, "-m", "oms.cli", "project", "--migrate"],
                              env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    commands = {
        "worker": ["worker"],
        "projector": ["project", "--batch-seconds", "0.2"],
        "api": ["api", "--port", str(port), "--allow-missing-webhook-secrets"],
    }
    running: list[subprocess.Popen[bytes]] = []
    try:
        for name, args in commands.items():
            with (logs / f"{name}.log").open("wb") as log:
                running.append(subprocess.Popen([sys.executable, "-m", "oms.cli", *args],
                                                env=env, cwd=PROJECT_ROOT, stdout=log,
                                                stderr=subprocess.STDOUT))  # fmt: skip
        wait_answering(f"http://127.0.0.1:{port}/healthz", running[-1], logs / "api.log")
        yield
    finally:
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def until(tab: DevTools, check: Any, *, timeout_s: float, logs: Path) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        drawn = json.loads(await tab.evaluate(_READ_TICKETS))
        if check(drawn):
            return drawn
        if time.monotonic() > deadline:
            worker = (logs / "worker.log").read_text()[-3000:]
            pytest.fail(f"the kitchen screen shows {drawn}\nworker log:\n{worker}")
        await asyncio.sleep(0.25)


def mine(drawn: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((t for t in drawn if t["id"] == "o-kitchen"), None)


def logged(settings: Settings, event_type: str) -> Any:
    codec = AvroCodec()
    deadline = time.monotonic() + 30
    while True:
        events = [codec.decode(m.value()) for m in
                  read_topic(settings, settings.topics.orders, expect=1, timeout_s=30)]  # fmt: skip
        found = [e for e in events if e.order_id == "o-kitchen" and e.event_type == event_type]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, [e.event_type for e in events]
        time.sleep(0.3)


async def test_a_kitchen_bumps_a_ticket_onto_the_log_and_sees_it_move(
    stack_settings: Settings, chdb_path: Path, tmp_path: Path
) -> None:
    settings = isolated(stack_settings)
    settings = settings.model_copy(
        update={"clickhouse_url": backend_url(settings, "server", chdb_path)}
    )
    order = received(event_id="e-kitchen", order_id="o-kitchen", external_id="wx-0042",
                     channel="wechat", mode=OrderMode.DINE_IN, location_hint="S01", address=None,
                     table="B07", covers=4, lines=[NOODLES, DUMPLINGS], delivery_fee=0,
                     total=2 * 3250 + 2800, placed_at=T0)  # fmt: skip
    port = free_port()
    key_id, key = AccessFile.of(settings).create_key(Role.KITCHEN, name="chef.wang",
                                                     stores=["S01"])  # fmt: skip
    with (
        processes(settings, tmp_path, port),
        signed_in_proxy(f"http://127.0.0.1:{port}", key) as base,
        tempfile.TemporaryDirectory() as profile,
    ):
        publisher = Publisher(settings)
        publisher.intake(order)
        publisher.flush()
        debugging = free_port()
        browser = subprocess.Popen(
            [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--no-first-run",
             f"--user-data-dir={profile}", f"--remote-debugging-port={debugging}",
             f"{base}/stores/S01/kitchen?refresh=1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            async with aiohttp.ClientSession() as session:
                tab = await open_tab(session, debugging, base)
                drawn = await until(tab, mine, timeout_s=60, logs=tmp_path)
                ticket = mine(drawn)
                assert ticket is not None
                assert (ticket["column"], ticket["status"], ticket["bump"]) == (
                    "new",
                    "prioritised",
                    "accept",
                )
                assert "table B07" in ticket["where"] and "4 covers" in ticket["where"]
                assert ["", "2× 红烧牛肉面 (少辣, 加蛋)"] in ticket["lines"]
                assert not ticket["amended"]

                # A revision before the store took it: a tea added, the dumplings gone.
                revised = OrderModified.model_validate(
                    order.model_dump(exclude={"event_id", "sequence"})
                    | {"event_id": "m-kitchen", "sequence": 2, "revision": 1,
                       "lines": [NOODLES, TEA], "total": 2 * 3250 + 2 * 1200}
                )  # fmt: skip
                publisher.intake(revised)
                publisher.flush()
                drawn = await until(tab, lambda d: (mine(d) or {}).get("amended"),
                                    timeout_s=60, logs=tmp_path)  # fmt: skip
                ticket = mine(drawn)
                assert ticket is not None
                assert ["added", "2× 冻顶乌龙茶"] in ticket["lines"]
                assert ["removed", "1× 猪肉白菜水饺"] in ticket["lines"]
                assert ["", "2× 红烧牛肉面 (少辣, 加蛋)"] in ticket["lines"]  # unchanged

                await tab.evaluate(f"{BUMP}.click(), 1")
                accepted = logged(settings, "OrderAcceptedByStore")
                assert (accepted.actor.id, accepted.location) == (f"key:{key_id}", "S01")
                assert accepted.estimated_ready_at is not None
                drawn = await until(
                    tab, lambda d: (mine(d) or {}).get("column") == "accepted_by_store",
                    timeout_s=30, logs=tmp_path,
                )  # fmt: skip
                assert (mine(drawn) or {})["bump"] == "start"
                await tab.evaluate(f"{BUMP}.click(), 1")
                logged(settings, "OrderPreparing")
                await until(tab, lambda d: (mine(d) or {}).get("column") == "preparing",
                            timeout_s=30, logs=tmp_path)  # fmt: skip
                # Placed long ago, so long past its promise: the order's timer flags it.
                await until(tab, lambda d: (mine(d) or {}).get("risk") == "LATE",
                            timeout_s=30, logs=tmp_path)  # fmt: skip
                assert logged(settings, "OrderAtRisk").risk == "LATE"

                # A change after the store accepted it: shown for the kitchen to answer.
                def amendment(revision: int, lines: list[Any]) -> OrderModified:
                    total = sum(line.quantity * line.unit_price for line in lines)
                    return revised.model_copy(update={"event_id": f"m-kitchen-{revision}",
                        "revision": revision, "lines": lines, "total": total})  # fmt: skip

                publisher.intake(amendment(2, [NOODLES, TEA, DUMPLINGS]))
                publisher.flush()
                drawn = await until(tab, lambda d: (mine(d) or {}).get("change") == 2,
                                    timeout_s=30, logs=tmp_path)  # fmt: skip
                ticket = mine(drawn)
                assert ticket is not None and ticket["column"] == "preparing"
                assert "1× 猪肉白菜水饺" in ticket["proposed"]
                assert ["", "1× 猪肉白菜水饺"] not in ticket["lines"]  # not made until accepted
                await tab.evaluate(f"{ANSWER}('accept-change').click(), 1")
                taken = logged(settings, "OrderAmendmentAccepted")
                assert (taken.actor.id, taken.location, taken.revision) == (
                    f"key:{key_id}",
                    "S01",
                    2,
                )
                drawn = await until(
                    tab, lambda d: ["added", "1× 猪肉白菜水饺"] in (mine(d) or {}).get("lines", []),
                    timeout_s=30, logs=tmp_path,
                )  # fmt: skip
                ticket = mine(drawn)
                assert ticket is not None and ticket["change"] is None
                assert ticket["column"] == "preparing"

                publisher.intake(amendment(3, [NOODLES]))
                publisher.flush()
                await until(tab, lambda d: (mine(d) or {}).get("change") == 3,
                            timeout_s=30, logs=tmp_path)  # fmt: skip
                await tab.evaluate(f"{ANSWER}('refuse-change').click(), 1")
                refused = logged(settings, "OrderAmendmentRefused")
                assert (refused.actor.id, refused.revision) == (f"key:{key_id}", 3)
                drawn = await until(tab, lambda d: (mine(d) or {}).get("change") is None,
                                    timeout_s=30, logs=tmp_path)  # fmt: skip
                assert ["added", "1× 猪肉白菜水饺"] in (mine(drawn) or {})["lines"]
                errors = await tab.evaluate("Number(document.body.dataset.errors || 0)")
                assert errors == 0
                await tab.socket.close()
        finally:
            stop_browser(browser)
