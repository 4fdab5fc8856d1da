"""Rebuild: replay the topics from the start into fresh tables, then swap them in atomically.

Readers keep querying the live tables while the staging database (`<db>__rebuild`) fills. At
the end of the log the rebuild asks the live projectors, on whatever hosts, to step aside (a
swap marked under way in ClickHouse, projections/lease.py), catches up with what arrived
meanwhile, and swaps; the live projectors then claim their partitions again and resume on the
new tables from what they hold. The claims on the read models' partitions are swapped in with
the tables, the rebuild's own above every live one, so a projector that missed the notice
(paused, cut off) has every later write to the new tables dropped.

The swap, by what the database engine can do atomically (docs/read-models.md):
- Ordinary databases (ClickHouse 18.16): one `RENAME TABLE a TO x, b TO a, ...` statement for
  every table. 18.16 takes each table's alter lock and then the server's global lock for the
  whole chain, so a reader sees all old tables or all new ones, and never a missing one.
- Atomic databases (current ClickHouse, chDB): `EXCHANGE TABLES live.t AND staging.t`, which
  swaps the two names in one step. A RENAME chain is documented as not atomic there, and
  EXCHANGE covers one pair at a time, so each table switches atomically, table after table.

On a cluster (`cluster=`, projections/cluster.py) the staging tables are replicated too, with
ZooKeeper paths of their own; before the swap every replica is made to hold what the
projector wrote on one of them (`SYSTEM SYNC REPLICA`), and the swap runs ON CLUSTER: each
replica swaps as above, one replica after another (the replicas do not switch at one instant).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from infra.settings import Settings
from projections.cluster import ClusterDDL, sync_replicas
from projections.lease import PROJECTOR_LEASES, SwapMarker, fence_for_swap
from projections.projector import BatchStats, Projector
from projections.schema import READ_MODEL_NAMES, migrate
from projections.store import ClickHouseStore, sql_string

EXCHANGE_ENGINES = ("Atomic", "Replicated", "Shared")
# What a swap puts in place: the claims on the read models' partitions first (projections/
# lease.py), so that where tables switch one after another, every projector of the old tables
# is fenced before the first of them changes.
SWAPPED = (PROJECTOR_LEASES, *READ_MODEL_NAMES)


@dataclass(frozen=True)
class RebuildReport:
    events: int
    staging: str
    swap: str
    elapsed_s: float


def staging_database(database: str) -> str:
    return f"{database}__rebuild"


def swap_in(store: ClickHouseStore, staging: str, *, cluster: str | None = None) -> str:
    """Put the staging tables in the live database's place; the old ones end up in staging.
    With `cluster`, on every replica of that cluster (ON CLUSTER).

    Returns the statement used ("RENAME" or "EXCHANGE")."""
    live = store.database
    on_cluster = f" ON CLUSTER {cluster}" if cluster else ""
    rows = store.query(f"SELECT engine FROM system.databases WHERE name = {sql_string(live)}")
    if rows and rows[0][0] in EXCHANGE_ENGINES:
        for table in SWAPPED:
            store.execute(f"EXCHANGE TABLES {live}.{table} AND {staging}.{table}{on_cluster}")
        return "EXCHANGE"
    chain: list[str] = []
    for table in SWAPPED:
        chain.append(f"{live}.{table} TO {staging}.{table}__old")
        chain.append(f"{staging}.{table} TO {live}.{table}")
    store.execute("RENAME TABLE " + ", ".join(chain) + on_cluster)
    return "RENAME"


def _catch_up(projector: Projector, on_batch: Callable[[BatchStats], None] | None) -> int:
    """Project until nothing is left on the topics (pipelined: `Projector.project`)."""
    events = 0

    def count(stats: BatchStats) -> None:
        nonlocal events
        events += stats.events + stats.stock_events + stats.dead_lettered
        if on_batch is not None:
            on_batch(stats)

    if projector.lag() > 0:
        projector.project(keep_going=lambda _: projector.lag() > 0, on_batch=count)
    return events


def _renewing(
    marker: SwapMarker, on_batch: Callable[[BatchStats], None] | None
) -> Callable[[BatchStats], None]:
    """`on_batch`, renewing the swap's notice at every batch of the last catch-up."""

    def renew(stats: BatchStats) -> None:
        marker.begin()
        if on_batch is not None:
            on_batch(stats)

    return renew


def rebuild(
    *,
    settings: Settings,
    store: ClickHouseStore,
    batch_size: int = 200_000,
    batch_seconds: float = 1.0,
    on_batch: Callable[[BatchStats], None] | None = None,
    cluster: str | None = None,
) -> RebuildReport:
    """Replay both topics into `<db>__rebuild`, swap it in, drop the old tables. With
    `cluster`, the live database is that cluster's (`oms project --migrate --cluster`)."""
    began = time.monotonic()
    layout = ClusterDDL(cluster) if cluster else None
    migrate(store, cluster=layout)  # the live database has every table the swap exchanges
    staging_name = staging_database(store.database)
    staging = store.with_database(staging_name)
    on_cluster = layout.on_cluster if layout else ""
    staging.execute(f"DROP DATABASE IF EXISTS {staging_name}{on_cluster}")
    if layout is not None:  # the projector's own migrate then finds every table in place
        migrate(staging, cluster=layout.for_staging(store.database))
    projector = Projector(
        settings=settings,
        store=staging,
        batch_size=batch_size,
        batch_seconds=batch_seconds,
        lease=False,
    )
    marker = SwapMarker(store)
    try:
        projector.start()
        events = _catch_up(projector, on_batch)
        # The live projectors finish their batch and step aside (projections/lease.py); one
        # that does not say so in time (paused, dead) is fenced by the swap all the same.
        marker.begin()
        marker.wait_for_projectors(timeout_s=settings.projector_session_timeout_s)
        events += _catch_up(projector, _renewing(marker, on_batch))
        if cluster is not None:
            sync_replicas(
                url=settings.resolved_clickhouse_url,
                cluster=cluster,
                database=staging_name,
                tables=READ_MODEL_NAMES,
                store=store,
            )
        fence_for_swap(store, staging_name, holder=f"rebuild:{marker.swap_id}")
        swap = swap_in(store, staging_name, cluster=cluster)
    finally:
        projector.close()
        staging.close()
        marker.end()
    store.execute(f"DROP DATABASE IF EXISTS {staging_name}{on_cluster}")
    return RebuildReport(
        events=events, staging=staging_name, swap=swap, elapsed_s=time.monotonic() - began
    )
