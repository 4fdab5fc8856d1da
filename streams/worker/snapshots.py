"""Snapshots of the agents' partition states (and of the shared views), so a restart or a
rebalance replays only the tail of a log instead of all of it.

A snapshot is what a partition's state was once the log held exactly `offset` events, read
from Kafka (`oms.snapshots.v1`, compacted; partition p of it holds the snapshots of partition
p): loading it and folding the log from `offset` on gives the state a full replay gives
(tests/streams/worker/test_snapshots.py holds the two to each other on the real broker).

On the topic a snapshot is chunks then a manifest:
- chunk `NAME/P/ID/N`: a slice of the payload (Kafka takes at most `CHUNK` bytes a message);
- manifest `NAME/P`: JSON — id, chunks, offset, the code fingerprint, the nonce.
The payload is the state pickled with every event in it (an order's receipt, a pending
revision) replaced by its sealed Avro encoding (`PrivateCodec`): personal data stays under
its customer's data key, so forgetting a customer reaches snapshots as it reaches the logs.
The whole payload is then encrypted with AES-GCM under a key derived from the master key,
the manifest's fields as associated data: a payload nobody holding the master key wrote, or a
manifest moved onto another partition or offset, fails to open and is not unpickled.
A manifest whose fingerprint (`FINGERPRINT`, a hash of the code whose objects are pickled)
differs from this version's is ignored: after an upgrade the first rebuild is a full replay.
Anything missing or damaged is logged and the partition is rebuilt from the whole log — a
snapshot only ever saves time.

The writer tombstones the previous snapshot's chunks once the new manifest is confirmed, so
compaction keeps the topic at about one snapshot per partition and agent.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import mmap
import pickle
import secrets
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

import cramjam
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from events import models
from events.codec import AvroCodec
from events.models import Event
from infra.kafka import consumer_config, producer_config
from infra.keystore import MasterKey
from infra.settings import Settings
from streams import catalogue, customers, eta, inventory, orders, partitions
from streams.worker.spill import SpillFile, image_rows

log = logging.getLogger(__name__)

FORMAT = 9  # 5: zstd (was zlib); 6: order states without their fields' names; 7: image apart;
# 8: the spill file's rows carry when they were written (put_at, for eviction); 9: the
# manifest names the payload's size, and an order snapshot's image starts on a page boundary
CHUNK = 900_000  # bytes of payload per message, under Kafka's 1 MB default
SCAN_WINDOW = 64  # messages a read looks at first, from the end of the partition
SCAN_WINDOW_MAX = 256  # and at most at a time (a chunk is up to CHUNK bytes)
SCAN_PATIENCE_S = 120  # a read that gets nothing this long gives up (a full replay follows)
TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "retention.ms": "-1",
    # A superseded chunk's tombstone is kept a day for readers mid-scan, then goes.
    "delete.retention.ms": str(24 * 3600 * 1000),
    "min.cleanable.dirty.ratio": "0.1",
    # Compaction never touches the active segment: rolled hourly (or at 128 MiB), superseded
    # snapshots go within about an hour instead of once a gigabyte of them piled up.
    "segment.ms": str(3600 * 1000),
    "segment.bytes": str(128 * 2**20),
}


def _fingerprint(modules: Iterable[ModuleType]) -> str:
    digest = hashlib.sha256(f"format {FORMAT}".encode())
    for module in modules:
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()[:32]


# The code whose objects a snapshot pickles: any change to it, and snapshots start over.
FINGERPRINT = _fingerprint([models, orders, inventory, partitions, customers, catalogue, eta])


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, codec: AvroCodec) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._codec = codec

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Event):
            return self._codec.encode(obj)
        return None

    def reducer_override(self, obj: Any) -> Any:
        # An order's state as its fields' values, without their names: each spilled order is
        # a pickle of its own, so the names (~250 bytes) were written again in every row —
        # a sixth of the spill file, and of what a restart reads back and writes out.
        if type(obj) is orders.OrderState:
            return _order_state, (tuple([getattr(obj, name) for name in _ORDER_FIELDS]),)
        return NotImplemented


_ORDER_FIELDS = tuple(f.name for f in fields(orders.OrderState))
_HEAD = struct.Struct(">Q")  # an order snapshot's pickled part's length, before it


def _order_state(values: tuple[Any, ...]) -> orders.OrderState:
    state = object.__new__(orders.OrderState)
    state.__dict__.update(zip(_ORDER_FIELDS, values, strict=True))
    return state


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, codec: AvroCodec) -> None:
        super().__init__(file)
        self._codec = codec

    def persistent_load(self, pid: Any) -> Any:
        return self._codec.decode(pid)


class Sealer:
    """Pickles with every event sealed by the codec (personal data under its data key)."""

    def __init__(self, codec: AvroCodec) -> None:
        self.codec = codec

    def dumps(self, value: object) -> bytes:
        buffer = io.BytesIO()
        _Pickler(buffer, self.codec).dump(value)
        return buffer.getvalue()

    def loads(self, blob: bytes | memoryview) -> Any:
        return _Unpickler(io.BytesIO(blob), self.codec).load()


@dataclass(frozen=True)
class Found:
    """A snapshot read back: the state (still sealed: `Sealer.loads` opens it) and the log
    offset it covers (the log's events before it are in the state, none after)."""

    offset: int
    payload: bytes | memoryview
    snapshot_id: str


class SnapshotStore:
    """Reads and writes snapshots on the snapshot topic. Blocking: call from a thread."""

    def __init__(self, settings: Settings, *, master: MasterKey | None = None) -> None:
        self.topic = settings.topics.snapshots
        self.bootstrap = settings.kafka_bootstrap
        secret = (master or MasterKey.from_settings(settings)).secret
        self._aead = AESGCM(
            HKDF(hashes.SHA256(), 32, salt=None, info=b"orderstream snapshots").derive(secret)
        )
        self._producer: Any = None
        # What a scan found for other names (the other agent's snapshot of the partition is
        # on the same partition): kept for one use.
        self._stash: dict[tuple[str, int], tuple[float, Found | None]] = {}
        # Chunk keys to tombstone once a newer snapshot of the same name and partition is in.
        self._superseded: dict[tuple[str, int], set[bytes]] = {}
        self.scanned = 0  # messages the last read looked at
        self._buffers: Buffers | None = None  # while `reusing_buffers`

    @contextlib.contextmanager
    def reusing_buffers(self) -> Iterator[Buffers]:
        """While many partitions are restored (a restart, a rebalance): the memory a snapshot
        was opened into is reused for the next (`Buffers`), and unmapped at the end."""
        buffers = self._buffers = Buffers()
        try:
            yield buffers
        finally:
            self._buffers = None
            buffers.drop()

    def give_back(self, payload: bytes | memoryview) -> None:
        """A payload `read` returned is not used any more (its memory may be reused)."""
        if self._buffers is not None:
            self._buffers.give(payload)

    # ------------------------------------------------------------ writing

    def seal(
        self, name: str, partition: int, offset: int, payload: bytes
    ) -> tuple[dict[str, Any], list[bytes]]:
        """The manifest and the chunks that carry `payload` (compressed, then encrypted)."""
        snapshot_id = uuid.uuid4().hex[:16]
        nonce = secrets.token_bytes(12)
        manifest = {
            "format": FORMAT,
            "fingerprint": FINGERPRINT,
            "id": snapshot_id,
            "name": name,
            "partition": partition,
            "offset": offset,
            "nonce": nonce.hex(),
            "size": len(payload),
            "written_at": time.time(),
        }
        # Compressed first (pickles repeat their structure: about half the bytes), then sealed.
        # zstd at level 1: smaller than zlib's level 1 and ~4x quicker to open (a restart after
        # 1,000,000 orders spent ~12 s in zlib and AES-GCM; docs/benchmarks.md, "Recovery").
        packed = memoryview(cramjam.zstd.compress(payload, level=1))  # not copied again
        sealed = self._aead.encrypt(nonce, packed, _associated(manifest))
        chunks = [sealed[i : i + CHUNK] for i in range(0, len(sealed), CHUNK)] or [b""]
        manifest["chunks"] = len(chunks)
        return manifest, chunks

    def write(self, name: str, partition: int, offset: int, payload: bytes) -> int:
        """Write a snapshot (the payload already sealed and pickled); bytes written."""
        from confluent_kafka import Producer

        if self._producer is None:
            self._producer = Producer(producer_config(self.bootstrap, **{"linger.ms": 5}))
        manifest, chunks = self.seal(name, partition, offset, payload)
        snapshot_id = manifest["id"]
        errors: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        keys = [f"{name}/{partition}/{snapshot_id}/{n:06d}".encode() for n in range(len(chunks))]
        for key, chunk in zip(keys, chunks, strict=True):
            self._send(key, chunk, partition, delivered)
        self._send(
            f"{name}/{partition}".encode(), json.dumps(manifest).encode(), partition, delivered
        )
        self._flush(errors)
        old = self._superseded.pop((name, partition), set())
        for key in old:
            self._send(key, None, partition, delivered)
        self._flush(errors)
        self._superseded[(name, partition)] = set(keys)
        return sum(len(chunk) for chunk in chunks)

    def _send(self, key: bytes, value: bytes | None, partition: int, delivered: Any) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value, key, partition, on_delivery=delivered)
                return
            except BufferError:
                self._producer.poll(0.05)

    def _flush(self, errors: list[str]) -> None:
        # Polled rather than `flush`ed: librdkafka's flush waited a quarter second per call.
        waited = time.monotonic()
        while len(self._producer):
            self._producer.poll(0.01)
            if time.monotonic() - waited > 30:
                log.warning("a snapshot still waits for Kafka")
                waited = time.monotonic()
        if errors:
            raise RuntimeError(f"snapshot not written: {errors[:3]}")

    # ------------------------------------------------------------ reading

    def read(self, name: str, partition: int) -> Found | None:
        """The newest usable snapshot of `name` for `partition`, or None (rebuild from the
        start of the log)."""
        stashed = self._stash.pop((name, partition), None)
        if stashed is not None and time.monotonic() - stashed[0] < 60:
            return stashed[1]
        found = self._scan(partition, name)
        now = time.monotonic()
        for (other, p), value in found.items():
            if other != name:
                self._stash[(other, p)] = (now, value)
        return found.get((name, partition))

    def _scan(self, partition: int, name: str) -> dict[tuple[str, int], Found | None]:
        """Read the partition backwards, a window at a time (each 4× the last, up to
        `SCAN_WINDOW_MAX` messages), newest message first, until the newest manifest of `name`
        and every chunk it names are in hand: a restart reads about one snapshot, not every one
        since the segment was last compacted (Kafka never compacts the active segment: it read
        them all). A chunk comes before its manifest, so a chunk of no manifest already seen
        belongs to an older snapshot: it is not kept."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(
            consumer_config(
                self.bootstrap,
                group_id=f"snapshots-{uuid.uuid4().hex}",
                **{"fetch.max.bytes": 52428800, "queued.max.messages.kbytes": 262144},
            )
        )
        manifests: dict[str, dict[str, Any]] = {}
        chunks: dict[bytes, bytes] = {}
        decided: set[bytes] = set()  # keys a later message already settled (value or tombstone)
        old: set[bytes] = set()  # chunks of older snapshots, not yet tombstoned
        self.scanned = 0
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=30
            )
            end, window = high, SCAN_WINDOW
            while end > low:
                start = max(low, end - window)
                window = min(window * 4, SCAN_WINDOW_MAX)
                window_messages = _consume_range(consumer, self.topic, partition, start, end)
                self.scanned += len(window_messages)
                for key, value in reversed(window_messages):
                    if key in decided:
                        continue
                    decided.add(key)
                    if key.count(b"/") == 1:  # a manifest (never tombstoned)
                        if value:
                            manifests[key.decode(errors="replace")] = json.loads(value)
                    elif value is not None:
                        chunks[key] = value
                newest = {f"{m.get('name')}/{partition}/{m.get('id')}/" for m in manifests.values()}
                for key in [k for k in chunks if k.decode(errors="replace")[:-6] not in newest]:
                    old.add(key)
                    del chunks[key]
                end = start
                if _complete(manifests.get(f"{name}/{partition}"), chunks, partition):
                    break
        finally:
            consumer.close()
        found: dict[tuple[str, int], Found | None] = {}
        for manifest_key, manifest in manifests.items():
            other = manifest_key.split("/", 1)[0]
            if other != name and not _complete(manifest, chunks, partition):
                continue  # only part of it read: its own read scans further
            wanted = self._open(manifest, chunks, partition)
            found[(other, partition)] = wanted
            prefix = f"{other}/{partition}/".encode()
            current = f"{other}/{partition}/{manifest.get('id')}/".encode()
            self._superseded[(other, partition)] = {k for k in old if k.startswith(prefix)} | (
                set() if wanted is not None else {k for k in chunks if k.startswith(current)}
            )
        return found

    def _open(
        self, manifest: dict[str, Any], chunks: dict[bytes, bytes], partition: int
    ) -> Found | None:
        where = f"{self.topic}[{partition}] {manifest.get('name')}"
        if manifest.get("format") != FORMAT or manifest.get("fingerprint") != FINGERPRINT:
            log.info("%s: snapshot of another version; rebuilding from the log", where)
            return None
        if manifest.get("partition") != partition:
            log.warning(
                "%s: snapshot names partition %s; ignored", where, manifest.get("partition")
            )
            return None
        parts = []
        for n in range(int(manifest["chunks"])):
            chunk = chunks.get(f"{manifest['name']}/{partition}/{manifest['id']}/{n:06d}".encode())
            if chunk is None:
                log.warning("%s: snapshot %s lacks chunk %d; ignored", where, manifest["id"], n)
                return None
            parts.append(chunk)
        buffers = self._buffers
        take = fresh if buffers is None else buffers.take
        try:
            # Each step into memory of its own, reused across the partitions of a restart
            # (`Buffers`): at a million orders a restart opens ~3 GB of snapshots, and
            # faulting in fresh pages was a good part of it (docs/benchmarks.md, "Recovery").
            sealed = take(sum(len(part) for part in parts))
            at = 0
            for part in parts:
                sealed[at : at + len(part)] = part
                at += len(part)
            packed = take(max(len(sealed) - 16, 0))
            self._aead.decrypt_into(
                bytes.fromhex(manifest["nonce"]), sealed, _associated(manifest), packed
            )
            if buffers is not None:
                buffers.give(sealed)
            del sealed
            payload = take(int(manifest["size"]))
            if cramjam.zstd.decompress_into(packed, payload) != len(payload):
                raise ValueError("the payload is not the size its manifest names")
            if buffers is not None:
                buffers.give(packed)
            del packed
        except Exception:  # noqa: BLE001 - InvalidTag, a nonce not hex, a size that is wrong
            log.warning(
                "%s: snapshot %s does not open (damaged, or another key); ignored",
                where,
                manifest["id"],
            )
            return None
        return Found(offset=int(manifest["offset"]), payload=payload, snapshot_id=manifest["id"])

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(30)


def _complete(manifest: dict[str, Any] | None, chunks: dict[bytes, bytes], partition: int) -> bool:
    """Whether every chunk `manifest` names is in `chunks` (False for no manifest)."""
    if manifest is None:
        return False
    try:
        prefix = f"{manifest['name']}/{partition}/{manifest['id']}/"
        return all(f"{prefix}{n:06d}".encode() in chunks for n in range(int(manifest["chunks"])))
    except (KeyError, TypeError, ValueError):
        return True  # a manifest missing its fields: `_open` says so; reading on won't help


def _consume_range(
    consumer: Any, topic: str, partition: int, start: int, end: int
) -> list[tuple[bytes, bytes | None]]:
    """The (key, value) of the partition's messages at offsets [start, end), in order (a
    compacted log has gaps: it reads until an offset at or past end - 1 comes)."""
    from confluent_kafka import TopicPartition

    consumer.assign([TopicPartition(topic, partition, start)])
    read: list[tuple[bytes, bytes | None]] = []
    quiet_since = time.monotonic()
    while True:
        messages = consumer.consume(num_messages=1000, timeout=0.05)
        if messages:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > SCAN_PATIENCE_S:
            log.warning(
                "%s[%d]: no message in %d s; read as far as it got",
                topic,
                partition,
                SCAN_PATIENCE_S,
            )
            return read
        for message in messages:
            if message.error() is not None:
                continue
            offset = message.offset() or 0
            if offset < end:
                read.append((message.key() or b"", message.value()))
            if offset >= end - 1:
                return read


def _associated(manifest: dict[str, Any]) -> bytes:
    """What the payload is bound to: a manifest edited or moved no longer opens it."""
    fields = ("format", "fingerprint", "id", "name", "partition", "offset", "size")
    return json.dumps([manifest[f] for f in fields]).encode()


PAGE = 4096


def fresh(size: int) -> memoryview:
    """`size` bytes of zeroed, page-aligned memory of its own (an anonymous map), backed by
    transparent huge pages where the kernel gives them on request (`madvise`): a fault per
    2 MiB instead of per 4 KiB. Unmapped once the last view of it goes."""
    if size <= 0:
        return memoryview(bytearray())
    area = mmap.mmap(-1, size)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):  # not offered here: 4 KiB pages, as before
            area.madvise(mmap.MADV_HUGEPAGE)
    return memoryview(area)


class Buffers:
    """Memory for opening snapshots, reused from one partition to the next while a worker
    restores many (`SnapshotStore.reusing_buffers`). A restart after 1,000,000 orders opens
    ~3 GB (each partition's chunks joined, decrypted, decompressed), and every fresh 4 KiB page
    is faulted in and zeroed by the kernel on the CPU the folds share: ~0.1 s per 100 MB here,
    against nothing for a page touched before. An area goes back to the pool only when no view
    of it is left (an mmap with exported buffers cannot be resized, which is asked); one still
    seen is left to be unmapped when its last view goes."""

    def __init__(self) -> None:
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()
        self.reused = 0  # areas handed out again (for tests and the bench)

    def take(self, size: int) -> memoryview:
        with self._lock:
            fitting = [area for area in self._free if len(area) >= size]
            if fitting:
                area = min(fitting, key=len)
                self._free.remove(area)
                self.reused += 1
                return memoryview(area)[:size]
        return fresh(size)

    def give(self, view: bytes | memoryview) -> None:
        """`view` (from `take`) is not used any more: its area may be handed out again."""
        if not isinstance(view, memoryview) or not isinstance(view.obj, mmap.mmap):
            return
        area = view.obj
        try:
            view.release()
            area.resize(len(area))  # BufferError while any other view of it is alive
        except (BufferError, ValueError, OSError):
            return
        with self._lock:
            self._free.append(area)

    def drop(self) -> None:
        """Unmap the free areas (the restore is done)."""
        with self._lock:
            free, self._free = self._free, []
        for area in free:
            area.close()


class PartitionSnapshots:
    """One agent's snapshots: what to cut from a partition's state and how to put it back.
    `capture` runs on the event loop (copies, no encoding); the function it returns seals
    and pickles in a thread."""

    name = ""

    def __init__(self, store: SnapshotStore, codec: AvroCodec) -> None:
        self.store = store
        self.sealer = Sealer(codec)

    def load(self, state: Any, partition: int) -> int:
        """Restore the newest snapshot of `partition` into `state` (new and empty); the
        offset the replay starts from (0: no snapshot, or one that did not restore)."""
        found = self.store.read(self.name, partition)
        if found is None:
            return 0
        try:
            self._restore(state, found.payload)
        except Exception:  # noqa: BLE001 - a snapshot only ever saves time
            log.exception(
                "%s[%d]: snapshot %s does not restore", self.name, partition, found.snapshot_id
            )
            return -1
        finally:
            self.store.give_back(found.payload)
        return found.offset

    def _restore(self, state: Any, payload: bytes | memoryview) -> None:
        # (What `opened` made of the payload, its views included, goes when this returns.)
        self.restore(state, self.opened(payload))

    def write(self, partition: int, offset: int, payload: bytes) -> int:
        return self.store.write(self.name, partition, offset, payload)

    def opened(self, payload: bytes | memoryview) -> Any:
        """A payload `capture` sealed, unpickled."""
        return self.sealer.loads(payload)

    def size(self, state: Any) -> int:
        raise NotImplementedError

    def capture(self, state: Any) -> Any:
        raise NotImplementedError

    def restore(self, state: Any, data: Any) -> None:
        raise NotImplementedError


class OrderSnapshots(PartitionSnapshots):
    name = "orders"

    def size(self, state: partitions.OrderPartition) -> int:
        return len(state.orders) + getattr(state.spilled, "count", 0)

    def capture(self, state: partitions.OrderPartition) -> Any:
        """The orders in memory, each sealed on its own as a spill row, and the spill file as
        it is (its rows are sealed already; a row of an order since read back and changed is
        stale, and the order's row from memory is put over it). A restore decodes no order:
        every one goes back into the spill file, read back when an input or the tail touches
        it. (Decoding the orders in flight at the restore cost ~130 µs each, 6.5 s of a
        restart with 50,000 in flight.)"""
        cut = state.cut()
        spilled = state.spilled
        image = spilled.image() if isinstance(spilled, SpillFile) else None
        kept = {} if image is not None else dict(getattr(spilled, "items", dict)())
        sealer = self.sealer

        def seal() -> bytes:
            in_memory = {**cut.cold, **cut.hot}
            rows = [(i, sealer.dumps(s)) for i, s in in_memory.items()]
            rows += [(i, sealer.dumps(s)) for i, s in kept.items() if i not in in_memory]
            head = sealer.dumps({"rows": rows, "due": cut.due, "spill": image is not None})
            # The spill file's image follows the pickle as it is, not inside it: unpickled,
            # it was copied once more (a gigabyte and more at 1,000,000 orders). It starts on
            # a page boundary, so a restore writes it to the file straight from the opened
            # payload, around the page cache (`SpillFile.load_image`).
            pad = b"\0" * (-(_HEAD.size + len(head)) % PAGE) if image else b""
            return b"".join([_HEAD.pack(len(head)), head, pad, image or b""])

        return seal

    def opened(self, payload: bytes | memoryview) -> Any:
        """The pickled part, and the spill file's image (a view of the payload) under
        "spill" (None when the partition kept no file)."""
        view = memoryview(payload)
        (length,) = _HEAD.unpack_from(view)
        data = self.sealer.loads(view[_HEAD.size : _HEAD.size + length])
        start = _HEAD.size + length
        data["spill"] = view[start + (-start % PAGE) :] if data["spill"] else None
        return data

    def restore(self, state: partitions.OrderPartition, data: Any) -> None:
        spilled, image = state.spilled, data["spill"]
        if isinstance(spilled, SpillFile):
            if image is not None:
                spilled.load_image(image)
            spilled.put_rows(data["rows"])
        else:
            rows = image_rows(image) if image is not None else []
            loads = self.sealer.loads
            spilled.put({i: loads(blob) for i, blob in [*rows, *data["rows"]]})
        state.restore({}, data["due"])


class LedgerSnapshots(PartitionSnapshots):
    name = "inventory"

    def size(self, state: partitions.LedgerPartition) -> int:
        return len(state.levels)

    def capture(self, state: partitions.LedgerPartition) -> Any:
        """The levels, and each recent command's events sealed on its own: a restore opens
        none of them (the ledger opens one if its command comes again)."""
        levels, recent = state.cut()
        dumps = self.sealer.dumps

        def seal() -> bytes:
            sealed = [(k, v if isinstance(v, bytes) else dumps(v)) for k, v in recent]
            return dumps({"levels": levels, "recent": sealed})

        return seal

    def restore(self, state: partitions.LedgerPartition, data: Any) -> None:
        state.restore(data["levels"], data["recent"], opener=self.sealer.loads)
