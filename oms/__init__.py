"""Composition root of OrderStream: the `oms` CLI, the local stack, the API's assembly and
the demo."""
