"""Avro encode + decode of a 5-line order event on one core, next to fastavro and JSON.

Target (docs/architecture.md, "Performance targets"): >= 100,000 encode+decode per second per core.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from events.codec import AvroCodec
from events.models import (
    Actor,
    ActorKind,
    Address,
    Customer,
    OrderLine,
    OrderMode,
    OrderReceived,
    PaymentStatus,
)

TARGET_PER_S = 100_000
ORDER_ID = "5c2b05c0-44d4-5a8e-8916-9bf944b7e361"


def five_line_order() -> OrderReceived:
    now = datetime(2026, 11, 25, 11, 30, 5, 123456, tzinfo=UTC)
    lines = [
        OrderLine(
            sku=f"DISH-{i:03d}",
            name=name,
            quantity=i + 1,
            unit_price=price,
            options=["少辣"] if i % 2 else [],
        )
        for i, (name, price) in enumerate(
            [
                ("红烧牛肉面", 3250),
                ("猪肉白菜水饺 12只", 2800),
                ("宫保鸡丁饭", 2600),
                ("酸辣汤", 1550),
                ("冻顶乌龙茶", 1200),
            ]
        )
    ]
    return OrderReceived(
        event_id="0b4c3f14-4ff9-56bb-a562-a4c4c669568f",
        order_id=ORDER_ID,
        sequence=1,
        occurred_at=now,
        recorded_at=now,
        correlation_id=ORDER_ID,
        actor=Actor(kind=ActorKind.CHANNEL, id="meituan"),
        channel="meituan",
        external_id="27061900123456789",
        mode=OrderMode.DELIVERY,
        currency="CNY",
        lines=lines,
        delivery_fee=500,
        packaging_fee=200,
        discount=300,
        total=sum(line.quantity * line.unit_price for line in lines) + 400,
        payment_status=PaymentStatus.PAID,
        customer=Customer(id="u-1881", name="王伟", phone="+86 13812345678"),
        address=Address(
            text="上海市黄浦区南京东路88号 1203室",
            city="上海",
            latitude=31.2397,
            longitude=121.4998,
        ),
        notes="不要香菜",
        placed_at=now,
    )


def rate(operation: Callable[[], Any], *, seconds: float) -> float:
    """Calls per second of `operation`, run for about `seconds` on this (one) core."""
    calls = 0
    batch = 1000
    started = time.perf_counter()
    while True:
        for _ in range(batch):
            operation()
        calls += batch
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return calls / elapsed


def run(*, seconds: float = 3.0) -> dict[str, Any]:
    codec = AvroCodec()
    event = five_line_order()
    data = codec.encode(event)
    registered = codec.schema_ids.latest("OrderReceived")
    record = event.model_dump() | {"event_type": "OrderReceived", "schema_version": 1}
    body = data[5:]

    def round_trip() -> None:
        codec.decode(codec.encode(event))

    def fastavro_round_trip() -> None:
        out = io.BytesIO()
        schemaless_writer(out, registered.parsed, record)
        out.seek(0)
        schemaless_reader(out, registered.parsed, None)

    def json_round_trip() -> None:
        OrderReceived.model_validate_json(event.model_dump_json())

    figures = {
        "encode_decode_per_s": rate(round_trip, seconds=seconds),
        "encode_per_s": rate(lambda: codec.encode(event), seconds=seconds / 2),
        "decode_per_s": rate(lambda: codec.decode(data), seconds=seconds / 2),
        "fastavro_dict_encode_decode_per_s": rate(fastavro_round_trip, seconds=seconds / 2),
        "pydantic_json_encode_decode_per_s": rate(json_round_trip, seconds=seconds / 2),
        "avro_bytes": len(data),
        "avro_body_bytes": len(body),
        "json_bytes": len(event.model_dump_json().encode()),
        "target_encode_decode_per_s": TARGET_PER_S,
        "native": codec.native,
    }
    figures["meets_target"] = figures["encode_decode_per_s"] >= TARGET_PER_S
    return figures


def report(figures: dict[str, Any]) -> list[str]:
    verdict = "meets" if figures["meets_target"] else "BELOW"
    rows = [
        ("encode+decode (OrderReceived, 5 lines)", "encode_decode_per_s"),
        ("  encode only", "encode_per_s"),
        ("  decode only", "decode_per_s"),
        ("fastavro on a dict (no models)", "fastavro_dict_encode_decode_per_s"),
        ("pydantic JSON (for comparison)", "pydantic_json_encode_decode_per_s"),
    ]
    lines = [f"{label:<40} {figures[key]:>10,.0f} /s" for label, key in rows]
    lines[0] += f"  {verdict} target {TARGET_PER_S:,} /s (native codec: {figures['native']})"
    ratio = figures["json_bytes"] / figures["avro_bytes"]
    lines.append(
        f"size: Avro {figures['avro_bytes']} bytes (incl. 5-byte header) vs JSON "
        f"{figures['json_bytes']} bytes ({ratio:.1f}x)"
    )
    return lines
