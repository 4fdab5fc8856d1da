"""The OpenAPI document of `oms api` (oms/openapi.py) says what the app serves: every route the
app registers is documented and every documented path is routed, the document is valid
OpenAPI 3.1, and it is built from the code (commands, channels, reports) it describes."""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

import oms.api
from connectors.registry import available
from infra.settings import Settings
from oms.api import create_app
from oms.openapi import document
from oms.operations import COMMANDS, NOT_BLANK
from projections.reports import REPORTS
from tests.conftest import ADMIN
from tests.connectors.conftest import FakePublisher

DOCUMENT = document()


@pytest.fixture
async def client(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TestClient[Any, Any]]:
    # The document and the answers of the app itself: no broker (nor its key topic) needed.
    monkeypatch.setattr(oms.api, "AsyncPublisher", FakePublisher)
    async with TestClient(TestServer(create_app(Settings())), headers=ADMIN) as test_client:
        yield test_client


def served(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route the app registers; HEAD, which aiohttp adds to
    every GET, is implied by the GET."""
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource else {}
        routes.add((route.method, info.get("path") or info["formatter"]))
    return routes


def documented() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item}


def test_every_route_the_app_registers_is_in_the_document(
    client: TestClient[Any, Any],
) -> None:
    missing = served(client.app) - documented()
    assert not missing, f"routes the document does not describe: {sorted(missing)}"


async def test_every_documented_operation_is_routed_by_the_app(
    client: TestClient[Any, Any],
) -> None:
    unrouted = []
    for method, path in sorted(documented()):
        example = re.sub(r"\{\w+\}", "x", path)
        match = await client.app.router.resolve(make_mocked_request(method, example))
        if match.http_exception is not None:
            unrouted.append((method, path, match.http_exception.status))
    assert not unrouted, f"documented, but no route serves them: {unrouted}"


def test_the_document_is_valid_openapi_3_1() -> None:
    schema = schemathesis.openapi.from_dict(document())
    schema.validate()  # raises on a document the OpenAPI 3.1 meta-schema refuses
    assert DOCUMENT["openapi"] == "3.1.0"


def test_the_command_bodies_are_their_models_json_schemas() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    for command in COMMANDS:
        operation = DOCUMENT["paths"][command.path]["post"]
        reference = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert reference == f"#/components/schemas/{command.body.__name__}"
        assert schemas[command.body.__name__] == command.body.model_json_schema()
    review = schemas["ReviewCommand"]
    assert review["properties"]["decision"]["enum"] == ["approve", "reject"]
    assert review["required"] == ["decision"]
    assert review["additionalProperties"] is False


def test_a_name_is_blank_in_the_document_exactly_when_the_command_finds_it_blank() -> None:
    not_blank = re.compile(NOT_BLANK)
    disagree = [
        hex(point)
        for point in range(sys.maxunicode + 1)
        if (not_blank.search(chr(point)) is None) != (not chr(point).strip())
    ]
    assert not disagree


def test_the_channels_are_the_connector_registrys_and_each_report_has_its_path() -> None:
    webhook = DOCUMENT["paths"]["/webhooks/{channel}"]["post"]
    assert webhook["parameters"][0]["schema"]["enum"] == sorted(available())
    for report in REPORTS.values():
        parameters = DOCUMENT["paths"][f"/reports/{report.name}"]["get"]["parameters"]
        assert [p["name"] for p in parameters] == list(report.parameters)
        assert [p["required"] for p in parameters] == [
            name not in report.defaults for name in report.parameters
        ]
    stock_levels = DOCUMENT["paths"]["/reports/stock_levels"]["get"]["parameters"]
    limit = next(p for p in stock_levels if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}


async def test_the_api_serves_the_document(client: TestClient[Any, Any]) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200 and response.content_type == "application/json"
    assert await response.json() == DOCUMENT


async def test_a_path_no_route_serves_is_404_in_the_problem_form(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get("/no/such/thing")
    assert response.status == 404
    assert (await response.json())["error"] == "Not Found"
    wrong_method = await client.delete("/orders")
    assert wrong_method.status == 405 and "GET" in wrong_method.headers["Allow"]
    assert (await wrong_method.json())["error"] == "Method Not Allowed"


async def test_a_body_its_content_encoding_does_not_decode_is_400_in_the_problem_form(
    client: TestClient[Any, Any],
) -> None:
    response = await client.post(
        "/stock/MUG/WH-SH/set",
        data=b'{"counted": 3}',
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status == 400
    assert (await response.json())["error"] == (
        "the body cannot be read: Can not decode content-encoding: gzip"
    )
