"""The connector SDK's shared pieces, as every connector uses them."""

from __future__ import annotations

import importlib
import inspect

import pytest
from pydantic import BaseModel

from connectors.base import ChannelPayload, Connector, PayloadRejected
from connectors.registry import available


class _Dish(ChannelPayload):
    name: str
    quantity: int


def test_a_channel_payload_ignores_fields_it_does_not_name() -> None:
    dish = Connector.validate(_Dish, {"name": "酸辣汤", "quantity": 1, "spicy": True})
    assert dish.model_dump() == {"name": "酸辣汤", "quantity": 1}


def test_a_channel_payload_rejects_a_named_field_naming_it() -> None:
    with pytest.raises(PayloadRejected) as rejected:
        Connector.validate(_Dish, {"name": "酸辣汤", "quantity": "one"})
    assert rejected.value.field == "quantity"


SHIPPED = sorted(
    cls.__module__ for cls in available().values() if cls.__module__.startswith("connectors.")
)


@pytest.mark.parametrize("module_name", SHIPPED)
def test_every_payload_model_of_a_shipped_connector_is_a_channel_payload(module_name: str) -> None:
    module = importlib.import_module(module_name)
    models = [
        model
        for model in vars(module).values()
        if inspect.isclass(model)
        and issubclass(model, BaseModel)
        and model.__module__ == module.__name__
    ]
    assert models, f"{module_name} has no payload model"
    assert [m.__name__ for m in models if not issubclass(m, ChannelPayload)] == []
