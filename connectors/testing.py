"""Conformance kit for connector authors: subclass, point it at your fixtures, run pytest.

    from connectors.testing import ConnectorConformance

    class TestMyChannel(ConnectorConformance):
        connector = MyChannelConnector()
        fixtures = Path(__file__).parent / "fixtures" / "mychannel"

Fixtures are raw payload files (`*.json`, one payload each; `*.headers.json` beside one holds
its HTTP headers). A fixture whose name contains `modified` must be a revision of another
fixture's order and parse to `OrderModified`. `bad_payloads` adds payloads that must be
rejected, as (bytes, field the rejection must name or None). `sample_orders` (with the
connector module's `sample_payload`, signed with `sample_secret`) are checked to parse back
to the order they describe, and their revision to an `OrderModified` of it.

The kit checks what `connectors.base` gives a connector to get right: payload models derived
from `ChannelPayload` (the SDK's lenient base) validated with `Connector.validate`, so that
every rejection names its field; amounts through `minor_units` (exact integer minor units,
refusing lost precision and amounts beyond 64 bits); and, in `sample_payload`, money written
back with `decimal_text` ("12.50") or `decimal_number` (28.0, for channels that send JSON
numbers), never through float. docs/connectors.md has the details.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import pytest

from connectors.base import ChannelEvent, Connector, PayloadRejected
from connectors.samples import SampleOrder
from events.models import MILLIONTHS, OrderModified, OrderReceived

RECEIVED_AT = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)


class ConnectorConformance:
    connector: ClassVar[Connector]
    fixtures: ClassVar[Path]
    min_fixtures: ClassVar[int] = 3
    bad_payloads: ClassVar[list[tuple[bytes, str | None]]] = []
    sample_orders: ClassVar[list[SampleOrder]] = []
    sample_secret: ClassVar[str | None] = None

    # ---- fixture access

    def payloads(self) -> list[tuple[str, bytes, dict[str, str]]]:
        found = []
        for path in sorted(self.fixtures.glob("*.json")):
            if path.name.endswith(".headers.json"):
                continue
            headers_path = path.with_name(path.stem + ".headers.json")
            headers = json.loads(headers_path.read_text()) if headers_path.exists() else {}
            found.append((path.name, path.read_bytes(), headers))
        return found

    def parse(
        self, raw: bytes, headers: dict[str, str], *, at: datetime = RECEIVED_AT
    ) -> ChannelEvent:
        return self.connector.parse(raw, received_at=at, headers=headers)

    # ---- the checks

    def test_has_enough_fixtures(self) -> None:
        originals = [name for name, _, _ in self.payloads() if "modified" not in name]
        assert len(originals) >= self.min_fixtures, (
            f"{self.connector.name}: {len(originals)} fixtures in {self.fixtures}, "
            f"need at least {self.min_fixtures}"
        )

    def test_every_fixture_parses(self) -> None:
        for name, raw, headers in self.payloads():
            event = self.parse(raw, headers)
            assert event.channel == self.connector.name, name
            assert event.external_id, f"{name}: no external id"
            assert isinstance(event, OrderModified) == ("modified" in name), (
                f"{name}: a fixture named *modified* must parse to OrderModified, others to "
                f"OrderReceived; got {event.event_type}"
            )

    def test_ids_are_deterministic(self) -> None:
        for name, raw, headers in self.payloads():
            first, again = self.parse(raw, headers), self.parse(raw, headers)
            assert (first.order_id, first.event_id) == (again.order_id, again.event_id), name
            assert first.order_id == self.connector.order_id(first.external_id), name

    def test_a_resend_is_idempotent(self) -> None:
        for name, raw, headers in self.payloads():
            first = self.parse(raw, headers)
            later = self.parse(raw, headers, at=RECEIVED_AT + timedelta(hours=3))
            assert first.model_dump(exclude={"recorded_at"}) == later.model_dump(
                exclude={"recorded_at"}
            ), f"{name}: a re-sent payload must make the identical event"

    def test_modifications_belong_to_their_order(self) -> None:
        events = [self.parse(raw, headers) for _, raw, headers in self.payloads()]
        originals = {e.order_id for e in events if isinstance(e, OrderReceived)}
        for event in events:
            if isinstance(event, OrderModified):
                assert event.order_id in originals, (
                    f"modification of {event.external_id} has no original among the fixtures"
                )
                assert event.revision > 0

    def test_totals_reconcile(self) -> None:
        for name, raw, headers in self.payloads():
            event = self.parse(raw, headers)
            lines = sum(line.amount for line in event.lines)
            expected = (
                lines
                + event.delivery_fee
                + event.packaging_fee
                + event.tax
                + event.tip
                - event.discount
            )
            assert expected + event.rounding == event.total, (
                f"{name}: lines {lines} + delivery {event.delivery_fee} + packaging "
                f"{event.packaging_fee} + tax {event.tax} + tip {event.tip} - discount "
                f"{event.discount} + rounding {event.rounding} = {expected + event.rounding}, "
                f"total {event.total}"
            )
            for n, line in enumerate(event.lines):
                if line.gross is not None:  # the unit price is the amount's, rounded
                    assert 2 * abs(line.gross - line.measure * line.unit_price) <= abs(
                        line.measure
                    ), f"{name}: line {n}: unit price {line.unit_price} is not {line.gross} ÷ qty"
                if line.quantity_millionths is not None:  # a measure, exact; quantity its ceiling
                    assert line.quantity_millionths > 0 and line.quantity == -(
                        -line.quantity_millionths // MILLIONTHS
                    ), f"{name}: line {n}: quantity {line.quantity} is not its measure rounded up"
                    assert line.quantity_millionths % MILLIONTHS, (
                        f"{name}: line {n}: a whole quantity travels in `quantity` alone"
                    )
                if line.total is not None:
                    added = 0 if line.prices_include_tax else line.tax
                    assert line.total == line.amount - line.discount + added, (
                        f"{name}: line {n}: total {line.total} is not amount {line.amount} - "
                        f"discount {line.discount}" + (f" + tax {line.tax}" if added else "")
                    )

    def test_times_are_utc_and_money_is_in_minor_units(self) -> None:
        for name, raw, headers in self.payloads():
            event = self.parse(raw, headers)
            assert event.occurred_at.utcoffset() == timedelta(0), name
            if isinstance(event, OrderReceived):
                assert event.placed_at.utcoffset() == timedelta(0), name
                assert len(event.currency) == 3 and event.currency.isupper(), name
            amounts = [
                event.total,
                event.delivery_fee,
                event.packaging_fee,
                event.discount,
                event.tax,
                event.tip,
            ]
            amounts += [line.unit_price for line in event.lines]
            amounts += [line.amount for line in event.lines]
            assert all(isinstance(a, int) and not isinstance(a, bool) for a in amounts), (
                f"{name}: amounts must be int minor units (connectors.base.minor_units)"
            )
            assert all(line.quantity > 0 for line in event.lines), name

    def test_bad_payloads_are_rejected_with_a_reason(self) -> None:
        name, raw, headers = self.payloads()[0]
        generic: list[tuple[bytes, str | None]] = [
            (b"", None),
            (b"this is not a payload", None),
            (b"[]", None),
            (raw[: len(raw) // 2], None),
        ]
        for bad, field in [*generic, *self.bad_payloads]:
            with pytest.raises(PayloadRejected) as rejected:
                self.parse(bad, headers)
            assert rejected.value.reason, f"rejection of {bad[:40]!r} has no reason"
            if field is not None:
                assert rejected.value.field == field, (
                    f"{bad[:60]!r}: rejection names {rejected.value.field!r}, expected {field!r}"
                )

    def test_real_payloads_mutated_are_accepted_or_refused_naming_the_field(self) -> None:
        """The robustness corpus: each fixture with one value changed the way real channels
        get them wrong — an optional field missing, null, an empty string, a number written
        "1,234.50" or "1.5E1", a very long text, emoji and mixed scripts — must come out as an
        event the contract can carry, or refused with a reason that names a field."""
        from events.codec import AvroCodec

        codec = AvroCodec()
        crashes: list[str] = []
        for name, raw, headers in self.payloads():
            try:
                document = json.loads(raw)
            except ValueError:
                continue  # (a form-encoded fixture: the fuzz tests cover it)
            for where, label, mutated in robustness_corpus(document):
                body = json.dumps(mutated, ensure_ascii=False).encode()
                try:
                    codec.encode(self.parse(body, headers))
                except PayloadRejected as rejected:
                    if not (rejected.reason and rejected.field):
                        crashes.append(f"{name} {where} {label}: refused without a field")
                except Exception as exc:  # noqa: BLE001 (the check is that nothing else escapes)
                    crashes.append(f"{name} {where} {label}: {type(exc).__name__}: {exc}"[:300])
        assert not crashes, f"{len(crashes)} mutations not handled:\n" + "\n".join(crashes[:20])

    def sample_payload(
        self, order: SampleOrder, *, revision: int = 0
    ) -> tuple[bytes, dict[str, str]]:
        module = sys.modules[type(self.connector).__module__]
        payload: tuple[bytes, dict[str, str]] = module.sample_payload(
            order, revision=revision, secret=self.sample_secret
        )
        return payload

    def test_sample_payloads_parse_back_to_their_order(self) -> None:
        for sample in self.sample_orders:
            raw, headers = self.sample_payload(sample)
            if self.sample_secret is not None and self.connector.signed:
                self.connector.verify(headers, raw)
            order = self.parse(raw, headers)
            assert isinstance(order, OrderReceived), sample.external_id
            assert (order.external_id, order.mode, order.notes) == (
                sample.external_id,
                sample.mode,
                sample.notes,
            )
            # Most platforms carry times to the second.
            assert order.placed_at.replace(microsecond=0) == sample.placed_at.replace(microsecond=0)
            assert [(x.sku, x.name, x.quantity, x.unit_price) for x in order.lines] == [
                (x.sku, x.name, x.quantity, x.unit_price) for x in sample.lines
            ]
            assert (
                order.delivery_fee,
                order.packaging_fee,
                order.discount,
                order.tax,
                order.total,
            ) == (
                sample.delivery_fee,
                sample.packaging_fee,
                sample.discount,
                sample.tax,
                sample.total,
            )
            assert (order.customer.name, order.customer.phone) == (
                sample.customer_name,
                sample.customer_phone,
            )
            assert (order.address.text if order.address else None) == sample.address_text
            revised = self.parse(*self.sample_payload(sample, revision=1))
            assert isinstance(revised, OrderModified) and revised.order_id == order.order_id

    def test_signatures_are_checked(self) -> None:
        if not self.connector.signed:
            return
        signed = [
            (name, raw, headers)
            for name, raw, headers in self.payloads()
            if (self.fixtures / name).with_name(Path(name).stem + ".headers.json").exists()
        ]
        assert signed, f"{self.connector.name} is signed: give a fixture a .headers.json"
        for _name, raw, headers in signed:
            self.connector.verify(headers, raw)
            with pytest.raises(PayloadRejected):
                self.connector.verify(headers, tampered(raw))


def tampered(raw: bytes) -> bytes:
    """The payload with one value changed: its last digit bumped (or a space appended)."""
    for index in range(len(raw) - 1, -1, -1):
        if 0x30 <= raw[index] <= 0x39:
            bumped = 0x30 + (raw[index] - 0x30 + 1) % 10
            return raw[:index] + bytes([bumped]) + raw[index + 1 :]
    return raw + b" "


LONG_TEXT = "宫保鸡丁 Kung Pao " * 700
"""About 12,000 characters: longer than any name or note a channel sends."""

MIXED_TEXT = "🍜 宫保鸡丁 Chicken ×2 — ضعف 🌶️ ｘ２ café"
_DELETE = object()


def _numeric(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and value.replace(".", "", 1).isdigit()


def robustness_corpus(document: object) -> Iterator[tuple[str, str, object]]:
    """`document` with one leaf value changed at a time, as (where, what, the document): every
    leaf missing, null and empty; a number (or a numeric string) as "1,234.50" and "1.5E1";
    a text very long and in emoji and mixed scripts. A JSON document a channel sends inside a
    string (Meituan's `detail`) is changed inside, and written back as a string."""
    for path, value in _leaves(document, ()):
        changes: list[tuple[str, object]] = [
            ("missing", _DELETE),
            ("null", None),
            ("empty", ""),
        ]
        if _numeric(value):
            changes += [("1,234.50", "1,234.50"), ("1.5E1", "1.5E1")]
        elif isinstance(value, str):
            changes += [("long text", LONG_TEXT), ("mixed scripts", MIXED_TEXT)]
        where = "/".join(str(step) for step in path)
        for label, new in changes:
            yield where, label, _changed(document, path, new)


def _leaves(value: object, path: tuple[object, ...]) -> Iterator[tuple[tuple[object, ...], object]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))
    elif isinstance(value, str) and value[:1] in "[{":
        try:
            inner = json.loads(value)
        except ValueError:
            yield path, value
        else:
            yield from _leaves(inner, (*path, _Embedded))
    else:
        yield path, value


class _Embedded:
    """A path step into a JSON document sent as a string."""


def _changed(value: object, path: tuple[object, ...], new: object) -> object:
    if not path:
        return new
    step, rest = path[0], path[1:]
    if step is _Embedded:
        assert isinstance(value, str)
        return json.dumps(_changed(json.loads(value), rest, new), ensure_ascii=False)
    if isinstance(value, dict):
        inner = _changed(value[step], rest, new)
        return {k: v for k, v in value.items() if k != step} | (
            {} if inner is _DELETE else {step: inner}
        )
    assert isinstance(value, list) and isinstance(step, int)
    inner = _changed(value[step], rest, new)
    copy = list(value)
    if inner is _DELETE:
        del copy[step]
    else:
        copy[step] = inner
    return copy
