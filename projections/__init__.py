"""ClickHouse read models: one store (server or embedded chDB), DDL, projector, queries."""
