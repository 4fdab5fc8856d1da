"""`oms backup DIR` and `oms restore DIR`: the read-model database's tables, DDL and rows, with a
manifest of row counts and checksums (projections/backup.py; docs/operations.md, "Backup and
restore")."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from infra.settings import get_settings

if TYPE_CHECKING:
    from projections.backup import TableEntry


def _line(table: TableEntry) -> str:
    size = sum(entry.size for entry in (table.ddl, table.data) if entry is not None)
    rows = f"{table.rows:>12,} rows" if table.data is not None else f"{'(DDL only)':>17}"
    return f"{table.name:<34} {rows} {size / 1e6:>10.1f} MB  {table.engine}"


@click.command("backup")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def backup(directory: Path) -> None:
    """Copy every table of the read-model database (OMS_CLICKHOUSE_URL) into DIRECTORY, a new
    or empty directory: each table's DDL and rows, and a manifest with their row counts and
    checksums."""
    from projections.backup import BackupError, backup
    from projections.store import StoreError, connect

    store = connect(get_settings().resolved_clickhouse_url)
    try:
        manifest = backup(store, directory, on_table=lambda t: click.echo(_line(t)))
    except (BackupError, StoreError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    click.echo(
        f"backed up {manifest.database}: {len(manifest.tables)} tables, "
        f"{manifest.rows:,} rows, to {directory}"
    )


@click.command("restore")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--check",
    is_flag=True,
    help="Only check every file against the manifest (sizes, SHA-256) and exit.",
)
def restore(directory: Path, check: bool) -> None:
    """Create the tables of the backup in DIRECTORY in the read-model database
    (OMS_CLICKHOUSE_URL) and load their rows. Refuses a damaged backup, naming the file, and a
    database that already has any of the tables, before it changes anything."""
    from projections.backup import BackupError, restore, verify
    from projections.store import StoreError, connect

    if check:
        try:
            manifest = verify(directory)
        except BackupError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(
            f"{directory}: {len(manifest.tables)} tables of {manifest.database}, "
            f"{manifest.rows:,} rows, made {manifest.created_at}: every file as the manifest says"
        )
        return
    store = connect(get_settings().resolved_clickhouse_url)
    try:
        manifest = restore(store, directory, on_table=lambda t: click.echo(_line(t)))
    except (BackupError, StoreError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    click.echo(
        f"restored {len(manifest.tables)} tables, {manifest.rows:,} rows, into {store.database} "
        f"(backed up from {manifest.database} on {manifest.created_at})"
    )
