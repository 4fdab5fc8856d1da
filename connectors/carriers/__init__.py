"""Carrier adapters (connectors/carriers/base.py is the SDK)."""
