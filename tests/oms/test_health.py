"""`oms api`'s own health and metrics (oms/health.py): /livez answers while the loop does,
/readyz says whether Kafka answers the API, /metrics needs an analyst's or admin's key and
counts requests per route template, and every request's log lines carry its ids."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import oms.api
from infra.settings import Settings
from infra.structured_logs import JsonFormatter
from oms import health
from oms.access import LogAudit
from tests.conftest import ADMIN
from tests.connectors.conftest import FakePublisher
from tests.infra.scrape import parse, value


async def client_of(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> TestClient[Any, Any]:
    monkeypatch.setattr(oms.api, "AsyncPublisher", FakePublisher)
    client = TestClient(TestServer(oms.api.create_app(settings, audit=LogAudit())))
    await client.start_server()
    return client


@pytest.fixture
async def client(
    stack_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[TestClient[Any, Any]]:
    test_client = await client_of(stack_settings, monkeypatch)
    yield test_client
    await test_client.close()


@pytest.mark.integration
async def test_the_api_is_ready_when_kafka_answers_it_and_not_when_it_does_not(
    client: TestClient[Any, Any], stack_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ready = await client.get("/readyz")
    assert (ready.status, await ready.json()) == (200, {"status": "ok"})
    nowhere = stack_settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    cut_off = await client_of(nowhere, monkeypatch)
    try:
        live, ready = await cut_off.get("/livez"), await cut_off.get("/readyz")
        assert (live.status, await live.json()) == (200, {"status": "ok"})
        body = await ready.json()
        assert ready.status == 503 and body["status"] == "unavailable"
        assert body["reason"].startswith("Kafka does not answer")
    finally:
        await cut_off.close()


async def test_metrics_need_an_analysts_key_and_count_requests_by_route_template(
    client: TestClient[Any, Any],
) -> None:
    before = parse(await (await client.get("/metrics", headers=ADMIN)).text())
    assert (await client.get("/metrics")).status == 401
    for _ in range(3):
        assert (await client.get("/livez")).status == 200
    for token in ("not-a-token", "another-one"):
        assert (await client.get(f"/track/{token}")).status == 404
    answer = await client.get("/metrics", headers=ADMIN)
    assert answer.status == 200 and answer.content_type == "text/plain"
    after = parse(await answer.text())

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("oms_http_requests_total", route="/livez", status="200") == 3
    assert moved("oms_http_requests_total", route="/track/{token}", status="404") == 2
    assert moved("oms_http_request_seconds_count", route="/track/{token}") == 2
    assert moved("oms_http_requests_total", route="/metrics", status="401") == 1
    labels = {v for (_, ls) in after for _, v in ls}
    assert "not-a-token" not in labels and "another-one" not in labels


async def test_each_answer_says_its_request_id_and_a_hostile_one_is_replaced(
    client: TestClient[Any, Any],
) -> None:
    given = await client.get("/livez", headers={"X-Request-Id": "abc-123"})
    assert given.headers["X-Request-Id"] == "abc-123"
    hostile = await client.get("/livez", headers={"X-Request-Id": "<script>" + "x" * 100})
    made = hostile.headers["X-Request-Id"]
    assert made != "abc-123" and len(made) == 32 and made.isalnum()


async def test_a_requests_log_lines_carry_its_request_id_and_the_order_in_its_path() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("api"))
    logger = logging.getLogger("tests.oms.health")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    async def cancel(request: web.Request) -> web.Response:
        logger.info("cancelling")
        return web.json_response({}, status=202)

    app = web.Application(middlewares=[health.request_context])
    app.router.add_post("/orders/{order_id}/cancel", cancel)
    try:
        async with TestClient(TestServer(app)) as test_client:
            answer = await test_client.post("/orders/o-7/cancel", headers={"X-Request-Id": "r-7"})
            assert answer.status == 202
    finally:
        logger.removeHandler(handler)
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert (line["message"], line["request_id"], line["order_id"], line["process"]) == (
        "cancelling", "r-7", "o-7", "api")  # fmt: skip
