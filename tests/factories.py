"""Test data: a typical `OrderReceived`, and hypothesis strategies for any contract model."""

from __future__ import annotations

import types
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from typing import Annotated, Any, Union, get_args, get_origin

from hypothesis import strategies as st
from pydantic import AwareDatetime, BaseModel

from events.models import Actor, ActorKind, Address, Customer, OrderLine, OrderMode, OrderReceived

T0 = datetime(2026, 11, 25, 4, 30, 15, 123456, tzinfo=UTC)


def received(**overrides: object) -> OrderReceived:
    fields: dict[str, object] = dict(
        event_id="e-1", order_id="o-1", sequence=1, occurred_at=T0, recorded_at=T0,
        correlation_id="o-1", actor=Actor(kind=ActorKind.CHANNEL, id="webshop"),
        channel="webshop", external_id="1001", mode=OrderMode.DELIVERY, currency="CNY",
        lines=[OrderLine(sku="DUMPLING-12", name="水饺", quantity=2, unit_price=2800)],
        delivery_fee=500, total=6100, payment_status="paid",
        customer=Customer(name="王伟", phone="+8613800000000"),
        address=Address(text="88 Nanjing Rd", latitude=31.2, longitude=121.4), placed_at=T0,
    )  # fmt: skip
    fields.update(overrides)
    return OrderReceived.model_validate(fields)


def numbered(n: int, *, minutes: float = 0, **overrides: object) -> OrderReceived:
    """Order number `n`, placed `minutes` after T0; otherwise like `received()` (same phone,
    same address, no device), for tests about a customer's history."""
    fields: dict[str, object] = {
        "event_id": f"e-{n}", "order_id": f"o-{n}", "placed_at": T0 + timedelta(minutes=minutes),
    }  # fmt: skip
    fields.update(overrides)
    return received(**fields)


_TIMES = st.integers(-(10**12), 10**12).map(lambda us: T0 + timedelta(microseconds=us))
_SIMPLE: dict[Any, st.SearchStrategy[Any]] = {
    str: st.text(max_size=12),
    int: st.integers(-(2**63), 2**63 - 1),
    float: st.floats(allow_nan=False, allow_infinity=False),
    bool: st.booleans(),
    bytes: st.binary(max_size=32),
    date: st.dates(min_value=date(1970, 1, 1)),
    datetime: _TIMES,
    AwareDatetime: _TIMES,
}


def _bounded(field: Any) -> st.SearchStrategy[Any] | None:
    """An integer field's values within the bounds the contract gives it (covers: 1 to 10,000),
    None for a field without bounds."""
    low = next((m.ge for m in field.metadata if getattr(m, "ge", None) is not None), None)
    high = next((m.le for m in field.metadata if getattr(m, "le", None) is not None), None)
    if low is None and high is None:
        return None
    values = st.integers(low, high)
    return st.none() | values if field.default is None else values


def strategy_for(annotation: Any) -> st.SearchStrategy[Any]:
    """Values of any type the contract uses; models are built field by field."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return strategy_for(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        (member,) = [a for a in get_args(annotation) if a is not type(None)]
        return st.none() | strategy_for(member)
    if origin is list:
        return st.lists(strategy_for(get_args(annotation)[0]), max_size=3)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return st.sampled_from(list(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        model = annotation
        fields = {}
        for name, info in model.model_fields.items():
            bounded = _bounded(info)
            fields[name] = strategy_for(info.annotation) if bounded is None else bounded
        if "sequence" in fields:
            fields["sequence"] = st.integers(1, 10**6)
        return st.fixed_dictionaries(fields).map(model.model_validate)
    return _SIMPLE[annotation]
