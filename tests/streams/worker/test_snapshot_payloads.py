"""What a snapshot's payload holds and what restoring it costs (no broker): a restore opens no
event it does not need, and the views' snapshot holds no object per customer."""

from __future__ import annotations

import ctypes
import os
import pickle
import pickletools
from datetime import timedelta
from pathlib import Path
from typing import Any

from events.codec import AvroCodec
from events.models import Customer, Event
from infra.keystore import MasterKey
from infra.settings import Settings
from streams.partitions import LedgerPartition, OrderPartition
from streams.reference import load_catalogue
from streams.worker.snapshots import (
    PAGE,
    LedgerSnapshots,
    OrderSnapshots,
    Sealer,
    SnapshotStore,
    fresh,
)
from streams.worker.spill import SpillFile, write_around_the_cache
from streams.worker.views import SharedViews
from tests.factories import T0, numbered, received
from tests.streams.test_inventory import NOW, receive, reserve
from tests.streams.test_orders import context


class CountingCodec(AvroCodec):
    def __init__(self) -> None:
        super().__init__()
        self.decoded = 0

    def decode(self, raw: bytes, *args: Any, **kwargs: Any) -> Event:
        self.decoded += 1
        return super().decode(raw, *args, **kwargs)


def test_a_restored_ledger_opens_a_recent_command_only_when_it_comes_again(
    tmp_path: Any,
) -> None:
    """A restart after a day decoded every recent command of every partition (10,000 a
    partition: ~5.7 s of the 1,000,000-order restart); now each stays sealed until its
    command is redelivered, and the answer is the one given before."""
    before = LedgerPartition()
    before.handle(receive(100), product=None, now=NOW)
    answers = {
        n: before.handle(reserve(f"r-{n}", 1), product=None, now=NOW).answers for n in range(50)
    }
    codec = CountingCodec()
    store = SnapshotStore(Settings(home=tmp_path), master=MasterKey(bytes(32)))
    snapshots = LedgerSnapshots(store, codec)
    payload = snapshots.capture(before)()

    after = LedgerPartition()
    snapshots.restore(after, snapshots.opened(payload))
    assert after.levels == before.levels
    # The levels' answers to their open reservations are opened (they are the levels); the
    # recent commands' events are not.
    answers_held = sum(len(level.outcomes) for level in before.levels.values())
    assert answers_held == 50
    assert codec.decoded == answers_held, "the restore opened recent commands nobody asked for"

    again = after.handle(reserve("r-7", 1), product=None, now=NOW)  # redelivered
    assert again.events == [] and again.answers == answers[7]
    opened = before.recent(reserve("r-7", 1).event_id)
    assert opened and codec.decoded == answers_held + len(opened)
    assert after.levels == before.levels  # nothing reserved twice
    # A snapshot of the restored ledger carries the unopened commands as they are.
    later = LedgerPartition()
    snapshots.restore(later, snapshots.opened(snapshots.capture(after)()))
    assert later.handle(reserve("r-42", 1), product=None, now=NOW).answers == answers[42]


def _objects_built(blob: bytes) -> int:
    """Objects an unpickling builds by calling a class (one per instance of a class)."""
    kinds = {"NEWOBJ", "NEWOBJ_EX", "REDUCE", "BUILD", "INST", "OBJ"}
    return sum(1 for op, _, _ in pickletools.genops(blob) if op.name in kinds)


def _views_with_customers(customers: int) -> SharedViews:
    views = SharedViews(catalogue=load_catalogue(), codec=AvroCodec())
    for n in range(customers):
        views.note(numbered(n, customer=Customer(id=f"c-{n}", phone=f"+86138{n:08d}")))
    views.history.prune(T0 + timedelta(days=1))  # velocity forgotten, aggregates kept
    return views


def test_the_views_snapshot_builds_no_object_per_customer() -> None:
    """A day's customers are all in the views' snapshot (their norms and tiers): an object
    each took ~9 s to unpickle at 1,000,000 customers; their counts are kept as plain
    pairs, whose unpickling calls no class."""
    few, many = _views_with_customers(10), _views_with_customers(300)
    assert many.history.size() == 300
    assert _objects_built(many.cut()) == _objects_built(few.cut())
    restored = SharedViews(catalogue=load_catalogue(), codec=AvroCodec())
    restored.restore(many.cut())
    key = "webshop:c-7"
    assert restored.history.norm(key) == many.history.norm(key)
    assert restored.history.tier(key) == many.history.tier(key) == "regular"
    assert pickle.loads(many.cut())["state"]["history"].size() == 300


def test_a_spilled_order_is_its_fields_values_without_their_names(tmp_path: Path) -> None:
    """Every spilled order is a pickle of its own: the state's field names were written
    again in each row (a third of a restart's spill file at 1,000,000 orders)."""
    sealer = Sealer(AvroCodec())
    partition = OrderPartition(spilled=SpillFile(tmp_path, 0, sealer=sealer), max_in_memory=10)
    step = partition.handle(received(), context())
    assert step.to_log
    state = partition.orders["o-1"]
    row = sealer.dumps(state)
    assert b"last_event_id" not in row and b"prioritised_at" not in row
    assert sealer.loads(row) == state
    partition.spilled.put({"o-1": state})
    assert partition.spilled.get("o-1") == state
    partition.close()


def test_a_snapshot_opens_into_memory_of_its_own_without_a_copy_of_the_payload(
    tmp_path: Any,
) -> None:
    """A restart after 1,000,000 orders opens ~1.5 GB of payloads: each was copied once more
    into fresh memory (`bytes()` of the decompressed buffer), under the GIL. Opened now
    straight into an anonymous map (page-aligned, huge pages where offered): Python's
    allocator holds next to nothing of it."""
    import tracemalloc

    store = SnapshotStore(Settings(home=tmp_path), master=MasterKey(bytes(32)))
    payload = b"".join(n.to_bytes(4, "big") * 64 for n in range(65_536))  # 16 MiB, compresses
    manifest, chunks = store.seal("orders", 3, 1234, payload)
    keys = [f"orders/3/{manifest['id']}/{n:06d}".encode() for n in range(len(chunks))]
    tracemalloc.start()
    try:
        found = store._open(manifest, dict(zip(keys, chunks, strict=True)), 3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found is not None and found.offset == 1234
    assert found.payload == payload
    size = len(payload)
    assert peak < size // 4, f"{peak:,} bytes allocated opening {size:,}"

    assert address(found.payload) % PAGE == 0


def address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def test_a_manifest_naming_another_size_does_not_open(tmp_path: Any) -> None:
    store = SnapshotStore(Settings(home=tmp_path), master=MasterKey(bytes(32)))
    manifest, chunks = store.seal("orders", 3, 1234, b"a payload" * 1000)
    keys = [f"orders/3/{manifest['id']}/{n:06d}".encode() for n in range(len(chunks))]
    opened = store._open(manifest, dict(zip(keys, chunks, strict=True)), 3)
    assert opened is not None and opened.payload == b"a payload" * 1000
    for size in (manifest["size"] - 1, manifest["size"] + 4096):
        edited = {**manifest, "size": size}
        assert store._open(edited, dict(zip(keys, chunks, strict=True)), 3) is None, size


def test_an_order_snapshots_spill_image_is_page_aligned_and_restores_every_order(
    tmp_path: Path,
) -> None:
    """The image starts on a page boundary of the opened payload, so the restore writes it
    around the page cache; the orders read back equal."""
    sealer = Sealer(AvroCodec())
    partition = OrderPartition(spilled=SpillFile(tmp_path / "a", 0, sealer=sealer),
                               max_in_memory=10)  # fmt: skip
    ctx = context()
    for n in range(40):
        assert partition.handle(numbered(n), ctx).to_log
    partition.spill()
    assert partition.spilled.count and partition.orders  # some spilled, some in memory
    before = {i: partition.state_of(i) for i in (f"o-{n}" for n in range(40))}
    snapshots = OrderSnapshots(None, AvroCodec())  # type: ignore[arg-type]
    payload = snapshots.capture(partition)()
    opened = fresh(len(payload))  # as `SnapshotStore._open` gives it
    opened[:] = payload
    data = snapshots.opened(opened)
    image = data["spill"]
    assert image is not None and address(image) % PAGE == 0 and image.nbytes % PAGE == 0

    restored = OrderPartition(spilled=SpillFile(tmp_path / "b", 0, sealer=sealer),
                              max_in_memory=10)  # fmt: skip
    snapshots.restore(restored, data)
    assert {i: restored.state_of(i) for i in before} == before
    partition.close()
    restored.close()


def test_an_image_is_written_around_the_page_cache_when_it_can_be(tmp_path: Path) -> None:
    aligned = fresh(3 * PAGE)
    aligned[:] = bytes(range(256)) * (3 * PAGE // 256)
    how = write_around_the_cache(tmp_path / "aligned", aligned)
    assert (tmp_path / "aligned").read_bytes() == aligned.tobytes()
    # (a file system without O_DIRECT, tmpfs, refuses it: then through the cache)
    assert how == ("direct" if takes_o_direct(tmp_path) else "cached")
    # Not page-aligned in memory, or not whole pages: through the cache, the same bytes.
    odd = b"x" + aligned.tobytes()
    assert write_around_the_cache(tmp_path / "odd", odd) == "cached"
    assert (tmp_path / "odd").read_bytes() == odd
    assert write_around_the_cache(tmp_path / "shifted", aligned[1:]) == "cached"
    assert (tmp_path / "shifted").read_bytes() == aligned[1:].tobytes()
    assert write_around_the_cache(tmp_path / "empty", b"") == "cached"
    assert (tmp_path / "empty").read_bytes() == b""


def takes_o_direct(directory: Path) -> bool:
    try:
        fd = os.open(directory / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    return True


def test_opened_snapshots_reuse_memory_no_view_still_holds(tmp_path: Any) -> None:
    """While a restart restores many partitions, the memory one snapshot was opened into is
    reused for the next (its pages are faulted in once, not per partition); memory a live view
    still shows is never handed out again, and every payload opens whole."""
    store = SnapshotStore(Settings(home=tmp_path), master=MasterKey(bytes(32)))
    payloads = [bytes([n]) * (1 << 20) + os.urandom(4096) for n in range(6)]

    def opened(n: int) -> memoryview:
        manifest, chunks = store.seal("orders", 3, n, payloads[n])
        keys = [f"orders/3/{manifest['id']}/{i:06d}".encode() for i in range(len(chunks))]
        found = store._open(manifest, dict(zip(keys, chunks, strict=True)), 3)
        assert found is not None and found.payload == payloads[n]
        assert isinstance(found.payload, memoryview)
        return found.payload

    with store.reusing_buffers() as buffers:
        first = opened(0)
        kept = first[100:200]  # a view of it still alive: its memory stays its own
        store.give_back(first)
        second = opened(1)
        assert bytes(kept) == payloads[0][100:200]
        del kept
        store.give_back(second)
        for n in range(2, 6):
            payload = opened(n)
            assert address(payload) % PAGE == 0
            store.give_back(payload)
        # Each open takes three areas (chunks joined, decrypted, decompressed): from the
        # third payload on, every one is one handed back before.
        assert buffers.reused >= 3 * 4
    plain = opened(5)  # outside a restore: memory of its own, as before
    store.give_back(plain)
    assert plain == payloads[5]


def test_a_pooled_area_is_handed_out_only_once_free(tmp_path: Any) -> None:
    from streams.worker.snapshots import Buffers

    buffers = Buffers()
    a = buffers.take(3 * PAGE)
    a[:] = b"a" * len(a)
    buffers.give(a)
    b = buffers.take(2 * PAGE)  # fits in a's area: the same memory
    assert buffers.reused == 1
    b[:] = b"b" * len(b)
    c = buffers.take(2 * PAGE)  # none free: fresh
    assert buffers.reused == 1 and address(c) != address(b)
    buffers.give(b)
    buffers.drop()
    assert buffers.take(PAGE) is not None and buffers.reused == 1
