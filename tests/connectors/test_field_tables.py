"""docs/connectors.md keeps one field table per shipped channel ("Field by field, per
channel"): each says where every field of the contract comes from (or that the channel leaves
it unset), names only fields the contract has, and states its rounding rule, what is
encrypted and the source of the format."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from connectors.registry import registered
from events.models import Address, Customer, OrderLine, OrderReceived, PlatformCiphertext

DOC = Path(__file__).resolve().parents[2] / "docs" / "connectors.md"
SHIPPED = sorted(r.name for r in registered() if r.target.startswith("connectors."))
# Envelope fields the connector base fills in, and the nested models tabled field by field.
NOT_MAPPED = {
    "event_id", "sequence", "occurred_at", "recorded_at", "correlation_id", "causation_id",
    "actor", "order_id", "channel", "sealed", "customer", "address", "lines", "rounding",
}  # fmt: skip
MODELS = {
    "OrderReceived": OrderReceived,
    "OrderModified": OrderReceived,  # a revision carries the same fields (and `revision`)
    "OrderLine": OrderLine,
    "Customer": Customer,
    "Address": Address,
    "PlatformCiphertext": PlatformCiphertext,
}


def sections(text: str) -> dict[str, str]:
    body = text[text.index("## Field by field, per channel") :]
    body = body[: body.index("\n## ", 1)]
    return {part.split("`", 1)[0]: part for part in re.split(r"^### `", body, flags=re.M)[1:]}


def problems(section: str) -> list[str]:
    found = []
    if "| channel field | contract field | notes |" not in section:
        found.append("no table")
    for bullet in ("**Rounding:**", "**Encrypted:**", "**Source:**"):
        if f"- {bullet}" not in section:
            found.append(f"no {bullet} bullet")
    for model, field in re.findall(r"`(\w+)\.(\w+)`", section):
        if model in MODELS and field not in MODELS[model].model_fields and field != "revision":
            found.append(f"{model}.{field} is not in the contract")
    named = set(re.findall(r"OrderReceived\.(\w+)", section))
    if "PlatformCiphertext." in section:
        named.add("platform_ciphertext")
    for field in sorted(set(OrderReceived.model_fields) - NOT_MAPPED - named):
        found.append(f"OrderReceived.{field} is not tabled")
    lines = set(re.findall(r"OrderLine\.(\w+)", section))
    for field in sorted(set(OrderLine.model_fields) - lines):
        found.append(f"OrderLine.{field} is not tabled")
    return found


def test_every_shipped_channel_has_its_table() -> None:
    assert len(SHIPPED) >= 12
    assert sorted(sections(DOC.read_text())) == SHIPPED


@pytest.mark.parametrize("channel", SHIPPED)
def test_each_table_maps_every_contract_field_and_says_rounding_encryption_and_source(
    channel: str,
) -> None:
    assert problems(sections(DOC.read_text())[channel]) == []


def test_the_check_finds_a_missing_field_an_unknown_one_and_a_missing_bullet() -> None:
    section = sections(DOC.read_text())["webshop"]
    broken = re.sub(r"^.*`OrderReceived\.notes`.*\n", "", section, flags=re.M)
    broken = broken.replace("`Customer.email`", "`Customer.mail`").replace("**Source:**", "")
    assert problems(broken) == [
        "no **Source:** bullet",
        "Customer.mail is not in the contract",
        "OrderReceived.notes is not tabled",
    ]
