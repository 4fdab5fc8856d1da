"""A downstream consumer with nothing but the published .avsc files, fastavro and a Kafka client.

Run as a script (no OrderStream code): reads every message on the given topics, decodes it with
the schema its Confluent wire header names, and prints a JSON summary.
"""

import io
import json
import struct
import sys
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from fastavro import parse_schema, schemaless_reader


def main(bootstrap: str, schemas: str, topics: list[str]) -> None:
    directory = Path(schemas)
    registry = json.loads((directory / "registry.json").read_text())["schemas"]
    by_id = {
        int(schema_id): parse_schema(json.loads((directory / entry["file"]).read_text()))
        for schema_id, entry in registry.items()
    }
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "plain-consumer"})
    decoded, failures = [], []
    for topic in topics:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, partition, low)])
            while True:
                message = consumer.poll(10)
                if message is None:
                    failures.append(f"{topic}/{partition}: timed out")
                    break
                value = message.value()
                magic, schema_id = struct.unpack_from(">bI", value)
                try:
                    record = schemaless_reader(io.BytesIO(value[5:]), by_id[schema_id], None)
                    decoded.append(
                        {
                            "topic": topic,
                            "type": record.get("event_type", "DeadLetter"),
                            "id": record["event_id"]
                            if "event_id" in record
                            else record["dead_letter_id"],
                        }
                    )
                except Exception as exc:  # report, do not stop
                    failures.append(f"{topic}/{partition}/{message.offset()}: {exc!r}")
                if message.offset() + 1 >= high:
                    break
    consumer.close()
    ours = sorted(
        {m.split(".")[0] for m in sys.modules}
        & {"events", "oms", "streams", "projections", "connectors"}
    )
    print(json.dumps({"decoded": decoded, "failures": failures, "project_modules": ours}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
