"""Composition root of OrderStream: settings, the `oms` CLI, the local stack and the demo."""
