"""The read API over the ClickHouse read models, and the live dashboard (docs/dashboard.md).

- `GET /orders/{id}`: the order's current state and event history (by order id or the
  channel's external id); 404 when the read models do not hold it.
- `GET /orders?status=&channel=&store=&page=&page_size=`: orders, newest first, a page at a time.
- `GET /reports`: the reports and their parameters; `GET /reports/{name}?param=...`: columns
  and rows. 400 names the parameter that is wrong (a time ClickHouse cannot hold, an unknown
  time zone, ...); 404 for an unknown report.
- `GET /dashboard`: the page (projections/dashboard/), its assets (DASHBOARD_ASSETS) under
  `/dashboard/static/`.
- `GET /stores/{store}/kitchen`: a store's kitchen screen (projections/kitchen/, assets under
  `/kitchen/static/`), fed by `GET /stores/{store}/tickets` (docs/dashboard.md, "Kitchen").

Errors answer `{"error": reason, ...}` as the webhooks do; 503 when ClickHouse cannot answer.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urlparse

from aiohttp import web
from multidict import MultiMapping

from events.lifecycle import OrderStatus
from events.models import MILLIONTHS, measure_text
from infra.http import problem
from infra.settings import Settings
from projections.queries import list_orders, order_history, order_state
from projections.reports import REPORTS, Report, ReportError, parameter_literal, run_report
from projections.store import ClickHouseStore, StoreError, connect

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboard"
DASHBOARD_ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
"""What `/dashboard/static/` serves, with the media type each is served as (named here, not
guessed from the platform's MIME tables, so the OpenAPI document and the answer agree)."""
KITCHEN_DIR = Path(__file__).resolve().parent / "kitchen"
KITCHEN_ASSETS = {"kitchen.js": "text/javascript", "kitchen.css": "text/css"}
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 200
MAX_PAGE = 1_000_000
ORDERS_PARAMETERS = ("status", "channel", "store", "page", "page_size")
_LINE_COLUMNS = {
    "line_skus": "sku",
    "line_names": "name",
    "line_quantities": "quantity",
    "line_prices": "unit_price",
    "line_locations": "location",
}

T = TypeVar("T")


class BadParameter(ValueError):
    """A query parameter the endpoint cannot use; `parameter` names it for the 400 body."""

    def __init__(self, parameter: str, message: str) -> None:
        self.parameter = parameter
        super().__init__(message)


class ReadModels:
    """The app's ClickHouse, queried on worker threads so the event loop never waits on it.

    A clickhouse-driver client serves one query at a time, so each worker thread opens its own;
    chDB holds one session per process, so embedded queries run one at a time (one worker).
    """

    def __init__(self, url: str, *, max_execution_s: int = 10, max_rows_to_read: int = 0) -> None:
        self.url = url
        self.limits = {"max_execution_s": max_execution_s, "max_rows_to_read": max_rows_to_read}
        workers = 1 if urlparse(url).scheme == "chdb" else 4
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read-api")
        self._local = threading.local()
        self._opened: list[ClickHouseStore] = []
        self._lock = threading.Lock()

    def _store(self) -> ClickHouseStore:
        store: ClickHouseStore | None = getattr(self._local, "store", None)
        if store is None:
            store = connect(self.url)
            store.limit_queries(**self.limits)
            self._local.store = store
            with self._lock:
                self._opened.append(store)
        return store

    async def run(self, query: Callable[[ClickHouseStore], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: query(self._store()))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            for store in self._opened:
                store.close()
            self._opened.clear()


READ_MODELS = web.AppKey("read_models", ReadModels)


# ------------------------------------------------------------------ JSON


def json_value(value: Any) -> Any:
    """A cell from ClickHouse as JSON: times as ISO 8601 UTC, NaN as null, arrays as lists."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")  # the stores hand out naive UTC
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return value


def _json(body: dict[str, Any], *, status: int = 200) -> web.Response:
    response = web.json_response(
        body, status=status, dumps=lambda obj: json.dumps(obj, ensure_ascii=False)
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _unavailable(exc: StoreError) -> web.Response:
    reason = " ".join(str(exc).split(" -- in:", 1)[0].split())
    details = {"hint": "run `oms project --migrate`"} if "exist" in reason else {}
    return problem(503, f"ClickHouse could not answer: {reason}", **details)


def _single(query: MultiMapping[str], name: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise BadParameter(name, f"{name} is given {len(values)} times; give it once")
    return values[0] if values else None


def _refuse_unknown(query: MultiMapping[str], known: tuple[str, ...], *, what: str) -> None:
    for name in query:
        if name not in known:
            raise BadParameter(
                name, f"{what} takes {', '.join(known) or 'no parameters'}; not {name}"
            )


# ------------------------------------------------------------------ orders


def order_document(state: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """An order as the API shows it: its state (lines as objects, no bookkeeping columns)
    and its events in sequence."""
    order = {k: json_value(v) for k, v in state.items() if not k.startswith("_")}
    if all(column in order for column in _LINE_COLUMNS):
        columns = [order.pop(column) for column in _LINE_COLUMNS]
        amounts = order.pop("line_amounts", None) or []  # (none in rows stored before v4)
        order["lines"] = [
            dict(zip(_LINE_COLUMNS.values(), line, strict=True))
            for line in zip(*columns, strict=True)
        ]
        units = order.pop("line_units", None) or []  # (none in rows stored before v5)
        measures = order.pop("line_millionths", None) or []
        options = order.pop("line_options", None) or []  # (none before migration 010)
        for n, line in enumerate(order["lines"]):
            line["options"] = options[n] if n < len(options) else ""
            line["amount"] = (
                amounts[n] if n < len(amounts) else line["quantity"] * line["unit_price"]
            )
            line["unit"] = units[n] if n < len(units) else "each"
            line["measure"] = measure_text(
                measures[n] if n < len(measures) else line["quantity"] * MILLIONTHS
            )
    return {
        "order": order,
        "history": [{k: json_value(v) for k, v in event.items()} for event in history],
    }


def _whole_number(query: MultiMapping[str], name: str, *, default: int, highest: int) -> int:
    raw = _single(query, name)
    if raw is None:
        return default
    try:
        number = int(raw)
    except ValueError:
        raise BadParameter(name, f"{name}: {raw!r} is not a whole number") from None
    if not 1 <= number <= highest:
        raise BadParameter(name, f"{name}: {number} is not between 1 and {highest}")
    return number


def orders_query(query: MultiMapping[str]) -> dict[str, Any]:
    """The filters and page of `GET /orders`, checked; BadParameter names what is wrong."""
    _refuse_unknown(query, ORDERS_PARAMETERS, what="/orders")
    status = _single(query, "status") or None
    if status is not None and status not in {s.value for s in OrderStatus}:
        raise BadParameter(
            "status", f"status: {status!r} is not one of {', '.join(s.value for s in OrderStatus)}"
        )
    return {
        "status": status,
        "channel": _single(query, "channel") or None,
        "store": _single(query, "store") or None,
        "page": _whole_number(query, "page", default=1, highest=MAX_PAGE),
        "page_size": _whole_number(
            query, "page_size", default=DEFAULT_PAGE_SIZE, highest=MAX_PAGE_SIZE
        ),
    }


async def get_order(request: web.Request) -> web.Response:
    order_id = request.match_info["order_id"]

    def read(store: ClickHouseStore) -> dict[str, Any] | None:
        state = order_state(store, order_id)
        if state is None:
            return None
        return order_document(state, order_history(store, state["order_id"]))

    try:
        document = await request.app[READ_MODELS].run(read)
    except StoreError as exc:
        return _unavailable(exc)
    if document is None:
        return problem(
            404,
            f"no order {order_id!r} in the read models (unknown, or not projected yet)",
            order_id=order_id,
        )
    return _json(document)


async def get_orders(request: web.Request) -> web.Response:
    try:
        wanted = orders_query(request.query)
    except BadParameter as exc:
        return problem(400, str(exc), parameter=exc.parameter)
    page, size = wanted["page"], wanted["page_size"]
    filters = {k: wanted[k] for k in ("status", "channel", "store") if wanted[k]}

    def read(store: ClickHouseStore) -> list[dict[str, Any]]:
        # One row more than the page tells whether another page follows.
        return list_orders(
            store,
            status=wanted["status"],
            channel=wanted["channel"],
            location=wanted["store"],
            limit=size + 1,
            offset=(page - 1) * size,
        )

    try:
        rows = await request.app[READ_MODELS].run(read)
    except StoreError as exc:
        return _unavailable(exc)
    more = len(rows) > size
    following = urlencode(filters | {"page": page + 1, "page_size": size})
    return _json(
        {
            "orders": [{k: json_value(v) for k, v in row.items()} for row in rows[:size]],
            "page": page,
            "page_size": size,
            "filters": filters,
            "has_more": more,
            "next": f"/orders?{following}" if more else None,
        }
    )


# ------------------------------------------------------------------ reports


def report_entry(report: Report) -> dict[str, Any]:
    return {
        "name": report.name,
        "title": report.title,
        "description": report.description,
        "parameters": [
            {"name": name, "type": ch_type, "required": name not in report.defaults}
            for name, ch_type in report.parameters.items()
        ],
        "href": f"/reports/{report.name}",
    }


def integer_range(ch_type: str) -> tuple[int, int] | None:
    """The values a ClickHouse integer type holds (`UInt32`: 0 to 4294967295); None for a type
    that is not an integer. ClickHouse refuses a literal outside them for the whole query."""
    for prefix, signed in (("UInt", False), ("Int", True)):
        bits = ch_type.removeprefix(prefix)
        if bits != ch_type and bits in ("8", "16", "32", "64"):
            size = 1 << int(bits)
            return (-(size >> 1), (size >> 1) - 1) if signed else (0, size - 1)
    return None


def report_query(report: Report, query: MultiMapping[str]) -> dict[str, str]:
    """The report's parameters from the query string, each checked against its ClickHouse type
    (the check `run_report` makes, done here to name the parameter in the answer, and the
    range of an integer type, which it leaves to ClickHouse)."""
    wanted = report.parameters
    _refuse_unknown(query, tuple(wanted), what=f"report {report.name}")
    params: dict[str, str] = {}
    for name, ch_type in wanted.items():
        value = _single(query, name)
        if value is None:
            if name not in report.defaults:
                raise BadParameter(
                    name, f"report {report.name} needs the parameter {name} ({ch_type})"
                )
            continue
        try:
            literal = parameter_literal(name, value, ch_type)
        except ReportError as exc:
            raise BadParameter(name, f"{name}: {exc}") from None
        bounds = integer_range(ch_type)
        if bounds is not None and not bounds[0] <= int(literal) <= bounds[1]:
            raise BadParameter(
                name, f"{name}: {literal} is outside {bounds[0]} to {bounds[1]} ({ch_type})"
            )
        params[name] = value
    return params


async def get_reports(_: web.Request) -> web.Response:
    return _json({"reports": [report_entry(report) for report in REPORTS.values()]})


async def get_report(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    report = REPORTS.get(name)
    if report is None:
        return problem(404, f"no report {name!r}", report=name, reports=sorted(REPORTS))
    try:
        params = report_query(report, request.query)
    except BadParameter as exc:
        return problem(400, str(exc), parameter=exc.parameter, report=name)
    try:
        result = await request.app[READ_MODELS].run(lambda store: run_report(store, name, **params))
    except ReportError as exc:
        return problem(400, str(exc), report=name)
    except StoreError as exc:
        return _unavailable(exc)
    return _json(
        {
            "report": name,
            "title": report.title,
            "parameters": params,
            "columns": result.columns,
            "rows": [[json_value(v) for v in row] for row in result.rows],
        }
    )


# ------------------------------------------------------------------ dashboard


async def dashboard(_: web.Request) -> web.FileResponse:
    return web.FileResponse(DASHBOARD_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def dashboard_asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["filename"]
    media_type = DASHBOARD_ASSETS.get(name)
    if media_type is None:
        return problem(404, f"no dashboard asset {name!r}", assets=sorted(DASHBOARD_ASSETS))
    headers = {"Content-Type": f"{media_type}; charset=utf-8", "Cache-Control": "no-cache"}
    return web.FileResponse(DASHBOARD_DIR / name, headers=headers)


# ------------------------------------------------------------------ kitchen


async def kitchen(_: web.Request) -> web.FileResponse:
    return web.FileResponse(KITCHEN_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def kitchen_asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["filename"]
    media_type = KITCHEN_ASSETS.get(name)
    if media_type is None:
        return problem(404, f"no kitchen asset {name!r}", assets=sorted(KITCHEN_ASSETS))
    headers = {"Content-Type": f"{media_type}; charset=utf-8", "Cache-Control": "no-cache"}
    return web.FileResponse(KITCHEN_DIR / name, headers=headers)


def ticket(
    row: dict[str, Any],
    change: dict[str, Any] | None = None,
    risk: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One kitchen ticket: its lines as the kitchen reads them, a measured line in its unit;
    `change`: an amendment waiting for the store's answer (`kitchen_changes`); `risk`: its
    newest at-risk alert (`orders_at_risk`)."""
    keep = (
        "order_id",
        "external_id",
        "channel",
        "mode",
        "status",
        "table_name",
        "covers",
        "amended_from",
        "priority_score",
        "promised_at",
        "ready_by",
        "placed_at",
        "stage_entered_at",
    )
    shown = {name: json_value(row[name]) for name in keep} | {"lines": _ticket_lines(row)}
    return shown | {"change": change, "at_risk": risk}


def pending_change(row: dict[str, Any]) -> dict[str, Any]:
    """A `kitchen_changes` row as the ticket shows it: the revision and its lines."""
    requested = json.loads(row["requested"])
    lines = requested.get("lines") or []
    as_row = {
        "line_names": [line["name"] for line in lines],
        "line_quantities": [line["quantity"] for line in lines],
        "line_units": [line.get("unit", "each") for line in lines],
        "line_millionths": [
            line.get("quantity_millionths") or line["quantity"] * MILLIONTHS for line in lines
        ],
        "line_options": [", ".join(line.get("options") or []) for line in lines],
    }
    return {"revision": requested["revision"], "lines": _ticket_lines(as_row)}


def _ticket_lines(row: dict[str, Any]) -> list[dict[str, Any]]:
    units = row["line_units"] or ["each"] * len(row["line_names"])
    measures = row["line_millionths"] or [q * MILLIONTHS for q in row["line_quantities"]]
    options = row["line_options"] or [""] * len(row["line_names"])
    return [
        {
            "name": name,
            "quantity": quantity,
            "measure": f"{measure_text(measure)} {unit}" if unit != "each" else str(quantity),
            "options": extra,
        }
        for name, quantity, unit, measure, extra in zip(
            row["line_names"], row["line_quantities"], units, measures, options, strict=False
        )
    ]


async def get_tickets(request: web.Request) -> web.Response:
    location = request.match_info["location"]
    try:
        _refuse_unknown(request.query, (), what="tickets")
    except BadParameter as exc:
        return problem(400, str(exc), parameter=exc.parameter)
    try:
        result, changes, risks = await request.app[READ_MODELS].run(
            lambda store: (
                run_report(store, "kitchen_tickets", location=location),
                run_report(store, "kitchen_changes", location=location),
                run_report(store, "orders_at_risk", location=location),
            )
        )
    except StoreError as exc:
        return _unavailable(exc)
    pending = {row["order_id"]: pending_change(row) for row in changes.as_dicts()}
    at_risk = {
        row["order_id"]: {name: row[name] for name in ("risk", "due_at", "reason")}
        for row in risks.as_dicts()
    }
    tickets = [
        ticket(row, pending.get(row["order_id"]), at_risk.get(row["order_id"]))
        for row in result.as_dicts()
    ]
    return _json({"store": location, "tickets": tickets})


def add_routes(app: web.Application, settings: Settings) -> None:
    """The read API and the dashboard, over the settings' ClickHouse (one store per app)."""
    read_models = ReadModels(
        settings.resolved_clickhouse_read_url,
        max_execution_s=settings.read_max_execution_s,
        max_rows_to_read=settings.read_max_rows,
    )
    app[READ_MODELS] = read_models
    app.router.add_get("/orders", get_orders)
    app.router.add_get("/orders/{order_id}", get_order)
    app.router.add_get("/reports", get_reports)
    app.router.add_get("/reports/{name}", get_report)
    app.router.add_get("/dashboard", dashboard)
    app.router.add_get("/dashboard/", dashboard)
    app.router.add_get("/dashboard/static/{filename}", dashboard_asset)
    app.router.add_get("/stores/{location}/kitchen", kitchen)
    app.router.add_get("/stores/{location}/tickets", get_tickets)
    app.router.add_get("/kitchen/static/{filename}", kitchen_asset)

    async def close_read_models(_: web.Application) -> None:
        read_models.close()

    app.on_cleanup.append(close_read_models)
