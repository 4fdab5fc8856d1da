"""ClickHouse read models: one store interface (server or embedded chDB), DDL, projector, queries."""
