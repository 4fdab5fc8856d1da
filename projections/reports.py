"""Analytics over the read models: each report is a SQL file in projections/sql/ that an analyst
can copy, and an entry in `REPORTS`.

The files name tables without a database (`FROM orders FINAL`) and write parameters the way
ClickHouse's own query parameters are written, `{since:DateTime}`. `run_report` fills the
parameters in as literals (ClickHouse 18.16, client and server, has no query parameters) and
qualifies the tables with the store's database; docs/read-models.md shows how to do the same
for `clickhouse-client` by hand.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import available_timezones

from projections.schema import AUDIT_LOG, READ_MODEL_NAMES
from projections.store import ClickHouseStore, sql_string

SQL_DIR = Path(__file__).resolve().parent / "sql"

Default = Callable[[datetime], Any]  # as_of → the parameter's default value


class ReportError(ValueError):
    """An unknown report, or a parameter it does not take or cannot read."""


@dataclass(frozen=True)
class Report:
    name: str
    title: str
    description: str
    sql_file: str
    defaults: dict[str, Default] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return SQL_DIR / self.sql_file

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def parameters(self) -> dict[str, str]:
        """Parameter name → ClickHouse type, in the order the SQL first uses them."""
        found: dict[str, str] = {}
        for name, ch_type in _PARAMETER.findall(self.sql):
            found.setdefault(name, ch_type)
        return found


@dataclass(frozen=True)
class ReportResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def as_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def _days_before(days: int) -> Default:
    return lambda as_of: as_of - timedelta(days=days)


def _as_of(as_of: datetime) -> datetime:
    return as_of


def _constant(value: Any) -> Default:
    return lambda _: value


_WINDOW_30D = {"since": _days_before(30), "until": _as_of}
_LIMIT = {"limit": _constant(50)}


def _report(
    name: str, title: str, description: str, defaults: dict[str, Default] | None = None
) -> Report:
    return Report(name, title, description, f"{name}.sql", defaults or {})


REPORTS: dict[str, Report] = {
    report.name: report
    for report in (
        _report(
            "sales_by_product",
            "Sales by product",
            "Orders, units and revenue per SKU (sales placed in the window).",
            _WINDOW_30D | _LIMIT,
        ),
        _report(
            "sales_by_channel",
            "Sales by channel",
            "Orders, units and revenue per sales channel.",
            _WINDOW_30D | _LIMIT,
        ),
        _report(
            "sales_by_store",
            "Sales by store",
            "Orders, units and revenue per fulfilling store or warehouse.",
            _WINDOW_30D | _LIMIT,
        ),
        _report(
            "sales_by_region",
            "Sales by region",
            "Orders, units and revenue per region (the delivery city, else the location).",
            _WINDOW_30D | _LIMIT,
        ),
        _report(
            "sales_by_hour",
            "Sales by hour of day",
            "Orders, units and revenue per hour of the day in a time zone (tz).",
            _WINDOW_30D | {"tz": _constant("UTC")},
        ),
        _report(
            "average_order_value",
            "Average order value",
            "Orders, revenue and average order total per currency.",
            _WINDOW_30D,
        ),
        _report(
            "channel_mix",
            "Channel mix",
            "Each channel's share of orders and revenue, and its average order value.",
            _WINDOW_30D,
        ),
        _report(
            "sales_net_of_refunds",
            "Sales net of refunds",
            "Gross sales, refunds paid and net sales per channel and currency.",
            _WINDOW_30D,
        ),
        _report(
            "return_rate_by_sku",
            "Return rate by SKU",
            "Units sold, units customers asked to return (not denied) and the return rate per SKU.",
            _WINDOW_30D | _LIMIT,
        ),
        _report(
            "returns_by_reason",
            "Returns by reason",
            "Returns, units and SKUs per reason (a line's own reason, else the return's).",
            _WINDOW_30D,
        ),
        _report(
            "shipping_cost_by_carrier",
            "Shipping cost by carrier",
            "Shipments, orders shipped, total cost and cost per order per carrier and currency.",
            _WINDOW_30D,
        ),
        _report(
            "carrier_on_time",
            "Carrier on-time delivery",
            "Per carrier: shipments delivered, on time and late against the carrier's promise, "
            "the on-time rate, and those still on the way.",
            _WINDOW_30D,
        ),
        _report(
            "inventory_turnover",
            "Inventory turnover",
            "Units sold over the average on-hand level, per sku@location.",
            _WINDOW_30D | _LIMIT,
        ),
        _report(
            "slow_movers",
            "Slow movers",
            "Items in stock that sold least in the window, and when they last sold.",
            _WINDOW_30D | _LIMIT,
        ),
        _report(
            "stage_cycle_times",
            "Fulfilment cycle time per stage",
            "p50 / p90 / average seconds orders spent in each stage they have left.",
            _WINDOW_30D,
        ),
        _report(
            "late_orders",
            "Late orders",
            "Orders fulfilled after their promised time, or open and past it.",
            {"as_of": _as_of, "location": _constant("")} | _LIMIT,
        ),
        _report(
            "repeat_customers",
            "Repeat customers",
            "How many customers bought more than once, and their share of orders.",
            _WINDOW_30D,
        ),
        _report(
            "top_customers",
            "Top customers",
            "Customers with the most orders (at least min_orders).",
            _WINDOW_30D | {"min_orders": _constant(2)} | _LIMIT,
        ),
        _report(
            "items_bought_together",
            "Items bought together",
            "Pairs of SKUs that appear in the same orders most often.",
            _WINDOW_30D | _LIMIT,
        ),
        _report(
            "review_queue",
            "Review queue",
            "Orders waiting for a fraud reviewer, the longest wait and their risk scores.",
            {"as_of": _as_of},
        ),
        _report(
            "held_orders",
            "Held orders",
            "The orders in the review queue, longest waiting first.",
            _LIMIT,
        ),
        _report(
            "fraud_hold_rate",
            "Fraud hold rate",
            "Share of screened orders held for review per channel, and the decisions.",
            _WINDOW_30D,
        ),
        _report(
            "fulfilment_queue",
            "Fulfilment queue",
            "A location's open prioritised orders, highest priority first.",
            {"limit": _constant(100)},
        ),
        _report(
            "store_stage_times",
            "Store stage times by hour",
            "Per store and hour of day (tz): p50 / p90 seconds waiting to be accepted, "
            "accepted, preparing, ready and on the way.",
            _WINDOW_30D | {"tz": _constant("UTC")},
        ),
        _report(
            "store_acceptance",
            "Store acceptance and lateness",
            "Per store: orders that reached it, accepted, declined, the acceptance rate, "
            "and the late rate of its promised orders.",
            _WINDOW_30D | {"as_of": _as_of},
        ),
        _report(
            "eta_accuracy",
            "ETA accuracy",
            "Per store and over all ('*'): p50 / p90 minutes between the ready estimate "
            "at acceptance and the ready time, and for the fixed default promise.",
            _WINDOW_30D,
        ),
        _report(
            "decline_reasons",
            "Decline reasons",
            "Why stores declined orders (NOT_ACCEPTED: nobody accepted it in time).",
            _WINDOW_30D,
        ),
        _report(
            "kitchen_tickets",
            "Kitchen tickets",
            "A store's open tickets, the one due first on top (the kitchen screen's).",
            {"limit": _constant(100)},
        ),
        _report(
            "kitchen_changes",
            "Kitchen: changes to answer",
            "A store's amendments waiting for its answer (sent after it accepted the order).",
            {"limit": _constant(100)},
        ),
        _report(
            "orders_at_risk",
            "Orders at risk",
            "Orders about to miss a promise: not accepted halfway through the store's "
            "window, or not ready 5 minutes before due (the newest alert of each).",
            {"location": _constant(""), "limit": _constant(100)},
        ),
        _report(
            "orders_per_minute",
            "Orders per minute",
            "Orders received, accepted, rejected and cancelled per minute and channel.",
            {"since": lambda as_of: as_of - timedelta(hours=1), "until": _as_of},
        ),
        _report(
            "order_events_per_minute",
            "Order events per minute",
            "Order events recorded per minute in the read models, and the orders rejected.",
            {"since": lambda as_of: as_of - timedelta(hours=1), "until": _as_of},
        ),
        _report(
            "orders_by_status",
            "Orders by status",
            "The fulfilment funnel: orders by their current status.",
            _WINDOW_30D,
        ),
        _report(
            "stock_levels",
            "Stock levels",
            "Current on-hand, reserved, safety stock and available per sku@location.",
            _LIMIT,
        ),
        _report(
            "stock_alerts",
            "Stock alerts",
            "Low-stock alerts, one row per sku@location (its newest alert), with the "
            "suggested reorder quantity and how often it was raised; newest first.",
            {"since": _days_before(7), "until": _as_of} | _LIMIT,
        ),
        _report(
            "audit",
            "Audit trail",
            "Who did what, when and from where, newest first; by principal, action "
            "(a prefix) and outcome.",
            {
                "since": _days_before(7),
                "until": _as_of,
                "principal": _constant(""),
                "action": _constant(""),
                "outcome": _constant(""),
                "limit": _constant(100),
            },
        ),
    )
}

_PARAMETER = re.compile(r"\{(\w+):(\w+)\}")
# The tables a report may name: the read models, and the audit trail's.
REPORT_TABLES = (*READ_MODEL_NAMES, AUDIT_LOG)
_TABLE = re.compile(r"\b(FROM|JOIN)\s+(" + "|".join(REPORT_TABLES) + r")\b", re.IGNORECASE)


def _parse_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    else:
        try:
            parsed = datetime.fromisoformat(str(value).strip())
        except ValueError as exc:
            raise ReportError(f"{value!r} is not a date or time (YYYY-MM-DD[ HH:MM:SS])") from exc
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed.replace(microsecond=0)


# The times a DateTime holds on both backends, UTC. ClickHouse takes a time outside them without
# an error and reads it as something else (18.16: 0000-00-00), so they are refused here.
EARLIEST, LATEST = datetime(1970, 1, 1), datetime(2105, 12, 31, 23, 59, 59)


def literal(value: Any, ch_type: str) -> str:
    """A parameter value as a SQL literal of its ClickHouse type."""
    if ch_type == "DateTime":
        parsed = _parse_datetime(value)
        if not EARLIEST <= parsed <= LATEST:
            raise ReportError(
                f"{parsed.isoformat(' ')} UTC is outside the times ClickHouse holds "
                f"({EARLIEST:%Y-%m-%d %H:%M:%S} to {LATEST:%Y-%m-%d %H:%M:%S} UTC)"
            )
        return f"toDateTime('{parsed:%Y-%m-%d %H:%M:%S}')"
    if ch_type == "String":
        return sql_string(str(value))
    if ch_type.startswith(("UInt", "Int")):
        try:
            number = int(value)
        except (TypeError, ValueError) as exc:
            raise ReportError(f"{value!r} is not a whole number") from exc
        if ch_type.startswith("UInt") and number < 0:
            raise ReportError(f"{value!r} must not be negative")
        return str(number)
    if ch_type.startswith("Float"):
        try:
            return repr(float(value))
        except (TypeError, ValueError) as exc:
            raise ReportError(f"{value!r} is not a number") from exc
    raise ReportError(f"parameter type {ch_type} is not supported")


@cache
def _time_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _time_zone(value: Any) -> None:
    """ClickHouse answers an unknown zone with an error for the whole query: refuse it first.
    (Every zone of the system's tz database loads on both backends; a test checks that.)"""
    if str(value) not in _time_zones():
        raise ReportError(f"{value!r} is not a time zone (an IANA name: UTC, Asia/Shanghai, ...)")


# Parameters whose name asks more than their ClickHouse type says.
_CHECKS: dict[str, Callable[[Any], None]] = {"tz": _time_zone}


def parameter_literal(name: str, value: Any, ch_type: str) -> str:
    """Report parameter `name` as a SQL literal of its type; ReportError if it cannot be one."""
    check = _CHECKS.get(name)
    if check is not None:
        check(value)
    return literal(value, ch_type)


def render(report: Report, database: str, params: dict[str, Any], *, as_of: datetime) -> str:
    """The report's SQL with its tables qualified and its parameters filled in."""
    wanted = report.parameters
    unknown = set(params) - set(wanted)
    if unknown:
        raise ReportError(
            f"report {report.name} takes {', '.join(wanted) or 'no parameters'}; "
            f"not {', '.join(sorted(unknown))}"
        )
    values: dict[str, str] = {}
    for name, ch_type in wanted.items():
        if name in params and params[name] is not None:
            value = params[name]
        elif name in report.defaults:
            value = report.defaults[name](as_of)
        else:
            raise ReportError(f"report {report.name} needs the parameter {name} ({ch_type})")
        try:
            values[name] = parameter_literal(name, value, ch_type)
        except ReportError as exc:
            raise ReportError(f"{name}: {exc}") from None
    sql = _TABLE.sub(lambda m: f"{m.group(1)} {database}.{m.group(2)}", report.sql)
    return _PARAMETER.sub(lambda m: values[m.group(1)], sql)


def run_report(store: ClickHouseStore, name: str, **params: Any) -> ReportResult:
    """Run report `name`; parameters not given take their defaults (windows end now)."""
    report = REPORTS.get(name)
    if report is None:
        raise ReportError(f"no report {name!r}; there are: {', '.join(sorted(REPORTS))}")
    as_of = _parse_datetime(params.get("as_of") or datetime.now(UTC))
    columns, rows = store.query_with_columns(render(report, store.database, params, as_of=as_of))
    return ReportResult(columns=columns, rows=rows)
