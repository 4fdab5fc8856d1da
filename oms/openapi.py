"""The OpenAPI 3.1 document of `oms api`, served at `GET /openapi.json`.

It is built from the code that serves the routes, so that it says what the app does: the
operators' command bodies are their pydantic models' JSON schemas (`oms.operations.COMMANDS`),
the channels are the connector registry's, each report and its parameters come from
`projections.reports.REPORTS`, the order statuses from the lifecycle, the error body and its
media type from `infra.http.problem`. What is written here by hand is what code cannot say: the
summaries and the shapes of the successful answers. `tests/oms/test_openapi.py` holds its paths
equal to the app's routes; `tests/oms/test_api_fuzz.py` runs schemathesis against it. HEAD, which
aiohttp answers for every GET, is left implied.
"""

from __future__ import annotations

import json
import re
from importlib.metadata import version
from typing import Any

from aiohttp import web

from connectors.registry import available
from events.lifecycle import OrderStatus
from infra.http import problem
from oms import feed, returns
from oms.access import POLICY, Rule
from oms.operations import (
    COMMANDS,
    MAX_COMMAND_BYTES,
    PATH_VARIABLES,
    CommandBody,
    HttpCommand,
)
from projections.read_api import (
    DASHBOARD_ASSETS,
    DEFAULT_PAGE_SIZE,
    KITCHEN_ASSETS,
    MAX_PAGE,
    MAX_PAGE_SIZE,
    ORDERS_PARAMETERS,
    integer_range,
)
from projections.reports import EARLIEST, LATEST, REPORTS, Report

_VARIABLE = re.compile(r"\{(\w+)\}")
_JSON = "application/json"
_HTML = "text/html"
_FORM = "application/x-www-form-urlencoded"

Json = dict[str, Any]


def _ref(kind: str, name: str) -> Json:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json_body(schema: Json, description: str) -> Json:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _html(description: str) -> Json:
    return {"description": description, "content": {_HTML: {"schema": {"type": "string"}}}}


def _path_parameters(path: str, described: dict[str, Json] | None = None) -> list[Json]:
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": (described or {}).get(name, {"type": "string", "minLength": 1}),
        }
        for name in _VARIABLE.findall(path)
    ]


def _query(name: str, schema: Json, description: str, *, required: bool = False) -> Json:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
        "description": description,
    }


def _errors(*statuses: int) -> dict[str, Json]:
    return {str(status): _ref("responses", _ERROR_RESPONSES[status][0]) for status in statuses}


_ERROR_RESPONSES = {
    400: ("BadRequest", "the input is wrong: `field` or `parameter` names what"),
    401: (
        "Unauthorized",
        "no credentials, or a signature, key, token or session that proves nothing",
    ),
    403: ("Forbidden", "the caller's role or scope does not allow this, or a cross-site request"),
    415: ("UnsupportedMediaType", "a command's body is JSON: Content-Type application/json"),
    429: ("TooManyRequests", "over the rate limit of the caller or its address; see Retry-After"),
    404: ("NotFound", "nothing here by that name"),
    413: ("TooLarge", "the body is over the limit"),
    503: ("Unavailable", "Kafka or ClickHouse did not answer; nothing was taken: try again"),
}


# ------------------------------------------------------------------ channel webhooks


def _webhooks() -> dict[str, Json]:
    channels = sorted(available())
    updating = {name for name, c in available().items() if c.updates} or set(channels)
    kinds = {kind for c in available().values() for kind in c.updates} or {"none"}
    form_aware = {
        str(status): {
            "description": _ERROR_RESPONSES[status][1] + " (the form page for a form post)",
            "content": {
                _problem_media_type(): {"schema": _ref("schemas", "Problem")},
                _HTML: {"schema": {"type": "string"}},
            },
        }
        for status in (400, 401, 404, 413, 503)
    }
    return {
        "/webhooks/{channel}": {
            "post": {
                "operationId": "receiveChannelOrder",
                "tags": ["intake"],
                "summary": "A sales channel's order, answered once Kafka has it",
                "description": (
                    "The body is the channel's own payload, read by its connector "
                    "(docs/connectors.md). 200 means the event is on the intake topic; a "
                    "payload that cannot become an order is dead-lettered before it is "
                    "answered 400 (401: bad signature). A form post (the phone form) is "
                    "answered with the form page, whatever the status."
                ),
                "parameters": _path_parameters(
                    "/webhooks/{channel}",
                    {"channel": {"type": "string", "enum": channels}},
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        _JSON: {"schema": {"type": "object"}},
                        _FORM: {
                            "schema": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            }
                        },
                    },
                },
                "responses": {
                    "200": {
                        "description": "the order's event is on the intake topic",
                        "content": {
                            _JSON: {"schema": _ref("schemas", "Received")},
                            _HTML: {"schema": {"type": "string"}},
                        },
                    },
                }
                | form_aware,
            }
        },
        "/webhooks/{channel}/{kind}": {
            "post": {
                "operationId": "receivePlatformUpdate",
                "tags": ["intake"],
                "summary": "A platform's cancellation, refund request or rider status",
                "description": (
                    "A push the platform sends to its own callback URL besides orders (Meituan: "
                    'cancel, refund, logistics; docs/connectors.md, "Inbound sync"), signed '
                    "as its orders are. 200 means the event is on the order-commands topic for "
                    "the order agent; a push that cannot become one is dead-lettered before it "
                    "is answered 400 (401: bad signature; 404: no such push for the channel)."
                ),
                "parameters": _path_parameters(
                    "/webhooks/{channel}/{kind}",
                    {
                        "channel": {"type": "string", "enum": sorted(updating)},
                        "kind": {"type": "string", "enum": sorted(kinds)},
                    },
                ),
                "requestBody": {
                    "required": True,
                    "content": {_JSON: {"schema": {"type": "object"}}},
                },
                "responses": {
                    "200": _json_body(_ref("schemas", "Received"), "the update is on its way"),
                }
                | {
                    str(status): {
                        "description": _ERROR_RESPONSES[status][1],
                        "content": {_problem_media_type(): {"schema": _ref("schemas", "Problem")}},
                    }
                    for status in (400, 401, 404, 413, 503)
                },
            }
        },
        "/carriers/{carrier}/push": {
            "post": {
                "operationId": "receiveCarrierPush",
                "tags": ["intake"],
                "summary": "A carrier's tracking push",
                "description": (
                    'The carrier\'s own push (docs/carriers.md, "Tracking"), checked by its '
                    "adapter: a signature, or for SF the carrier's signed route query. 200 "
                    "with the body the carrier expects means the statuses are on the carrier "
                    "updates topic for `oms track run`; a push that does not verify is "
                    "dead-lettered and answered 401; 404: the carrier is not configured; 503: "
                    "it could not be confirmed now (the carrier pushes again)."
                ),
                "parameters": _path_parameters(
                    "/carriers/{carrier}/push", {"carrier": {"type": "string"}}
                ),
                "requestBody": {
                    "required": True,
                    "content": {_JSON: {"schema": {"type": "object"}}},
                },
                "responses": {
                    "200": _json_body({"type": "object"}, "taken: the carrier's own answer"),
                }
                | {
                    str(status): {
                        "description": _ERROR_RESPONSES[status][1],
                        "content": {_problem_media_type(): {"schema": _ref("schemas", "Problem")}},
                    }
                    for status in (401, 404, 413, 503)
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "tags": ["intake"],
                "summary": "The API process answers",
                "responses": {
                    "200": _json_body(
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"const": "ok"}},
                        },
                        "up",
                    )
                },
            }
        },
        "/phone": {
            "get": {
                "operationId": "phoneForm",
                "tags": ["intake"],
                "summary": "The form staff type phone orders into (posts to /webhooks/phone)",
                "responses": {"200": _html("the form")},
            }
        },
    }


# ------------------------------------------------------------------ operators' commands


def _command(command: HttpCommand) -> Json:
    body = command.body
    summary = (body.__doc__ or body.__name__).strip().splitlines()[0]
    return {
        "post": {
            "operationId": command.body.__name__[0].lower() + command.body.__name__[1:],
            "tags": ["commands"],
            "summary": summary,
            "description": (
                "202 once Kafka has the command; the agent that owns the aggregate judges it "
                "(what its state does not allow is dead-lettered with the reason). A command "
                "wrong on its face is answered 400 naming the field, a body over "
                f"{MAX_COMMAND_BYTES:,} bytes 413, both after the body is on the dead-letter "
                "topic."
            ),
            "parameters": _path_parameters(command.path, PATH_VARIABLES),
            "requestBody": {
                "required": True,
                "content": {_JSON: {"schema": _ref("schemas", body.__name__)}},
            },
            "responses": {
                "202": _json_body(_ref("schemas", "Accepted"), "Kafka has the command"),
            }
            | _errors(400, 413, 503),
        }
    }


# ------------------------------------------------------------------ returns


def _return_command(path: str, body: type, summary: str) -> Json:
    return {
        "operationId": body.__name__[0].lower() + body.__name__[1:],
        "tags": ["returns"],
        "summary": summary,
        "description": (
            '202 once Kafka has the return\'s commands (docs/carriers.md, "Returns"); a '
            "step the return's state does not allow, or a body wrong on its face, is answered "
            "400 naming the field after the body is dead-lettered."
        ),
        "parameters": _path_parameters(path, PATH_VARIABLES),
        "requestBody": {
            "required": True,
            "content": {_JSON: {"schema": _ref("schemas", body.__name__)}},
        },
        "responses": {
            "202": _json_body(_ref("schemas", "ReturnCommands"), "Kafka has the commands"),
        }
        | _errors(400, 413, 415, 503),
    }


def _returns() -> Json:
    listed = {
        "tags": ["returns"],
        "responses": {"200": _json_body(_ref("schemas", "Returns"), "the returns")}
        | _errors(400, 503),
    }
    paths: Json = {
        "/orders/{order_id}/returns": {
            "post": _return_command(
                "/orders/{order_id}/returns", returns.ReturnRequestBody, "Request a return"
            ),
            "get": {
                "operationId": "orderReturns",
                "summary": "An order's returns",
                "parameters": _path_parameters("/orders/{order_id}/returns", PATH_VARIABLES),
                **listed,
            },
        },
        "/returns": {
            "get": {
                "operationId": "returns",
                "summary": "Returns, of one order with ?order_id=",
                "parameters": [_query("order_id", {"type": "string"}, "only this order's returns")],
                **listed,
            }
        },
    }
    for step, body in returns.RETURN_STEPS.items():
        path = f"/returns/{{order_id}}/{{return_id}}/{step}"
        paths[path] = {"post": _return_command(path, body, f"A return: {step}")}
    return paths


# ------------------------------------------------------------------ the read API


def _order_statuses() -> list[str]:
    return [status.value for status in OrderStatus]


def _orders_parameters() -> list[Json]:
    described = {
        # An empty filter is no filter, as an HTML form sends it.
        "status": _query(
            "status", {"enum": [*_order_statuses(), ""]}, "orders in this status (empty: any)"
        ),
        "channel": _query("channel", {"type": "string"}, "orders from this sales channel"),
        "store": _query("store", {"type": "string"}, "orders fulfilled at this location"),
        "page": _query(
            "page", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "1 is the newest"
        ),
        "page_size": _query(
            "page_size",
            {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
            f"orders per page ({DEFAULT_PAGE_SIZE} when not given)",
        ),
    }
    return [described[name] for name in ORDERS_PARAMETERS]


def report_parameter_schema(name: str, ch_type: str) -> Json:
    """A report parameter's JSON schema, from its ClickHouse type."""
    bounds = integer_range(ch_type)
    if bounds is not None:
        return {"type": "integer", "minimum": bounds[0], "maximum": bounds[1]}
    if ch_type == "DateTime":
        return {
            "type": "string",
            "description": (
                f"a date or time, YYYY-MM-DD[ HH:MM:SS] (UTC) or ISO 8601 with an offset, "
                f"from {EARLIEST:%Y-%m-%d %H:%M:%S} to {LATEST:%Y-%m-%d %H:%M:%S} UTC"
            ),
            "examples": ["2026-11-01", "2026-11-25 11:32:00", "2026-11-25T11:32:00+08:00"],
        }
    if name == "tz":
        return {"type": "string", "description": "an IANA time zone", "examples": ["UTC"]}
    if ch_type.startswith("Float"):
        return {"type": "number"}
    return {"type": "string"}


def _report(report: Report) -> Json:
    return {
        "get": {
            "operationId": f"report_{report.name}",
            "tags": ["reports"],
            "summary": report.title,
            "description": report.description + f" (projections/sql/{report.sql_file})",
            "parameters": [
                _query(
                    name,
                    report_parameter_schema(name, ch_type),
                    f"{ch_type}" + ("" if name in report.defaults else "; required"),
                    required=name not in report.defaults,
                )
                for name, ch_type in report.parameters.items()
            ],
            "responses": {
                "200": _json_body(_ref("schemas", "ReportResult"), "the report's columns and rows")
            }
            | _errors(400, 503),
        }
    }


def _read_api() -> dict[str, Json]:
    page = _html("the live dashboard (docs/dashboard.md)")
    paths: dict[str, Json] = {
        "/orders": {
            "get": {
                "operationId": "listOrders",
                "tags": ["read"],
                "summary": "Orders, newest first, a page at a time",
                "parameters": _orders_parameters(),
                "responses": {"200": _json_body(_ref("schemas", "OrdersPage"), "one page")}
                | _errors(400, 503),
            }
        },
        "/orders/{order_id}": {
            "get": {
                "operationId": "getOrder",
                "tags": ["read"],
                "summary": "An order's current state and its events in sequence",
                "description": "By order id or the channel's external id.",
                "parameters": _path_parameters("/orders/{order_id}"),
                "responses": {"200": _json_body(_ref("schemas", "Order"), "the order")}
                | _errors(404, 503),
            }
        },
        "/events": {
            "get": {
                "operationId": "followEvents",
                "tags": ["read"],
                "summary": "The order log or the stock ledger as JSON pages, from a cursor",
                "description": (
                    "For systems without a Kafka consumer (oms/feed.py). Keep `next` and ask "
                    "with it as `after`; events come in log order per partition, so an order's "
                    "in their sequence. Personal fields are empty; a caller held to stores or "
                    "channels sees only theirs. `caught_up`: nothing more after `next` when it "
                    "was read; `gap`: events after the old cursor were gone (retention)."
                ),
                "parameters": [
                    _query("log", {"enum": sorted(feed.LOGS)}, "which log (orders when not given)"),
                    _query(
                        "after",
                        {"type": "string"},
                        "a `next` this feed gave, or `end`; not given: from the beginning",
                    ),
                    {
                        **_query(
                            "types",
                            {"type": "array", "items": {"enum": list(feed.EVENT_TYPES)}},
                            "only these event types, comma-separated",
                        ),
                        "style": "form",
                        "explode": False,
                    },
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": feed.MAX_LIMIT},
                        f"events per page ({feed.DEFAULT_LIMIT} when not given)",
                    ),
                    _query(
                        "wait",
                        {"type": "integer", "minimum": 0, "maximum": feed.MAX_WAIT_S},
                        "seconds to hold an empty answer open for an event to come",
                    ),
                ],
                "responses": {"200": _json_body(_ref("schemas", "EventsPage"), "one page")}
                | _errors(400, 503),
            }
        },
        "/subscriptions": {
            "get": {
                "operationId": "listSubscriptions",
                "tags": ["read"],
                "summary": "Outbound webhook subscriptions and how far behind each one is",
                "description": (
                    "`oms subscriptions add` makes them; `lag` counts the order log's events "
                    "past the subscription's progress. Only the scheme and host of a URL."
                ),
                "responses": {
                    "200": _json_body(
                        {
                            "type": "object",
                            "required": ["subscriptions"],
                            "properties": {
                                "subscriptions": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": [
                                            "id",
                                            "host",
                                            "event_types",
                                            "enabled",
                                            "disabled_reason",
                                            "lag",
                                        ],
                                        "properties": {
                                            "id": {"type": "string"},
                                            "host": {"type": "string"},
                                            "event_types": {
                                                "type": "array",
                                                "items": {"type": "string"},
                                            },
                                            "enabled": {"type": "boolean"},
                                            "disabled_reason": {"type": ["string", "null"]},
                                            "lag": {"type": "integer", "minimum": 0},
                                        },
                                    },
                                }
                            },
                        },
                        "every subscription",
                    )
                }
                | _errors(503),
            }
        },
        "/reports": {
            "get": {
                "operationId": "listReports",
                "tags": ["reports"],
                "summary": "The reports and their parameters",
                "responses": {
                    "200": _json_body(
                        {
                            "type": "object",
                            "required": ["reports"],
                            "properties": {
                                "reports": {
                                    "type": "array",
                                    "items": _ref("schemas", "ReportEntry"),
                                }
                            },
                        },
                        "every report",
                    )
                },
            }
        },
    }
    paths |= {f"/reports/{report.name}": _report(report) for report in REPORTS.values()}
    paths |= {
        "/reports/{name}": {
            "get": {
                "operationId": "unknownReport",
                "tags": ["reports"],
                "summary": "Any other name: there is no such report",
                "parameters": _path_parameters(
                    "/reports/{name}",
                    {"name": {"type": "string", "minLength": 1, "not": {"enum": list(REPORTS)}}},
                ),
                "responses": _errors(404),
            }
        },
        "/dashboard": {"get": _page("dashboard", page)},
        "/dashboard/": {"get": _page("dashboardSlash", page)},
        "/dashboard/static/{filename}": {
            "get": {
                "operationId": "dashboardAsset",
                "tags": ["read"],
                "summary": "The dashboard's scripts and styles",
                "parameters": _path_parameters(
                    "/dashboard/static/{filename}",
                    {"filename": {"enum": sorted(DASHBOARD_ASSETS)}},
                ),
                "responses": {
                    "200": {
                        "description": "the file",
                        "content": {
                            kind: {"schema": {"type": "string"}}
                            for kind in sorted(set(DASHBOARD_ASSETS.values()))
                        },
                    }
                }
                | _errors(404),
            }
        },
        "/stores/{location}/kitchen": {
            "get": {
                "operationId": "kitchenScreen",
                "tags": ["read"],
                "summary": "A store's kitchen screen: its open tickets, with bump buttons",
                "parameters": _path_parameters("/stores/{location}/kitchen"),
                "responses": {"200": _html("the kitchen screen (docs/dashboard.md, Kitchen)")},
            }
        },
        "/stores/{location}/tickets": {
            "get": {
                "operationId": "kitchenTickets",
                "tags": ["read"],
                "summary": "A store's open tickets, the one due first on top",
                "parameters": _path_parameters("/stores/{location}/tickets"),
                "responses": {
                    "200": _json_body(
                        {
                            "type": "object",
                            "required": ["store", "tickets"],
                            "properties": {
                                "store": {"type": "string"},
                                "tickets": {"type": "array", "items": {"type": "object"}},
                            },
                        },
                        "the tickets",
                    )
                }
                | _errors(400, 503),
            }
        },
        "/kitchen/static/{filename}": {
            "get": {
                "operationId": "kitchenAsset",
                "tags": ["read"],
                "summary": "The kitchen screen's script and style",
                "parameters": _path_parameters(
                    "/kitchen/static/{filename}", {"filename": {"enum": sorted(KITCHEN_ASSETS)}}
                ),
                "responses": {
                    "200": {
                        "description": "the file",
                        "content": {
                            kind: {"schema": {"type": "string"}}
                            for kind in sorted(set(KITCHEN_ASSETS.values()))
                        },
                    }
                }
                | _errors(404),
            }
        },
    }
    return paths


def _page(operation_id: str, page: Json) -> Json:
    return {
        "operationId": operation_id,
        "tags": ["read"],
        "summary": "The dashboard",
        "responses": {"200": page},
    }


# ------------------------------------------------------------------ the document


def _problem_media_type() -> str:
    return problem(400, "").content_type


def _components() -> Json:
    problem_type = _problem_media_type()
    string = {"type": "string"}
    schemas: dict[str, Json] = {
        "Problem": {
            "type": "object",
            "description": "Every error: `error` says what went wrong (infra/http.py).",
            "required": ["error"],
            "properties": {
                "error": string,
                "field": {"type": ["string", "null"], "description": "the body's field"},
                "parameter": {"type": "string", "description": "the query parameter"},
                "dead_letter_id": {"type": "string", "description": "where the input went"},
                "hint": string,
            },
        },
        "Received": {
            "type": "object",
            "required": ["order_id", "event_id", "event_type"],
            "properties": {"order_id": string, "event_id": string, "event_type": string},
        },
        "Accepted": {
            "type": "object",
            "required": ["event_id", "event_type"],
            "properties": {"event_id": string, "event_type": string},
        },
        "EventsPage": {
            "type": "object",
            "required": ["log", "events", "next", "caught_up", "gap"],
            "properties": {
                "log": {"enum": sorted(feed.LOGS)},
                "events": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["partition", "offset", "type", "event"],
                        "properties": {
                            "partition": {"type": "integer", "minimum": 0},
                            "offset": {"type": "integer", "minimum": 0},
                            "type": string,
                            "event": {"type": "object"},
                        },
                    },
                },
                "next": string,
                "caught_up": {"type": "boolean"},
                "gap": {"type": "boolean"},
            },
        },
        "OrdersPage": {
            "type": "object",
            "required": ["orders", "page", "page_size", "filters", "has_more", "next"],
            "properties": {
                "orders": {"type": "array", "items": {"type": "object"}},
                "page": {"type": "integer", "minimum": 1},
                "page_size": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
                "filters": {"type": "object", "additionalProperties": string},
                "has_more": {"type": "boolean"},
                "next": {"type": ["string", "null"]},
            },
        },
        "Order": {
            "type": "object",
            "required": ["order", "history"],
            "properties": {
                "order": {
                    "type": "object",
                    "required": ["order_id", "status"],
                    "properties": {"order_id": string, "status": {"enum": _order_statuses()}},
                },
                "history": {"type": "array", "items": {"type": "object"}},
            },
        },
        "ReportEntry": {
            "type": "object",
            "required": ["name", "title", "description", "parameters", "href"],
            "properties": {
                "name": {"enum": list(REPORTS)},
                "title": string,
                "description": string,
                "parameters": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "type", "required"],
                        "properties": {
                            "name": string,
                            "type": string,
                            "required": {"type": "boolean"},
                        },
                    },
                },
                "href": string,
            },
        },
        "ReportResult": {
            "type": "object",
            "required": ["report", "title", "parameters", "columns", "rows"],
            "properties": {
                "report": {"enum": list(REPORTS)},
                "title": string,
                "parameters": {"type": "object", "additionalProperties": string},
                "columns": {"type": "array", "items": string},
                "rows": {"type": "array", "items": {"type": "array"}},
            },
        },
    }
    for command in COMMANDS:
        schemas[command.body.__name__] = command.body.model_json_schema()
    bodies: list[type[CommandBody]] = [returns.ReturnRequestBody, *returns.RETURN_STEPS.values()]
    for body in bodies:
        schemas[body.__name__] = body.model_json_schema()
    schemas["Returns"] = {
        "type": "object",
        "required": ["returns"],
        "properties": {"returns": {"type": "array", "items": {"type": "object"}}},
    }
    schemas["ReturnCommands"] = {
        "type": "object",
        "required": ["events"],
        "properties": {
            "events": {"type": "array", "items": _ref("schemas", "Accepted")},
        },
    }
    responses = {
        name: {
            "description": description,
            "content": {problem_type: {"schema": _ref("schemas", "Problem")}},
        }
        for name, description in _ERROR_RESPONSES.values()
    }
    return {"schemas": schemas, "responses": responses}


def document() -> Json:
    """The whole document, built from the code as it is now."""
    paths = _webhooks()
    for command in COMMANDS:
        paths[command.path] = _command(command)
    paths |= _read_api()
    paths |= _returns()
    paths["/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "tags": ["read"],
            "summary": "This document",
            "responses": {"200": _json_body({"type": "object"}, "OpenAPI 3.1")},
        }
    }
    paths |= _access_paths()
    paths |= _tracking_page()
    paths |= _health()
    _secure(paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "OrderStream (oms api)",
            "version": version("orderstream"),
            "description": (
                "Channel webhooks, operators' commands, the read API and the dashboard. "
                "Every error answers a JSON body whose `error` says why (Problem); bad input "
                "is a 4xx, never a 5xx, and what was posted is on the dead-letter topic. A "
                "path no route serves is answered 404, a method it does not take 405, in the "
                "same form. Where no status is listed for a case, the case cannot happen."
            ),
        },
        "paths": paths,
        "components": _components() | {"securitySchemes": _SECURITY_SCHEMES},
    }


# ------------------------------------------------------------------ health (oms/health.py)

_STATUS = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"enum": ["ok", "unavailable"]},
        "reason": {"type": "string", "description": "what the process waits for"},
    },
}
_LAG_ROW = {
    "type": "object",
    "required": ["consumer", "topic", "lag", "partitions"],
    "properties": {
        "consumer": {"enum": ["worker", "projector"]},
        "topic": {"type": "string"},
        "lag": {"type": "integer", "minimum": 0},
        "partitions": {
            "type": "object",
            "additionalProperties": {"type": "integer", "minimum": 0},
            "description": "partition number -> messages behind",
        },
    },
}


def _health() -> dict[str, Json]:
    per_minute = {"type": "array", "items": {"type": "integer", "minimum": 0}}
    return {
        "/livez": {
            "get": {
                "operationId": "live",
                "tags": ["health"],
                "summary": "The API's event loop answers (liveness)",
                "responses": {"200": _json_body(_STATUS, "alive")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "ready",
                "tags": ["health"],
                "summary": "The API can take orders: Kafka answers it (readiness)",
                "responses": {
                    "200": _json_body(_STATUS, "ready"),
                    "503": _json_body(_STATUS, "not ready: `reason` says why"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["health"],
                "summary": "The process's metrics, in Prometheus's text format",
                "description": 'docs/operations.md, "Metrics and health", names them.',
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/pipeline": {
            "get": {
                "operationId": "pipelineStatus",
                "tags": ["read"],
                "summary": "Consumers' lag and messages per minute: the dashboard's Operations",
                "description": (
                    "Lag per consumer (the worker's group, the projector's ledger in "
                    "ClickHouse) and topic; messages per minute over the last hour on intake, "
                    "the order log and the dead letters, from Kafka's offsets."
                ),
                "responses": {
                    "200": _json_body(
                        {
                            "type": "object",
                            "required": ["as_of", "lag", "minutes", "per_minute"],
                            "properties": {
                                "as_of": {"type": "string"},
                                "lag": {"type": "array", "items": _LAG_ROW},
                                "minutes": {"type": "array", "items": {"type": "string"}},
                                "per_minute": {
                                    "type": "object",
                                    "required": ["intake", "orders", "dead_letters"],
                                    "properties": {
                                        "intake": per_minute,
                                        "orders": per_minute,
                                        "dead_letters": per_minute,
                                    },
                                },
                            },
                        },
                        "as Kafka and ClickHouse have it now",
                    )
                }
                | _errors(400, 503),
            }
        },
    }


# ------------------------------------------------------------------ access (oms/access.py)

_SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key (`oms keys create`) or an OIDC access token (JWT)",
    },
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": "oms_session",
        "description": "a browser session (POST /login); unsafe requests also need "
        "X-CSRF-Token (GET /me) or a form post from this site",
    },
}


def _access_paths() -> dict[str, Json]:
    form = {
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["user", "password"],
                    "properties": {
                        "user": {"type": "string"},
                        "password": {"type": "string"},
                        "next": {"type": "string"},
                    },
                }
            }
        }
    }
    return {
        "/login": {
            "get": {
                "operationId": "loginPage",
                "tags": ["access"],
                "summary": "The sign-in page",
                "responses": {"200": _html("the form")},
            },
            "post": {
                "operationId": "login",
                "tags": ["access"],
                "summary": "Sign in: a session cookie, and on to `next`",
                "requestBody": form,
                "responses": {
                    "303": {"description": "signed in"},
                    # The form again for a browser (Accept: text/html), a Problem for a script.
                    "401": {
                        "description": "refused",
                        "content": _html("")["content"]
                        | {_problem_media_type(): {"schema": _ref("schemas", "Problem")}},
                    },
                },
            },
        },
        "/logout": {
            "post": {
                "operationId": "logout",
                "tags": ["access"],
                "summary": "Sign out",
                "responses": {"303": {"description": "to the sign-in page"}},
            }
        },
        "/me": {
            "get": {
                "operationId": "me",
                "tags": ["access"],
                "summary": "The caller: id, role, scope (and a session's CSRF token)",
                "responses": {"200": _json_body({"type": "object"}, "the caller")},
            }
        },
        "/customers/{customer}/export": {
            "get": {
                "operationId": "exportCustomer",
                "tags": ["privacy"],
                "summary": "Everything held about a customer (an access request), unsealed",
                "parameters": _path_parameters("/customers/{customer}/export"),
                "responses": {"200": _json_body({"type": "object"}, "the customer's data")}
                | _errors(404),
            }
        },
    }


def _tracking_page() -> dict[str, Json]:
    status = {
        "type": "object",
        "required": ["status", "text", "at", "place"],
        "properties": {
            "status": {"type": "string", "description": "normalised: picked_up, delivered, ..."},
            "text": {"type": "string", "description": "the status in words"},
            "at": {"type": "string", "format": "date-time"},
            "place": {"type": ["string", "null"]},
        },
    }
    shipment = {
        "type": "object",
        "required": [
            "carrier",
            "tracking_number",
            "shipped_at",
            "promised_by",
            "recipient",
            "statuses",
        ],
        "properties": {
            "carrier": {"type": "string"},
            "tracking_number": {"type": "string"},
            "shipped_at": {"type": "string", "format": "date-time"},
            "promised_by": {"type": ["string", "null"], "format": "date-time"},
            "recipient": {
                "type": "object",
                "required": ["first_name", "city"],
                "properties": {
                    "first_name": {"type": "string", "description": "masked: 王*"},
                    "city": {"type": "string"},
                },
            },
            "statuses": {"type": "array", "items": status},
        },
    }
    return {
        "/track/{token}": {
            "get": {
                "operationId": "trackingPage",
                "tags": ["read"],
                "summary": "A customer's parcel: the page a shipping label's QR code opens",
                "description": (
                    "The token is `{order_id}.{mac}` (oms/tracking_page.py). The carrier, the "
                    "tracking number, the promised delivery and each status in time order; of "
                    "the customer only the masked first name and the city. HTML, or JSON with "
                    "`Accept: application/json`. Any token that shows nothing is the same 404."
                ),
                "parameters": _path_parameters("/track/{token}"),
                "responses": {
                    "200": {
                        "description": "the parcel",
                        "content": {_HTML: {"schema": {"type": "string"}}}
                        | {_JSON: {"schema": shipment}},
                    },
                    "404": {
                        "description": "no such tracking page (whatever was wrong)",
                        "content": {_HTML: {"schema": {"type": "string"}}}
                        | {_problem_media_type(): {"schema": _ref("schemas", "Problem")}},
                    },
                }
                | _errors(503),
            }
        }
    }


def _rule(method: str, path: str) -> Rule | None:
    """The rule of a documented path: its own, or that of the route template it is one of
    (each report is documented at its own path, served by `/reports/{name}`)."""
    if (method, path) in POLICY:
        return POLICY[(method, path)]
    for (rule_method, template), rule in POLICY.items():
        pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template))
        if rule_method == method and re.fullmatch(pattern, path):
            return rule
    return None


def _secure(paths: dict[str, Json]) -> None:
    """Each operation's security and the answers access adds, from its rule in POLICY."""
    for path, operations in paths.items():
        for method, operation in operations.items():
            rule = _rule(method.upper(), path)
            if rule is None:
                raise RuntimeError(f"{method.upper()} {path} has no access rule")
            added = [429]
            if rule.kind == "roles":
                operation["security"] = [{"bearer": []}, {"session": []}]
                added += [401, 403]
            elif method != "get":
                added.append(403)  # cross-site
            if path in {c.path for c in COMMANDS}:
                added.append(415)
            for status in added:
                operation["responses"].setdefault(
                    str(status), _ref("responses", _ERROR_RESPONSES[status][0])
                )
            if rule.kind == "public":
                operation["security"] = []


OPENAPI = web.AppKey("openapi", bytes)


async def get_openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type=_JSON)


def add_routes(app: web.Application) -> None:
    """`GET /openapi.json`, the document as it was when the app was made."""
    app[OPENAPI] = json.dumps(document(), ensure_ascii=False).encode()
    app.router.add_get("/openapi.json", get_openapi)
