"""The event contract: envelope, event models, Avro codec with Confluent framing."""
