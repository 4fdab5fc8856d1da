"""What every side of OrderStream shares and nothing decides: settings, the one Kafka client
configuration, the publisher, reading a partition back (replay), HTTP problem responses and
exit codes. It sits on the contract (`events/`) and under `connectors/`, `streams/` and
`projections/` (docs/architecture.md, "Floors")."""
