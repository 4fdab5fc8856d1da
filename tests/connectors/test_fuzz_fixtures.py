"""Hypothesis mutation of each connector's real-format fixtures (issue 16, "Fuzzing in CI").

Every fixture under tests/fixtures/<channel>/ is a payload as the platform sends it. An example
takes one, changes one to three of its values — a type swapped, a number made huge, negative or
not a number, a text made long or odd, a key deleted, a value nested deeply — including values
inside the JSON strings some channels embed (Meituan's `detail`, Ele.me's `message`), and
sometimes damages the bytes themselves. Whatever comes out, the connector either makes an event
the contract can carry or refuses the payload with `PayloadRejected`; through the HTTP app the
answer is never a 5xx, and a refused body is on the dead-letter topic.

`make test` runs a few examples per channel from a fixed seed, `make fuzz` many from a new seed
(tests/fuzzing.py).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from connectors import eleme, meituan
from connectors.base import Connector, PayloadRejected
from connectors.registry import available
from events.codec import AvroCodec
from tests.conftest import ADMIN, FIXTURES
from tests.connectors.conftest import FakePublisher, fake_publisher_app
from tests.fuzzing import fuzz_settings

pytestmark = pytest.mark.fuzz

RECEIVED_AT = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
CHANNELS = sorted(name for name in available() if (FIXTURES / name).is_dir())
CODEC = AvroCodec()
FEW_THROUGH_THE_APP = 100  # per channel in `make test`: an HTTP round trip each


@dataclass(frozen=True)
class Embedded:
    """A JSON document a channel sends as a string inside its payload (Meituan's `detail`)."""

    document: Any


@dataclass(frozen=True)
class Raw:
    """JSON text spliced into the payload as it is: what `json.dumps` would refuse to write
    (an integer of 5,000 digits, nesting 10,000 deep, a lone surrogate escape)."""

    text: str


@dataclass(frozen=True)
class Seed:
    name: str
    document: Any
    headers: dict[str, str]


def _expand(value: Any) -> Any:
    """`value` with every string that holds a JSON object or array made an `Embedded`."""
    if isinstance(value, dict):
        return {key: _expand(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand(item) for item in value]
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return Embedded(_expand(json.loads(value)))
        except ValueError:
            return value
    return value


def _seeds(channel: str) -> list[Seed]:
    found = []
    for path in sorted((FIXTURES / channel).glob("*.json")):
        if path.name.endswith(".headers.json"):
            continue
        headers_path = path.with_name(path.stem + ".headers.json")
        headers = json.loads(headers_path.read_text()) if headers_path.exists() else {}
        found.append(Seed(path.name, _expand(json.loads(path.read_bytes())), headers))
    return found


SEEDS = {channel: _seeds(channel) for channel in CHANNELS}


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a document a mutation can reach, the document itself first."""
    yield path
    if isinstance(value, Embedded):
        yield from _paths(value.document, (*path, Embedded))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*path, index))


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value.document if step is Embedded else value[step]
    return value


def _replace(value: Any, path: tuple[Any, ...], change: Callable[[Any], Any]) -> Any:
    """A copy of `value` with the value at `path` changed (`change` returns `_DELETE` to
    remove it from its object or array)."""
    if not path:
        return change(value)
    step, rest = path[0], path[1:]
    if step is Embedded:
        return Embedded(_replace(value.document, rest, change))
    if isinstance(value, dict):
        changed = _replace(value[step], rest, change)
        return {k: v for k, v in value.items() if k != step} | (
            {} if changed is _DELETE else {step: changed}
        )
    copy = list(value)
    changed = _replace(copy[step], rest, change)
    if changed is _DELETE:
        del copy[step]
    else:
        copy[step] = changed
    return copy


_DELETE = object()
_NUMBERS = [0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 3_000_000_000,
            -3_000_000_000, 10**18, 10**40, 1e308, -1e-308, 0.1, 3.3333333333333335,
            1e15 + 0.3, float("nan"), float("inf"), float("-inf")]  # fmt: skip
_NUMBER_TEXTS = ["1e999999", "-9e999999", "9E+999999", "1E+400", "-1e-999999", "Infinity",
                 "-Infinity", "NaN", "12.345", " 12.5 ", "-0", "+1", "00", "１２", "١٢", "²",
                 "¥12.00", "9" * 25, "0." + "0" * 60 + "1", "1_000", "0x1F", "1e3"]  # fmt: skip
_TIME_TEXTS = ["9999-12-31 23:59:59", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00",
               "0001-01-01 00:00:00", "1970-01-01 00:00:00", "2026-02-30 12:00", "24:00",
               "12:00", "99:99", "2026-11-25", "2026-11-25T12:00:00", "2106-02-07 14:28:16",
               "1969-12-31T23:59:59Z"]  # fmt: skip
_TEXTS = ["", " ", "null", "true", "[]", "{}", "[1", '{"a":', "\x00", "\u202e", "🍜🍜🍜",
          "a\nb", "\\", '"', "@@@@", "x2 @", "宫保鸡丁 x2 @26.00", "[A] x ×2 @1 (", ";;;",
          "ｘ２＠１"]  # fmt: skip
_RAW_JSON = [Raw("1" * 5000), Raw("-" + "9" * 4301), Raw("1" + "0" * 400), Raw("1e400"),
             Raw("-1e400"), Raw("0." + "0" * 5000 + "1"), Raw("1" * 60 + ".5"),
             Raw('"\\ud800"'), Raw('"\\udc00x"'), Raw("[" * 5000 + "]" * 5000),
             Raw('{"a":' * 300 + "1" + "}" * 300), Raw("[" * 40 + "1" + "]" * 40)]  # fmt: skip


def _hostile(original: Any) -> st.SearchStrategy[Any]:
    """Values a hostile or broken channel could put where `original` was: half of the time the
    same kind of value gone wrong (a number, a time, a text), else anything at all."""
    swaps: list[Any] = [None, True, False, [], {}, [original], {"value": original}]
    if isinstance(original, str):
        swaps += [original * 50, original + "\x00", original.upper(), original[::-1]]
    if isinstance(original, int | float) and not isinstance(original, bool):
        swaps += [str(original), -original, original * 10**20, f"{original}.000"]
    text = original if isinstance(original, str) else ""
    alike: list[Any]
    if isinstance(original, int | float) or _NUMBER.fullmatch(text):
        alike = [*_NUMBERS, *_NUMBER_TEXTS]
    elif _TIME.match(text):
        alike = _TIME_TEXTS
    else:
        alike = _TEXTS
    return st.sampled_from(alike + swaps) | st.one_of(
        st.sampled_from(_NUMBERS),
        st.sampled_from(_NUMBER_TEXTS),
        st.sampled_from(_TIME_TEXTS),
        st.sampled_from(_TEXTS),
        st.sampled_from(_RAW_JSON),
        st.integers() | st.floats(),
        st.text(max_size=30),
        st.text(min_size=500, max_size=3000, alphabet=st.characters(codec="utf-8")),
        st.builds(lambda n, c: c * n, st.integers(1000, 20000), st.sampled_from("x9;@[(宫")),
    )


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_TIME = re.compile(r"\d{4}-\d\d-\d\d|\d\d:\d\d")


def _is_leaf(document: Any, path: tuple[Any, ...]) -> bool:
    return not isinstance(_get(document, path), dict | list | Embedded)


@st.composite
def mutated(draw: st.DrawFn, channel: str) -> tuple[bytes, dict[str, str]]:
    """One of `channel`'s fixtures with one to three values changed, as bytes and headers."""
    seed = draw(st.sampled_from(SEEDS[channel]))
    document = seed.document
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(document))
        leaves = [path for path in paths if _is_leaf(document, path)]
        path = draw(st.sampled_from(leaves or paths) | st.sampled_from(paths))
        original = _get(document, path)
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "delete" and path and path[-1] is not Embedded:
            document = _replace(document, path, partial(_instead, _DELETE))
        elif action == "add" and isinstance(original, dict):
            key = draw(st.sampled_from([*original, "x", ""]) | st.text(max_size=8))
            extra = draw(_hostile(original.get(key)))
            document = _replace(document, path, partial(_with_key, key=key, value=extra))
        else:
            document = _replace(document, path, partial(_instead, draw(_hostile(original))))
    body = _serialise(document, ascii_only=draw(st.booleans())).encode("utf-8", "surrogatepass")
    damage = draw(st.sampled_from(["none"] * 17 + ["cut", "insert", "prefix"]))
    if damage == "cut":
        body = body[: draw(st.integers(0, len(body)))]
    elif damage == "insert":
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.binary(min_size=1, max_size=8)) + body[at:]
    elif damage == "prefix":
        body = draw(st.sampled_from([b"\xef\xbb\xbf", b"\xff", b" \n", b"[", b"\x00"])) + body
    return body, dict(seed.headers)


def _instead(new: Any, _: Any) -> Any:
    return new


def _with_key(document: dict[str, Any], *, key: str, value: Any) -> dict[str, Any]:
    return document | {key: value}


def _serialise(value: Any, *, ascii_only: bool) -> str:
    """`value` as JSON text: `Embedded` documents written as strings, `Raw` text spliced in."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Embedded):
        text = _serialise(value.document, ascii_only=ascii_only)
        return json.dumps(text, ensure_ascii=ascii_only)
    if isinstance(value, dict):
        members = (
            f"{json.dumps(key, ensure_ascii=ascii_only)}: {_serialise(item, ascii_only=ascii_only)}"
            for key, item in value.items()
        )
        return "{" + ", ".join(members) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_serialise(item, ascii_only=ascii_only) for item in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def parses_or_refuses(connector: Connector, body: bytes, headers: dict[str, str]) -> None:
    """The connector's whole contract with hostile input: an event the contract can carry,
    or `PayloadRejected`; anything else raised here is a bug in the connector."""
    try:
        event = connector.parse(body, received_at=RECEIVED_AT, headers=headers)
    except PayloadRejected as rejected:
        assert rejected.reason, "a refusal says why"
        return
    CODEC.encode(event)


@pytest.mark.parametrize("channel", CHANNELS)
def test_a_mutated_fixture_parses_or_is_refused_with_a_reason(channel: str) -> None:
    connector = available()[channel](secret=None)

    @fuzz_settings()
    @given(mutated(channel))
    def check(payload: tuple[bytes, dict[str, str]]) -> None:
        parses_or_refuses(connector, *payload)

    check()


# ---- signatures: hostile headers and fields are a mismatch, never an error

SECRETS = {
    "wechat": (FIXTURES / "wechat" / "test_platform_public_key.pem").read_text(),
    **{channel: f"{channel}-fuzz-secret" for channel in CHANNELS if channel != "wechat"},
}
_HEADER_VALUES = st.one_of(
    st.sampled_from(["", " ", "签名", "ä", "\udcff\udcfe", "=" * 3, "A" * 10_000, "\x00"]),
    st.text(max_size=40),
    st.binary(max_size=40).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
)


@st.composite
def hostile_headers(draw: st.DrawFn, headers: dict[str, str]) -> dict[str, str]:
    """`headers` with some values replaced by what a hostile client sends: non-ASCII text, or
    bytes that are not UTF-8 (aiohttp hands those over as surrogates)."""
    names = [*headers, "X-Shopify-Hmac-Sha256", "X-WC-Webhook-Signature",
             "x-square-hmacsha256-signature", "Wechatpay-Signature", "Wechatpay-Timestamp",
             "Wechatpay-Nonce"]  # fmt: skip
    changed = dict(headers)
    for name in draw(st.lists(st.sampled_from(names), max_size=4)):
        changed[name] = draw(_HEADER_VALUES)
    return changed


def _resigned(channel: str, connector: Connector, body: bytes) -> bytes | None:
    """`body` signed again as Meituan or Ele.me sign it (the signature is a field of the body),
    so that what follows the signature check is fuzzed too; None when it cannot be."""
    try:
        document = Connector.load_json(body)
    except PayloadRejected:
        return None
    if not isinstance(document, dict) or channel not in ("meituan", "eleme"):
        return None
    if isinstance(connector, meituan.MeituanConnector):
        url = connector.push_url
        document["sig"] = meituan.signature(document, secret=SECRETS[channel], url=url)
    else:
        document["signature"] = eleme.signature(document, secret=SECRETS[channel])
    return json.dumps(document, ensure_ascii=False).encode()


@pytest.mark.parametrize("channel", [c for c in CHANNELS if available()[c].signed])
def test_a_mutated_signed_payload_is_verified_or_refused_never_an_error(channel: str) -> None:
    connector = available()[channel](secret=SECRETS[channel])

    @fuzz_settings()
    @given(mutated(channel), st.data())
    def check(payload: tuple[bytes, dict[str, str]], data: st.DataObject) -> None:
        body, headers = payload
        headers = data.draw(hostile_headers(headers))
        if data.draw(st.booleans()):
            body = _resigned(channel, connector, body) or body
        try:
            connector.verify(headers, body)
        except PayloadRejected as rejected:
            assert rejected.reason
            return
        parses_or_refuses(connector, body, headers)

    check()


# ---- through the HTTP app


@pytest.fixture(scope="module")
def app_in_a_loop() -> Iterator[
    tuple[asyncio.AbstractEventLoop, TestClient[Any, Any], FakePublisher]
]:
    """One `oms api` app (fake publisher) for every example: a window wide enough for the
    fixtures' dates whenever the test runs (the window has tests of its own), and no limit on
    the requests from one address that the examples would reach."""
    loop = asyncio.new_event_loop()
    with fake_publisher_app(
        OMS_INTAKE_WINDOW='["P36500D", "P36500D"]', OMS_RATE_PER_IP="1000000"
    ) as (app, publisher):
        client: TestClient[Any, Any] = TestClient(TestServer(app), loop=loop, headers=ADMIN)
        loop.run_until_complete(client.start_server())
        try:
            yield loop, client, publisher
        finally:
            loop.run_until_complete(client.close())
            loop.close()


@pytest.mark.parametrize("channel", [c for c in CHANNELS if available()[c].delivery != "polled"])
def test_a_mutated_fixture_posted_to_the_app_is_never_a_server_error(
    channel: str,
    app_in_a_loop: tuple[asyncio.AbstractEventLoop, TestClient[Any, Any], FakePublisher],
) -> None:
    loop, client, publisher = app_in_a_loop

    async def post(body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        response = await client.post(f"/webhooks/{channel}", data=body, headers=headers)
        return response.status, await response.json()

    @fuzz_settings(default=FEW_THROUGH_THE_APP)
    @given(mutated(channel))
    def check(payload: tuple[bytes, dict[str, str]]) -> None:
        body, headers = payload
        letters = len(publisher.dead_letters)
        status, answer = loop.run_until_complete(
            post(body, headers | {"Content-Type": "application/json"})
        )
        assert status < 500, answer
        if status == 200:
            assert publisher.intake_events[-1].event_id == answer["event_id"]
        else:
            assert answer["error"]
            assert publisher.dead_letters[letters:], (status, answer)
            (letter,) = publisher.dead_letters[letters:]
            assert (letter.raw, letter.dead_letter_id) == (body, answer["dead_letter_id"])

    check()


def test_every_channel_of_the_package_has_real_format_fixtures_to_mutate() -> None:
    ours = sorted(n for n, cls in available().items() if cls.__module__.startswith("connectors."))
    assert ours == CHANNELS
    assert all(SEEDS[channel] for channel in CHANNELS)
