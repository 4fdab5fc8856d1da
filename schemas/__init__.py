"""Avro schemas: the published event contract."""
