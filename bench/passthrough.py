"""A pass-through Faust agent: the floor under `oms bench pipeline`.

It reads raw bytes from one topic and writes them to another the way the OMS agents do —
batches from `take_events`, outputs through the same `Sink`, the batch acked after Kafka's
acks — but decodes and decides nothing.
Run as `python -m bench.passthrough SOURCE SINK GROUP BOOTSTRAP DATADIR`.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import AsyncIterator
from typing import Any, cast

import faust

from streams.worker.app import BATCH, BATCH_WITHIN_S
from streams.worker.sink import Sink


def create_app(source: str, sink: str, group: str, bootstrap: str, datadir: str) -> faust.App:
    app = faust.App(
        group,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=datadir,  # Faust's default is "<group>-data" in the working directory
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger=0.002,
        web_enabled=False,
        topic_replication_factor=1,
    )
    inbound = app.topic(source, key_type=bytes, value_type=bytes)
    out = Sink(bootstrap)

    @app.agent(inbound, name="passthrough")
    async def forward(stream: faust.StreamT[Any]) -> AsyncIterator[int]:
        async for batch in cast(Any, stream).take_events(BATCH, within=BATCH_WITHIN_S):
            for event in batch:
                out.produce(
                    sink, key=event.key, value=event.value, partition=event.message.partition
                )
            await out.confirmed()
            yield len(batch)

    return app


if __name__ == "__main__":
    source, sink, group, bootstrap, datadir = sys.argv[1:6]
    passthrough = create_app(source, sink, group, bootstrap, datadir)
    gc.freeze()  # as the worker does once it is built: the floor pays the same collector
    sys.argv = ["passthrough", "worker", "--loglevel", "warn"]
    passthrough.main()
