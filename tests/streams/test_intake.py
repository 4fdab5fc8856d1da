from __future__ import annotations

from datetime import UTC, datetime

from events.lifecycle import OrderStatus
from events.models import OrderLine, OrderModified, OrderRejected
from streams.intake import OrderRecord, decide
from tests.factories import T0, received

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def modified(revision: int, **overrides: object) -> OrderModified:
    order = received()
    fields: dict[str, object] = dict(
        event_id=f"m{revision}", order_id=order.order_id, sequence=revision + 1,
        occurred_at=T0, recorded_at=T0, correlation_id=order.order_id, actor=order.actor,
        channel=order.channel, external_id=order.external_id, revision=revision,
        lines=[OrderLine(sku="DUMPLING-12", name="水饺", quantity=3, unit_price=2800)],
        delivery_fee=500, total=8900,
    )  # fmt: skip
    fields.update(overrides)
    return OrderModified.model_validate(fields)


def taken(*events: object) -> tuple[OrderRecord | None, list[list[str]], list[str | None]]:
    record: OrderRecord | None = None
    written, refusals = [], []
    for event in events:
        decision = decide(record, event, now=NOW)  # type: ignore[arg-type]
        written.append([e.event_type for e in decision.to_log])
        refusals.append(decision.refusal)
        record = decision.record or record
    return record, written, refusals


def test_a_new_order_goes_to_the_log_with_its_verdict() -> None:
    record, written, _ = taken(received())
    assert written == [["OrderReceived", "OrderAccepted"]]
    assert record is not None and (record.version, record.status) == (2, OrderStatus.ACCEPTED)


def test_an_exact_redelivery_writes_nothing_and_is_not_refused() -> None:
    record, written, refusals = taken(received(), received())
    assert written[1] == [] and refusals[1] is None
    assert record is not None and record.version == 2


def test_a_revision_is_sequenced_after_the_order_and_the_merged_order_revalidated() -> None:
    first = decide(None, received(), now=NOW)
    decision = decide(first.record, modified(1), now=NOW)
    assert [(e.event_type, e.sequence) for e in decision.to_log] == [
        ("OrderModified", 3), ("OrderAccepted", 4)]  # fmt: skip
    assert decision.record is not None
    assert (decision.record.order.total, decision.record.revision) == (8900, 1)
    assert decision.record.order.customer.name == "王伟"  # kept from the original


def test_a_revision_moving_the_party_to_another_table_moves_the_order() -> None:
    first = decide(None, received(table="B07", covers=4), now=NOW)
    moved = decide(first.record, modified(1, table="C02", covers=6), now=NOW)
    assert moved.record is not None
    assert (moved.record.order.table, moved.record.order.covers) == ("C02", 6)
    kept = decide(moved.record, modified(2), now=NOW)  # a revision naming no table keeps it
    assert kept.record is not None
    assert (kept.record.order.table, kept.record.order.covers) == ("C02", 6)


def test_a_revision_that_does_not_add_up_is_rejected() -> None:
    first = decide(None, received(), now=NOW)
    decision = decide(first.record, modified(1, total=1), now=NOW)
    assert isinstance(decision.to_log[1], OrderRejected)
    assert decision.record is not None and decision.record.status is OrderStatus.REJECTED


def test_stale_orphan_late_and_renumbered_inputs_are_refused_with_a_reason() -> None:
    _, _, refusals = taken(received(), modified(2), modified(1))
    assert refusals[2] is not None and "not newer" in refusals[2]
    orphan = decide(None, modified(1), now=NOW)
    assert orphan.to_log == [] and "never received" in (orphan.refusal or "")
    first = decide(None, received(), now=NOW)
    assert first.record is not None
    preparing = first.record.model_copy(update={"status": OrderStatus.PREPARING})
    late = decide(preparing, modified(1), now=NOW)
    assert late.to_log == [] and "too late" in (late.refusal or "")
    again = decide(first.record, received(event_id="other"), now=NOW)
    assert again.to_log == [] and "already received" in (again.refusal or "")


def test_a_first_seen_revision_carrying_the_whole_order_is_taken_as_the_order() -> None:
    order = received()
    whole = modified(
        2, mode=order.mode, currency=order.currency, payment_status=order.payment_status,
        customer=order.customer, address=order.address, placed_at=order.placed_at,
    )  # fmt: skip
    first = decide(None, whole, now=NOW)
    assert [(e.event_type, e.sequence) for e in first.to_log] == [
        ("OrderReceived", 1), ("OrderAccepted", 2)]  # fmt: skip
    assert first.to_log[0].total == 8900  # type: ignore[attr-defined]
    assert first.record is not None and first.record.revision == 2
    # The connector's own OrderReceived for it, arriving late, is a redelivery of that id.
    late_original = received(event_id=first.to_log[0].event_id)
    again = decide(first.record, late_original, now=NOW)
    assert (again.to_log, again.refusal) == ([], None)


def test_connector_revisions_carry_the_whole_order() -> None:
    from connectors.square import SquareConnector
    from tests.conftest import FIXTURES

    revision = SquareConnector().parse(
        (FIXTURES / "square" / "pickup_order_modified.json").read_bytes(), received_at=NOW
    )
    assert isinstance(revision, OrderModified)
    first = decide(None, revision, now=NOW)
    assert [e.event_type for e in first.to_log][0] == "OrderReceived"
    assert first.to_log[0].event_id == SquareConnector().received_event_id(revision.external_id)
