"""Every report on real projected data, on both backends, against figures worked out in Python
from the events themselves (tests/projections/scenario.py)."""

from __future__ import annotations

import csv
import io
import re
import shlex
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta
from itertools import combinations
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from zoneinfo import available_timezones

import pytest

from infra.settings import PROJECT_ROOT, Settings
from projections.queries import fulfilment_queue
from projections.reports import REPORTS, ReportError, run_report
from projections.store import ClickHouseStore
from tests.conftest import settings_env
from tests.projections.conftest import (
    projected_on,
    publish_scenario,
)
from tests.projections.scenario import (
    CHANNELS,
    STORES,
    T0,
    WAREHOUSES,
    OrderFacts,
    Scenario,
    all_order_facts,
    distinct_events,
    seconds,
    stock_facts,
)

pytestmark = pytest.mark.integration

START = seconds(T0)
SINCE, UNTIL = START, START + timedelta(days=3)
WINDOW = {"since": SINCE, "until": UNTIL}
AS_OF = START + timedelta(days=3)


@pytest.fixture(scope="module")
def published(stack_settings: Settings) -> tuple[Settings, Scenario]:
    return publish_scenario(stack_settings, orders=320, stock_events=420, seed=21)


@pytest.fixture(scope="module", params=["server", "chdb"])
def projected(
    request: pytest.FixtureRequest, published: tuple[Settings, Scenario], chdb_path: Path
) -> Iterator[tuple[Settings, ClickHouseStore]]:
    yield from projected_on(published[0], request.param, chdb_path)


@pytest.fixture(scope="module")
def facts(published: tuple[Settings, Scenario]) -> list[OrderFacts]:
    return all_order_facts(published[1])


@pytest.fixture
def store(projected: tuple[Settings, ClickHouseStore]) -> ClickHouseStore:
    return projected[1]


def report(store: ClickHouseStore, name: str, **params: Any) -> list[dict[str, Any]]:
    return run_report(store, name, **params).as_dicts()


def in_window(f: OrderFacts, since: datetime = SINCE, until: datetime = UNTIL) -> bool:
    return since <= f.placed_at < until


# order, sku, name, quantity, price, the line's amount, store
SaleLine = tuple[OrderFacts, str, str, int, int, int, str]


def sale_lines(facts: list[OrderFacts], **window: datetime) -> Iterator[SaleLine]:
    for f in facts:
        if f.is_sale and in_window(f, **window):
            for n, (sku, name, quantity, price) in enumerate(f.lines):
                store = f.line_locations[n] or f.location
                yield f, sku, name, quantity, price, f.line_amounts[n], store


def sales_by(facts: list[OrderFacts], key: Any, **window: datetime) -> dict[Any, tuple[int, ...]]:
    orders: dict[Any, set[str]] = defaultdict(set)
    units: Counter[Any] = Counter()
    revenue: Counter[Any] = Counter()
    for line in sale_lines(facts, **window):
        k = key(*line)
        orders[k].add(line[0].order_id)
        units[k] += line[3]
        revenue[k] += line[5]  # what the channel states the line costs
    return {k: (len(orders[k]), units[k], revenue[k]) for k in orders}


def quantile(values: list[int], level: float) -> int:
    """ClickHouse's quantileExact: the element at floor(level * n) of the sorted values."""
    return sorted(values)[int(level * len(values))]


def test_sales_by_product_channel_store_and_region(
    store: ClickHouseStore, facts: list[OrderFacts]
) -> None:
    later = {"since": SINCE + timedelta(hours=20), "until": UNTIL}
    for name, column, key in [
        ("sales_by_channel", "channel", lambda f, *_: f.channel),
        ("sales_by_store", "store", lambda f, *rest: rest[-1]),
        ("sales_by_region", "region", lambda f, *_: f.region),
    ]:
        for window in (WINDOW, later):
            rows = report(store, name, limit=1000, **window)
            got = {
                (r[column], r["currency"]): (r["orders"], r["units"], r["revenue"]) for r in rows
            }
            expected = sales_by(facts, lambda *line, k=key: (k(*line), line[0].currency), **window)
            assert got == expected, name
            assert len(expected) > 2, name
    names = {r["sku"]: r["product_name"] for r in report(store, "sales_by_product", **WINDOW)}
    assert names["DUMPLING-12"] == "猪肉白菜水饺 12只"


def test_sales_by_product_count_each_unit_exactly(
    store: ClickHouseStore, facts: list[OrderFacts]
) -> None:
    """Per SKU and the unit it was sold in: whole units (a measure rounded up) and the exact
    measure in millionths (1.25 kg and 0.5 kg of a dish sold by weight: 1750000)."""
    rows = report(store, "sales_by_product", limit=1000, **WINDOW)
    got = {
        (r["sku"], r["unit"], r["currency"]): (
            r["orders"], r["units"], r["revenue"], r["quantity_millionths"]
        )
        for r in rows
    }  # fmt: skip
    orders: dict[Any, set[str]] = defaultdict(set)
    sums: dict[Any, list[int]] = defaultdict(lambda: [0, 0, 0])
    for f in facts:
        if f.is_sale and in_window(f):
            for n, (sku, _, quantity, _) in enumerate(f.lines):
                unit, millionths = f.line_measures[n]
                k = (sku, unit, f.currency)
                orders[k].add(f.order_id)
                sums[k][0] += quantity
                sums[k][1] += f.line_amounts[n]
                sums[k][2] += millionths
    assert got == {k: (len(orders[k]), *sums[k]) for k in orders}
    assert len(got) == len(rows) and any(unit == "kg" for _, unit, _ in got)


def test_sales_by_hour_counts_hours_in_the_time_zone_asked_for(
    store: ClickHouseStore, facts: list[OrderFacts]
) -> None:
    rows = report(store, "sales_by_hour", tz="Asia/Shanghai", **WINDOW)
    got = {(r["hour"], r["currency"]): (r["orders"], r["units"], r["revenue"]) for r in rows}
    shanghai = sales_by(
        facts, lambda f, *_: ((f.placed_at + timedelta(hours=8)).hour, f.currency), **WINDOW
    )
    assert got == shanghai and len(shanghai) > 10
    utc = {(r["hour"], r["currency"]) for r in report(store, "sales_by_hour", **WINDOW)}
    assert utc == {(f.placed_at.hour, f.currency) for f, *_ in sale_lines(facts, **WINDOW)}


def test_average_order_value_and_channel_mix(
    store: ClickHouseStore, facts: list[OrderFacts]
) -> None:
    sales = [f for f in facts if f.is_sale and in_window(f)]
    by_currency: dict[str, list[int]] = defaultdict(list)
    for f in sales:
        by_currency[f.currency].append(f.total)
    assert {
        r["currency"]: (r["orders"], r["revenue"], r["average_order_value"])
        for r in report(store, "average_order_value", **WINDOW)
    } == {c: (len(t), sum(t), sum(t) // len(t)) for c, t in by_currency.items()}
    mix = report(store, "channel_mix", **WINDOW)
    for row in mix:
        mine = [
            f.total for f in sales if (f.channel, f.currency) == (row["channel"], row["currency"])
        ]
        everyone = by_currency[row["currency"]]
        assert (row["orders"], row["revenue"]) == (len(mine), sum(mine))
        assert row["order_share_pct"] == pytest.approx(100 * len(mine) / len(everyone), abs=0.051)
        assert row["revenue_share_pct"] == pytest.approx(100 * sum(mine) / sum(everyone), abs=0.051)
        assert row["average_order_value"] == sum(mine) // len(mine)
    assert len(mix) == len({(f.channel, f.currency) for f in sales}) == len(CHANNELS)


def test_inventory_turnover_and_slow_movers(
    store: ClickHouseStore, published: tuple[Settings, Scenario]
) -> None:
    since, until = START + timedelta(hours=12), START + timedelta(hours=36)
    turnover, slow = [], []
    for (sku, location), events in published[1].stock_histories.items():
        timeline = stock_facts(events).timeline
        before = [on_hand for at, on_hand, _ in timeline if at < since]
        upto = [(at, on_hand, sold) for at, on_hand, sold in timeline if at < until]
        if not upto:
            continue
        sold = sum(q for at, _, q in timeline if since <= at < until)
        opening, closing = (before[-1] if before else 0), upto[-1][1]
        average = (opening + closing) / 2
        turnover.append(
            (
                sku,
                location,
                sold,
                opening,
                closing,
                round(sold / average, 2) if opening + closing > 0 else 0,
            )
        )
        sales = [at for at, _, q in upto if q]
        if closing > 0:
            slow.append((sold, -closing, sku, location, sales[-1] if sales else None))
    got = [
        (
            r["sku"],
            r["location"],
            r["units_sold"],
            r["opening_on_hand"],
            r["closing_on_hand"],
            r["turnover"],
        )
        for r in report(store, "inventory_turnover", since=since, until=until, limit=1000)
    ]
    got_by_key, expected_by_key = sorted(got), sorted(turnover)
    assert [r[:5] for r in got_by_key] == [r[:5] for r in expected_by_key]
    assert [r[5] for r in got_by_key] == pytest.approx([r[5] for r in expected_by_key], abs=0.006)
    assert [r[5] for r in got] == sorted((r[5] for r in got), reverse=True)
    rows = report(store, "slow_movers", since=since, until=until, limit=1000)
    assert [
        (r["units_sold"], -r["on_hand"], r["sku"], r["location"], r["last_sold_at"]) for r in rows
    ] == sorted(slow, key=lambda s: s[:4])


def test_stage_cycle_times_are_exact_p50_and_p90_per_stage(
    store: ClickHouseStore, facts: list[OrderFacts]
) -> None:
    since = START + timedelta(hours=6)
    spent: dict[str, list[int]] = defaultdict(list)
    for f in facts:
        for stage, entered, left in f.stages:
            if left is not None and since <= entered < UNTIL:
                spent[stage].append(int((left - entered).total_seconds()))
    assert len(spent) >= 10
    rows = report(store, "stage_cycle_times", since=since, until=UNTIL)
    assert {
        r["stage"]: (
            r["orders"],
            r["p50_seconds"],
            r["p90_seconds"],
            r["average_seconds"],
            r["max_seconds"],
        )
        for r in rows
    } == {
        stage: (len(v), quantile(v, 0.5), quantile(v, 0.9), sum(v) // len(v), max(v))
        for stage, v in spent.items()
    }
    assert [r["stage"] for r in rows][:3] == ["received", "accepted", "held"]


def test_late_orders_are_those_fulfilled_or_still_open_after_their_promise(
    store: ClickHouseStore, facts: list[OrderFacts]
) -> None:
    late = []
    for f in facts:
        if f.promised_at is None or f.cancelled or f.status == "rejected":
            continue
        done = f.fulfilled_at or AS_OF
        if done > f.promised_at:
            late.append(
                (f.order_id, f.fulfilled_at, int((done - f.promised_at).total_seconds()) // 60)
            )
    late.sort(key=lambda x: (-x[2], x[0]))
    rows = report(store, "late_orders", as_of=AS_OF, limit=10_000)
    assert [(r["order_id"], r["fulfilled_at"], r["minutes_late"]) for r in rows] == late
    assert any(f is not None for _, f, _ in late) and any(f is None for _, f, _ in late)
    at_s1 = report(store, "late_orders", as_of=AS_OF, location="S1", limit=10_000)
    assert {r["order_id"] for r in at_s1} == {
        o for o, *_ in late if next(f for f in facts if f.order_id == o).location == "S1"
    }


def test_repeat_and_top_customers(store: ClickHouseStore, facts: list[OrderFacts]) -> None:
    sales = [f for f in facts if f.is_sale and in_window(f) and f.customer_key]
    per_customer = Counter(f.customer_key for f in sales)
    repeat = {c: n for c, n in per_customer.items() if n >= 2}
    (summary,) = report(store, "repeat_customers", **WINDOW)
    assert summary == {
        "customers": len(per_customer),
        "repeat_customers": len(repeat),
        "repeat_rate_pct": pytest.approx(100 * len(repeat) / len(per_customer), abs=0.051),
        "orders": len(sales),
        "orders_by_repeat_customers": sum(repeat.values()),
    }
    top = report(store, "top_customers", min_orders=2, limit=1000, **WINDOW)
    assert [(r["customer_key"], r["orders"]) for r in top] == sorted(
        repeat.items(), key=lambda item: (-item[1], item[0])
    )
    first = top[0]
    theirs = [f for f in sales if f.customer_key == first["customer_key"]]
    assert (first["channels"], first["first_order_at"], first["last_order_at"]) == (
        len({f.channel for f in theirs}),
        min(f.placed_at for f in theirs),
        max(f.placed_at for f in theirs),
    )


def test_items_bought_together_counts_orders_holding_both(
    store: ClickHouseStore, facts: list[OrderFacts]
) -> None:
    pairs: Counter[tuple[str, str]] = Counter()
    for f in facts:
        if f.is_sale and in_window(f):
            skus = sorted({sku for sku, _, quantity, _ in f.lines if quantity > 0})
            pairs.update(combinations(skus, 2))
    rows = report(store, "items_bought_together", limit=1000, **WINDOW)
    assert [(r["sku_a"], r["sku_b"], r["orders"]) for r in rows] == sorted(
        ((a, b, n) for (a, b), n in pairs.items()), key=lambda p: (-p[2], p[0], p[1])
    )
    assert rows[0]["orders"] > 1


def test_review_queue_held_orders_and_fraud_hold_rate(
    store: ClickHouseStore, facts: list[OrderFacts]
) -> None:
    waiting = [f for f in facts if f.status == "held"]
    assert waiting, "the scenario should leave orders in the review queue"
    oldest = min(f.held_at for f in waiting if f.held_at)
    (queue,) = report(store, "review_queue", as_of=AS_OF)
    assert queue == {
        "held_orders": len(waiting),
        "oldest_held_at": oldest,
        "oldest_wait_minutes": int((AS_OF - oldest).total_seconds()) // 60,
        "average_risk_score": pytest.approx(
            sum(f.risk_score for f in waiting) / len(waiting), abs=0.051
        ),
        "max_risk_score": max(f.risk_score for f in waiting),
    }
    held = report(store, "held_orders", limit=1000)
    assert [(r["order_id"], r["risk_score"]) for r in held] == [
        (f.order_id, f.risk_score) for f in sorted(waiting, key=lambda f: (f.held_at, f.order_id))
    ]
    screened: dict[str, list[OrderFacts]] = defaultdict(list)
    for f in facts:
        if f.accepted and in_window(f):
            screened[f.channel].append(f)
    rows = report(store, "fraud_hold_rate", **WINDOW)
    assert {
        r["channel"]: (r["screened"], r["held_orders"], r["approved"], r["rejected"], r["waiting"])
        for r in rows
    } == {
        channel: (
            len(fs),
            sum(f.held for f in fs),
            sum(f.review == "approved" for f in fs),
            sum(f.review == "rejected" for f in fs),
            sum(f.status == "held" for f in fs),
        )
        for channel, fs in screened.items()
    }
    for row in rows:
        assert row["hold_rate_pct"] == pytest.approx(
            100 * row["held_orders"] / row["screened"], abs=0.051
        )


def test_fulfilment_queue_puts_the_highest_priority_then_the_earliest_promise_first(
    store: ClickHouseStore, facts: list[OrderFacts]
) -> None:
    queued = {"prioritised", "accepted_by_store", "preparing", "ready"}
    far = datetime.max
    seen = 0
    for location in STORES + WAREHOUSES:
        expected = sorted(
            (f for f in facts if f.status in queued and f.location == location),
            key=lambda f: (-f.priority_score, f.promised_at or far, f.placed_at, f.order_id),
        )
        got = fulfilment_queue(store, location, limit=1000)
        assert [
            (r["order_id"], r["status"], r["priority_score"], r["promised_at"]) for r in got
        ] == [(f.order_id, f.status, f.priority_score, f.promised_at) for f in expected]
        seen += len(got)
    assert seen > 10
    assert len(fulfilment_queue(store, "S1", limit=2)) == 2


def test_kitchen_tickets_put_the_one_due_first_on_top(
    store: ClickHouseStore, facts: list[OrderFacts]
) -> None:
    queued = {"prioritised", "accepted_by_store", "preparing", "ready"}
    far = datetime.max
    seen = 0
    for location in STORES:
        expected = sorted(
            (f for f in facts if f.status in queued and f.location == location),
            key=lambda f: (f.promised_at or far, -f.priority_score, f.placed_at, f.order_id),
        )
        got = report(store, "kitchen_tickets", location=location, limit=1000)
        assert [(r["order_id"], r["status"], r["promised_at"]) for r in got] == [
            (f.order_id, f.status, f.promised_at) for f in expected
        ]
        for row, f in zip(got, expected, strict=True):
            assert row["line_names"] == [name for _, name, _, _ in f.lines]
            assert row["line_quantities"] == [quantity for _, _, quantity, _ in f.lines]
            assert row["ready_by"] is None  # the scenario's stores state no ETA
        seen += len(got)
    assert seen > 5


def test_orders_per_minute_and_by_status(
    store: ClickHouseStore, published: tuple[Settings, Scenario], facts: list[OrderFacts]
) -> None:
    flow: dict[tuple[datetime, str], Counter[str]] = defaultdict(Counter)
    for event in distinct_events(published[1].order_log):
        minute = seconds(event.occurred_at).replace(second=0)
        flow[(minute, event.channel)][type(event).__name__] += 1
    rows = report(store, "orders_per_minute", **WINDOW)
    assert {
        (r["minute"], r["channel"]): (r["received"], r["accepted"], r["rejected"], r["cancelled"])
        for r in rows
    } == {
        key: (
            c["OrderReceived"],
            c["OrderAccepted"],
            c["OrderRejected"],
            c["OrderCancelled"] + c["ReviewRejected"],
        )
        for key, c in flow.items()
        if SINCE <= key[0] < UNTIL
    }
    statuses = report(store, "orders_by_status", **WINDOW)
    assert {r["status"]: r["orders"] for r in statuses} == Counter(f.status for f in facts)


def test_stock_levels_and_alerts(
    store: ClickHouseStore, published: tuple[Settings, Scenario]
) -> None:
    histories = published[1].stock_histories
    levels = {key: stock_facts(events) for key, events in histories.items()}
    rows = report(store, "stock_levels", limit=1000)
    assert [
        (r["sku"], r["location"], r["on_hand"], r["reserved"], r["safety_stock"], r["available"])
        for r in rows
    ] == sorted(
        (
            (sku, loc, f.on_hand, f.reserved, f.safety_stock, f.available)
            for (sku, loc), f in levels.items()
        ),
        key=lambda r: (r[5], r[0], r[1]),
    )
    # One row per sku@location however often it was alerted: its newest alert, and how many.
    alerts = sorted(
        (
            (sku, loc, *f.alerts[-1], len(f.alerts), f.alerts[0][0])
            for (sku, loc), f in levels.items()
            if f.alerts
        ),
        key=lambda a: a[:2],
    )
    alerts.sort(key=lambda a: a[2], reverse=True)
    assert any(len(f.alerts) > 1 for f in levels.values())  # some were alerted again
    got = report(store, "stock_alerts", limit=1000, **WINDOW)
    assert [
        (r["sku"], r["location"], r["alerted_at"], r["available"], r["reorder_quantity"],
         r["alerts"], r["first_alerted_at"])
        for r in got
    ] == alerts  # fmt: skip


def test_every_report_runs_with_its_defaults_and_names_no_database(
    store: ClickHouseStore,
) -> None:
    for name, entry in REPORTS.items():
        located = ("fulfilment_queue", "kitchen_tickets", "kitchen_changes")
        params = {"location": "S1"} if name in located else {}
        result = run_report(store, name, **params)
        assert result.columns, name
        assert "oms." not in entry.sql and f"{store.database}." not in entry.sql
        assert entry.title and entry.description and entry.path.exists()


def test_a_parameter_the_report_does_not_take_or_cannot_read_is_refused(
    store: ClickHouseStore,
) -> None:
    with pytest.raises(ReportError, match="takes since, until, limit"):
        run_report(store, "sales_by_channel", channel="meituan")
    with pytest.raises(ReportError, match="since: 'last week' is not a date"):
        run_report(store, "sales_by_channel", since="last week")
    with pytest.raises(ReportError, match="needs the parameter location"):
        run_report(store, "fulfilment_queue")
    with pytest.raises(ReportError, match="no report 'nope'"):
        run_report(store, "nope")


def test_every_time_zone_a_report_accepts_loads_on_the_backend(store: ClickHouseStore) -> None:
    """`tz` is checked against the system's tz database before ClickHouse sees it: each of its
    zones must load in ClickHouse too, or a report would fail with 503 instead of 400."""
    zones = sorted(available_timezones())
    assert "UTC" in zones and "Asia/Shanghai" in zones
    (hours,) = store.query("SELECT " + ", ".join(f"toHour(toDateTime(0), '{z}')" for z in zones))
    assert len(hours) == len(zones)
    with pytest.raises(ReportError, match="'Mars/Olympus' is not a time zone"):
        run_report(store, "sales_by_hour", tz="Mars/Olympus")
    with pytest.raises(ReportError, match="until: 2106-02-07 06:28:15 UTC is outside"):
        run_report(store, "sales_by_hour", until="2106-02-07 06:28:15")


# The CLI runs in a second process, which can reach the server but not this process's chDB.
@pytest.mark.parametrize("projected", ["server"], indirect=True)
def test_oms_report_lists_the_reports_and_prints_one_as_a_table_or_csv(
    projected: tuple[Settings, ClickHouseStore],
) -> None:
    settings, store = projected

    def oms(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "oms.cli", "report", *args],
            env=settings_env(settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = oms("--list")
    assert [line.split()[0] for line in listed.splitlines()] == list(REPORTS)
    window = ["--since", f"{SINCE:%Y-%m-%d}", "--until", f"{UNTIL:%Y-%m-%d %H:%M:%S}"]
    table = oms("sales_by_channel", *window).splitlines()
    assert table[0].split() == ["channel", "currency", "orders", "units", "revenue"]
    expected = run_report(store, "sales_by_channel", **WINDOW)
    assert table[-1] == f"({len(expected.rows)} rows)"
    assert [line.split() for line in table[2:-1]] == [
        [str(v) for v in row] for row in expected.rows
    ]
    parsed = list(csv.reader(io.StringIO(oms("sales_by_channel", "--csv", *window))))
    assert parsed == [expected.columns, *[[str(v) for v in row] for row in expected.rows]]


@pytest.mark.parametrize("projected", ["server"], indirect=True)
def test_the_documented_clickhouse_client_command_runs_on_the_installed_client(
    projected: tuple[Settings, ClickHouseStore],
) -> None:
    """docs/read-models.md's shell command, run as written with the stack's clickhouse-client
    (18.16 in CI: no --param_*), against the test's database."""
    settings, store = projected
    docs = (PROJECT_ROOT / "docs" / "read-models.md").read_text(encoding="utf-8")
    (command,) = [b for b in re.findall(r"```sh\n(.*?)```", docs, re.S) if "clickhouse-client" in b]
    url = urlparse(settings.resolved_clickhouse_url)
    assert url.scheme == "clickhouse" and command.count("--database oms") == 1
    here = f"--host {url.hostname} --port {url.port or 9000} --database {store.database}"
    if url.username:  # the stack's writer (oms stack up makes its users with passwords)
        here += f" --user {shlex.quote(unquote(url.username))}"
        here += f" --password {shlex.quote(unquote(url.password or ''))}"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command.replace("--database oms", here)],
        cwd=PROJECT_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    expected = run_report(
        store, "sales_by_product", since="2026-11-01", until="2026-12-01", limit=20
    ).rows
    assert expected
    assert [line.split("\t") for line in done.stdout.splitlines()] == [
        [str(v) for v in row] for row in expected
    ]
