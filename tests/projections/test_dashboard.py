"""The dashboard in headless Chromium (Debian's `chromium`, installed by `make test`), against
`oms api` running in its own process over a projected scenario on the ClickHouse server: the
charts show the projected numbers, a reload shows new ones, and an open page picks new orders
up on its own refresh."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import ClientSession, web

from events.models import OrderLine
from infra.principals import AccessFile, Role
from infra.publisher import Publisher
from infra.settings import PROJECT_ROOT, Settings
from projections.reports import run_report
from projections.store import ClickHouseStore, connect
from streams.validation import decide
from tests.conftest import settings_env
from tests.factories import received
from tests.projections.conftest import backend_url, drop, isolated, project_all
from tests.projections.scenario import T0, OrderFacts, all_order_facts, build, seconds

# Headless Chromium against the real stack: integration, and `browser` to select or skip it.
pytestmark = [pytest.mark.integration, pytest.mark.browser]

SINCE = seconds(T0)
UNTIL = SINCE + timedelta(days=3)
WINDOW = {"since": f"{SINCE:%Y-%m-%dT%H:%M:%S}", "until": f"{UNTIL:%Y-%m-%dT%H:%M:%S}"}
LINE = OrderLine(sku="DUMPLING-12", name="猪肉白菜水饺 12只", quantity=2, unit_price=2800)


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: `make test` installs it (Debian's chromium)")
    return path


def _alive_in_session(session: int) -> bool:
    """Whether a process of this session still runs (zombies, already exited, do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == session:
            return True
    return False


def stop_browser(browser: subprocess.Popen[Any]) -> None:
    """Stop Chromium and wait until its helper processes (its session) are gone too, so that
    its profile directory can be removed."""
    if browser.poll() is None:
        browser.terminate()
    try:
        browser.wait(10)
    except subprocess.TimeoutExpired:
        browser.kill()
        browser.wait()
    deadline = time.monotonic() + 5
    while _alive_in_session(browser.pid):
        if time.monotonic() > deadline:
            os.killpg(browser.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Stack:
    """`oms api` on a port of its own, over a projected scenario; orders added by the tests."""

    settings: Settings
    store: ClickHouseStore
    base_url: str
    facts: list[OrderFacts]
    added: list[str] = field(default_factory=list)  # channels of the orders added since

    def dashboard_url(self, **extra: Any) -> str:
        return f"{self.base_url}/dashboard?{urlencode(WINDOW | extra)}"

    def add_orders(self, channel: str, count: int) -> None:
        """Accepted orders in the window, on the log and projected."""
        publisher = Publisher(self.settings)
        for _ in range(count):
            n = len(self.added)
            at = T0 + timedelta(hours=30, minutes=n)
            order = received(
                event_id=f"added-e{n}",
                order_id=f"added-o{n}",
                channel=channel,
                external_id=f"added-{n}",
                occurred_at=at,
                recorded_at=at,
                placed_at=at,
                lines=[LINE],
                delivery_fee=500,
                total=6100,
            )
            for event in decide(order, now=at):
                publisher.publish(self.settings.topics.orders, event)
            self.added.append(channel)
        publisher.flush()
        project_all(self.settings, self.store)

    def expected(self) -> dict[str, Counter[str]]:
        """What the charts should show, from the scenario's figures and the orders added."""
        revenue: Counter[str] = Counter()
        for f in self.facts:
            if f.is_sale:
                revenue[f"{f.channel} · {f.currency}"] += sum(f.line_amounts)
        for channel in self.added:
            revenue[f"{channel} · CNY"] += LINE.quantity * LINE.unit_price
        return {
            "orders-by-channel": Counter(f.channel for f in self.facts) + Counter(self.added),
            "revenue": revenue,
            "funnel": Counter(f.status for f in self.facts)
            + Counter({"accepted": len(self.added)}),
        }


def wait_answering(url: str, api: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if api.poll() is not None:
            pytest.fail(f"oms api exited ({api.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"oms api did not answer {url} within 30 s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def stack(stack_settings: Settings, chdb_path: Path) -> Iterator[Stack]:
    # The API is a second process: it reaches the server, not this process's chDB.
    settings = isolated(stack_settings)
    settings = settings.model_copy(
        update={"clickhouse_url": backend_url(settings, "server", chdb_path)}
    )
    scenario = build(orders=120, stock_events=200, seed=12)
    scenario.publish(settings)
    store = connect(settings.resolved_clickhouse_url)
    project_all(settings, store)
    port = free_port()
    with tempfile.TemporaryDirectory() as logs:
        log = Path(logs) / "api.log"
        with log.open("wb") as output:
            api = subprocess.Popen(
                # no webhook is posted: the channels may refuse for want of their secrets
                [
                    sys.executable,
                    "-m",
                    "oms.cli",
                    "api",
                    "--port",
                    str(port),
                    "--allow-missing-webhook-secrets",
                ],
                env=settings_env(settings),
                cwd=PROJECT_ROOT,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_answering(f"http://127.0.0.1:{port}/healthz", api, log)
            _, key = AccessFile.of(settings).create_key(Role.ANALYST, name="dashboard test")
            with signed_in_proxy(f"http://127.0.0.1:{port}", key) as url:
                yield Stack(settings, store, url, all_order_facts(scenario))
        finally:
            api.terminate()
            try:
                api.wait(10)
            except subprocess.TimeoutExpired:
                api.kill()
                api.wait()
            drop(store)


@contextmanager
def signed_in_proxy(upstream: str, key: str) -> Iterator[str]:
    """A local proxy that adds an analyst's API key to every request the page makes: headless
    Chromium's --dump-dom cannot sign in, and the dashboard admits only signed-in analysts."""

    async def forward(request: web.Request) -> web.Response:
        async with (
            ClientSession() as session,
            session.get(
                f"{upstream}{request.path_qs}", headers={"Authorization": f"Bearer {key}"}
            ) as answer,
        ):
            body = await answer.read()
            return web.Response(body=body, status=answer.status, content_type=answer.content_type)

    app = web.Application()
    app.router.add_get("/{tail:.*}", forward)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    host, port = runner.addresses[0][:2]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.run_until_complete(runner.cleanup())
        loop.close()


# ------------------------------------------------------------ what the page drew


@dataclass
class Drawn:
    """The marks the page drew (data-chart / -label / -series / -value) and its refresh count."""

    marks: list[dict[str, Any]]
    refreshes: int
    errors: int

    def chart(self, name: str) -> dict[str, float]:
        return {m["label"]: m["value"] for m in self.marks if m["chart"] == name}

    def by_series(self, name: str) -> dict[tuple[str, str], float]:
        return {(m["label"], m["series"]): m["value"] for m in self.marks if m["chart"] == name}

    def series_totals(self, name: str) -> Counter[str]:
        totals: Counter[str] = Counter()
        for m in self.marks:
            if m["chart"] == name:
                totals[m["series"]] += m["value"]
        return totals


def number(text: str) -> float:
    value = float(text)
    return int(value) if value.is_integer() else value


class _MarkReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.marks: list[dict[str, Any]] = []
        self.body: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "body":
            self.body = found
        if found.get("data-chart") and found.get("data-value") is not None:
            self.marks.append(
                {
                    "chart": found["data-chart"],
                    "label": found.get("data-label"),
                    "series": found.get("data-series"),
                    "value": number(str(found["data-value"])),
                }
            )


def dump(url: str) -> Drawn:
    """Load the page in headless Chromium (10 s of virtual time: the first fetches and a
    couple of refreshes) and read what it drew from the DOM."""
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen(
            [
                chromium(),
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            page, errors = browser.communicate(timeout=60)
        finally:
            stop_browser(browser)
    assert browser.returncode == 0, errors[-2000:]
    reader = _MarkReader()
    reader.feed(page)
    return Drawn(
        reader.marks,
        int(reader.body.get("data-refreshes") or 0),
        int(reader.body.get("data-errors") or 0),
    )


def assert_shows(drawn: Drawn, stack: Stack) -> None:
    expected = stack.expected()
    assert drawn.refreshes >= 1 and drawn.errors == 0
    assert drawn.chart("orders-by-channel") == expected["orders-by-channel"]
    # the columns per minute add up to the same totals per channel
    assert drawn.series_totals("orders-per-minute") == expected["orders-by-channel"]
    assert drawn.chart("revenue") == expected["revenue"]
    assert drawn.chart("funnel") == expected["funnel"]
    kpis = drawn.chart("kpi")
    assert kpis["orders_received"] == expected["orders-by-channel"].total()
    assert kpis["revenue_CNY"] == sum(v for k, v in expected["revenue"].items() if "CNY" in k)


def assert_shows_the_books(drawn: Drawn, store: ClickHouseStore) -> None:
    """The Retail panels show their reports (worked out from the events in
    tests/projections/test_books_reports.py)."""
    net = run_report(store, "sales_net_of_refunds", **WINDOW).as_dicts()
    assert drawn.chart("net-sales") == {
        f"{r['channel']} · {r['currency']}": r["net_sales"] for r in net
    }
    assert any(r["refunds"] > 0 for r in net) and any(r["refunds"] == 0 for r in net)
    carriers = run_report(store, "carrier_on_time", **WINDOW).as_dicts()
    assert carriers and drawn.chart("carrier-on-time") == {
        r["carrier"]: r["on_time_rate"] for r in carriers
    }
    rates = run_report(store, "return_rate_by_sku", limit=10, **WINDOW).as_dicts()
    listed = [(m["label"], m["value"]) for m in drawn.marks if m["chart"] == "return-rate"]
    assert rates and listed == [(r["sku"], r["return_rate"]) for r in rates]
    reasons = run_report(store, "returns_by_reason", **WINDOW).as_dicts()
    assert drawn.chart("return-reasons") == {r["reason"]: r["units"] for r in reasons}
    costs = run_report(store, "shipping_cost_by_carrier", **WINDOW).as_dicts()
    assert drawn.chart("shipping-cost") == {
        f"{r['carrier']} · {r['currency']}": r["total_cost"] for r in costs
    }


def shows(drawn: Drawn, stack: Stack) -> bool:
    try:
        assert_shows(drawn, stack)
    except AssertionError:
        return False
    return True


def test_the_dashboard_charts_show_what_was_projected_and_a_reload_shows_more(
    stack: Stack,
) -> None:
    started = time.monotonic()
    drawn = dump(stack.dashboard_url())
    assert_shows(drawn, stack)

    store = stack.store
    stages = run_report(store, "stage_cycle_times", **WINDOW).as_dicts()
    assert drawn.by_series("stage-times") == {
        (r["stage"], p): r[f"{p}_seconds"] for r in stages for p in ("p50", "p90")
    }
    assert len(stages) > 3
    held = [f for f in stack.facts if f.status == "held"]
    queue = drawn.chart("review-queue")
    assert queue["held_orders"] == len(held) > 0
    assert queue["max_risk_score"] == max(f.risk_score for f in held)
    held_rows = run_report(store, "held_orders", limit=10).as_dicts()
    assert list(drawn.chart("held-orders")) == [r["order_id"] for r in held_rows]
    alerts = run_report(store, "stock_alerts", limit=20, **WINDOW).as_dicts()
    listed = [(m["label"], m["value"]) for m in drawn.marks if m["chart"] == "stock-alerts"]
    assert listed == [(f"{r['sku']}@{r['location']}", r["available"]) for r in alerts]
    assert alerts
    assert len({label for label, _ in listed}) == len(listed)  # a sku@location once
    assert any(r["alerts"] > 1 for r in alerts)  # though some were alerted more than once
    assert_shows_the_books(drawn, store)

    stack.add_orders("meituan", 4)
    again = dump(stack.dashboard_url())
    assert_shows(again, stack)
    assert again.chart("orders-by-channel")["meituan"] == (
        drawn.chart("orders-by-channel")["meituan"] + 4
    )
    assert time.monotonic() - started < 30


# ------------------------------------------------------------ a page left open

_READ_MARKS = """JSON.stringify(!document.body ? null : {
  refreshes: Number(document.body.dataset.refreshes || 0),
  errors: Number(document.body.dataset.errors || 0),
  origin: performance.timeOrigin,
  marks: [...document.querySelectorAll("[data-chart][data-value]")].map((e) => ({
    chart: e.dataset.chart, label: e.dataset.label ?? null, series: e.dataset.series ?? null,
    value: Number(e.dataset.value)})),
})"""


class DevTools:
    """One tab of a headless Chromium, read over the DevTools protocol."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self.sent = 0

    async def evaluate(self, expression: str) -> Any:
        self.sent += 1
        await self.socket.send_json(
            {
                "id": self.sent,
                "method": "Runtime.evaluate",
                "params": {"expression": expression, "returnByValue": True},
            }
        )
        while True:
            reply = await self.socket.receive_json(timeout=10)
            if reply.get("id") == self.sent:
                assert "exceptionDetails" not in reply["result"], reply
                return reply["result"]["result"]["value"]

    async def drawn(self) -> tuple[Drawn, float]:
        state = json.loads(await self.evaluate(_READ_MARKS))
        if state is None:  # the page is still loading
            return Drawn([], 0, 0), 0.0
        return Drawn(state["marks"], state["refreshes"], state["errors"]), state["origin"]


async def open_tab(session: aiohttp.ClientSession, port: int, url: str) -> DevTools:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            pages = [t for t in targets if t["type"] == "page" and t["url"].startswith(url[:30])]
            if pages:
                return DevTools(await session.ws_connect(pages[0]["webSocketDebuggerUrl"]))
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    pytest.fail("headless chromium did not open the dashboard within 15 s")


async def until_drawn(tab: DevTools, check: Any, *, timeout_s: float) -> tuple[Drawn, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        drawn, origin = await tab.drawn()
        if check(drawn) or time.monotonic() > deadline:
            return drawn, origin
        await asyncio.sleep(0.25)


async def test_an_open_dashboard_shows_new_orders_on_its_next_refresh(stack: Stack) -> None:
    started = time.monotonic()
    port = free_port()
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen(
            [
                chromium(),
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={profile}",
                f"--remote-debugging-port={port}",
                stack.dashboard_url(refresh=1),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            async with aiohttp.ClientSession() as session:
                tab = await open_tab(session, port, stack.base_url)
                before, origin = await until_drawn(tab, lambda d: d.refreshes >= 1, timeout_s=15)
                assert_shows(before, stack)

                stack.add_orders("eleme", 3)
                # Each table of a batch lands in its own INSERT and the panels fetch in
                # parallel, so wait for a round in which every chart shows the new orders.
                after, same_origin = await until_drawn(tab, lambda d: shows(d, stack), timeout_s=15)
                assert same_origin == origin, "the page reloaded instead of refreshing"
                assert after.refreshes > before.refreshes
                assert after.chart("orders-by-channel")["eleme"] == (
                    before.chart("orders-by-channel")["eleme"] + 3
                )
                assert_shows(after, stack)
                await tab.socket.close()
        finally:
            stop_browser(browser)
    assert time.monotonic() - started < 30


def test_the_operations_section_shows_the_consumers_lag_and_the_messages_per_minute(
    stack: Stack,
) -> None:
    """What the Operations panels draw is what GET /pipeline and the report say now (the page's
    window does not apply: operations are always the last hour)."""
    drawn = dump(stack.dashboard_url())
    assert drawn.errors == 0
    with urllib.request.urlopen(f"{stack.base_url}/pipeline", timeout=30) as answer:
        pipeline = json.load(answer)
    assert drawn.chart("consumer-lag") == {
        f"{r['consumer']} · {r['topic']}": r["lag"] for r in pipeline["lag"]
    }
    assert {label.split(" · ")[0] for label in drawn.chart("consumer-lag")} == {
        "worker", "projector"}  # fmt: skip
    activity = run_report(stack.store, "order_events_per_minute").as_dicts()
    throughput, errors = drawn.series_totals("throughput"), drawn.series_totals("errors")
    flows = pipeline["per_minute"]
    assert throughput["intake"] == sum(flows["intake"])
    assert throughput["orders"] == sum(flows["orders"]) > 0  # the scenario, published just now
    assert throughput["read_models"] == sum(r["order_events"] for r in activity)
    assert errors["dead_letters"] == sum(flows["dead_letters"])
    assert errors["rejected"] == sum(r["rejected"] for r in activity)
