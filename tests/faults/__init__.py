"""A Jepsen-style fault harness: mixed load and a seeded nemesis against a private stack, then
safety and liveness checks over the topics and ClickHouse (docs/faults.md)."""
