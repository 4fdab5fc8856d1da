"""Schemathesis against `oms api` (issue 16): every operation of its OpenAPI document
(oms/openapi.py) is sent inputs that fit the document and inputs that do not, on the real broker
and a ClickHouse holding a small projected scenario. No input may be answered 5xx; every answer's
status, media type, headers and body are ones the document gives for that operation; input the
document refuses is refused, and for the commands and the orders any input it allows is taken;
every error says why.

`make test` runs a few examples per operation from a fixed seed (plus schemathesis's explicit
examples and boundary cases), `make fuzz` many from a new seed each run (tests/fuzzing.py). The
app runs on a local port in a thread of its own: aiohttp is neither ASGI nor WSGI, and
schemathesis calls it with blocking requests.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from infra.http import problem
from infra.settings import Settings
from oms.api import create_app
from oms.openapi import document
from projections import read_api
from tests.conftest import ADMIN
from tests.fuzzing import examples, fuzz_settings
from tests.projections.conftest import projected_on, publish_scenario

pytestmark = [pytest.mark.integration, pytest.mark.fuzz]

EXAMPLES = examples() // 8
"""Per operation: an HTTP round trip costs about a hundred in-process examples, so an eighth of
what the other fuzz tests run: 25 in `make test` (38 operations, about 30 s on two shared
cores), 2,500 in `make fuzz`."""

SCHEMA = schemathesis.openapi.from_dict(
    document(),
    config=schemathesis.Config.from_dict(
        {
            "generation": {"mode": "all"},
            "operations": [
                # A report's own name is a request for that report (OpenAPI matches a concrete
                # path before a templated one), not input the catch-all should refuse.
                {"include-operation-id": "unknownReport", "generation": {"mode": "positive"}},
            ],
        }
    ),
)


# An HTML answer says why as the phone form does, or in a paragraph of class "error" (the
# customer's tracking page).
_FORM_MESSAGE = re.compile(r'✘ Not accepted[^:]*: (.*?)</p>|<p class="error">(.*?)</p>', re.S)


def problem_says_why(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every error (4xx, 5xx) says what went wrong: a Problem whose `error` is not blank, or an
    HTML page saying why (the phone form, why the order was not accepted; the tracking page)."""
    if response.status_code < 400:
        return None
    media_type = (response.headers.get("content-type") or [""])[0].split(";")[0]
    if media_type == "text/html":
        said = _FORM_MESSAGE.search(response.text)
        reason = (said.group(1) or said.group(2)) if said else ""
    else:
        try:
            body = response.json()
        except ValueError:  # not JSON at all
            body = None
        reason = body.get("error") if isinstance(body, dict) else None
    assert isinstance(reason, str) and reason.strip(), (
        f"a {response.status_code} that does not say why: {response.text[:300]!r}"
    )
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    problem_says_why,
]


EXACT = ("commands", "listOrders", "getOrder")
"""Operations whose document says all that they refuse, so that any input it allows is taken
(tags or operation ids). Not a channel's payload (the connector's to judge), nor a report's
times and time zones (strings that ClickHouse judges)."""


def answer(case: Case, base_url: str) -> None:
    """Send the case and check its answer against the document (FailureGroup when it fails)."""
    operation = case.operation.definition.raw
    exact = {*operation.get("tags", ()), operation.get("operationId")} & set(EXACT)
    checks = CHECKS + [positive_data_acceptance] if exact else CHECKS
    case.call_and_validate(base_url=base_url, headers=ADMIN, checks=checks)


@contextmanager
def serving(app: web.Application) -> Iterator[str]:
    """`app` on a free local port, served by an event loop in a thread of its own; its URL."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    host, port = runner.addresses[0][:2]
    thread = threading.Thread(target=loop.run_forever, name="oms-api", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.run_until_complete(runner.cleanup())
        loop.close()


@pytest.fixture(scope="module")
def read_side(stack_settings: Settings, chdb_path: Path) -> Iterator[Settings]:
    """Topics of this module, and a scenario projected into a ClickHouse database of its own
    (the stack's backend), so that the read API answers real orders and reports."""
    settings, _ = publish_scenario(stack_settings, orders=40, stock_events=40, seed=16)
    backend = "server" if settings.resolved_clickhouse_url.startswith("clickhouse:") else "chdb"
    for projected, _store in projected_on(settings, backend, chdb_path):
        # Hundreds of requests a second from one address and one key: not what is under test.
        yield projected.model_copy(update={"rate_per_ip": 1e6, "rate_per_principal": 1e6})


@pytest.fixture(scope="module")
def api(read_side: Settings) -> Iterator[str]:
    with serving(create_app(read_side)) as base_url:
        yield base_url


@SCHEMA.parametrize()
@fuzz_settings(max_examples=EXAMPLES)
def test_every_answer_is_one_the_document_gives_and_none_is_a_server_error(
    case: Case, api: str
) -> None:
    answer(case, api)


# ------------------------------------------------------------------ the checks can fail


def _raises(_: web.Request) -> web.Response:
    raise RuntimeError("a bug")


BREAKAGES: dict[str, tuple[str, Callable[[web.Request], Any], str]] = {
    # name: (the route's handler in projections.read_api, what it is replaced with, the failure)
    "a handler that raises": ("get_reports", _raises, "ST101"),
    "an undocumented status": ("get_reports", lambda _: problem(418, "teapot"), "ST103"),
    "an undocumented media type": ("get_reports", lambda _: web.Response(text="{}"), "ST105"),
    "a body off its schema": ("get_reports", lambda _: web.json_response({"reports": 1}), "ST108"),
    "an error that does not say why": ("get_orders", lambda _: problem(400, " "), "ST901"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_route_fails_the_fuzz_test(
    breakage: str, read_side: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, replacement, code = BREAKAGES[breakage]

    async def broken(request: web.Request) -> web.Response:
        return replacement(request)

    monkeypatch.setattr(read_api, handler, broken)
    path = {"get_reports": "/reports", "get_orders": "/orders"}[handler]
    operation = SCHEMA[path]["GET"]
    cases = st.one_of([operation.as_strategy(generation_mode=mode) for mode in GenerationMode])
    with serving(create_app(read_side)) as base_url:

        @fuzz_settings(max_examples=EXAMPLES)
        @given(case=cases)
        def fuzz(case: Case) -> None:
            answer(case, base_url)

        with pytest.raises(FailureGroup) as caught:
            fuzz()
    assert code in {failure.code for failure in caught.value.exceptions}
