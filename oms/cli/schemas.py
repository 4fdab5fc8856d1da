"""`oms schemas`: check and write the Avro schemas, the published event contract."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.group()
def schemas() -> None:
    """The Avro schemas: the published event contract."""


@schemas.command("check")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None)
def schemas_check(directory: Path | None) -> None:
    """BACKWARD_TRANSITIVE compatibility of every schema with all its earlier versions."""
    from events.schema_catalog import SCHEMA_DIR, check_schemas

    reports = check_schemas(directory or SCHEMA_DIR)
    click.echo(f"{'schema':<28} {'versions':>8}  status")
    for report in reports:
        click.echo(f"{report.name:<28} {report.versions:>8}  {report.status}")
        for problem in report.problems:
            click.echo(f"    {problem}")
    failed = [r for r in reports if r.problems]
    if failed:
        click.echo(f"{len(failed)} of {len(reports)} schemas fail the check", err=True)
        sys.exit(1)


@schemas.command("write")
def schemas_write() -> None:
    """Regenerate schemas/*.avsc from the models and register changed ones as new versions."""
    from events.schema_catalog import write_schemas

    added = write_schemas()
    for version in added:
        click.echo(f"{version.name} v{version.version} registered as schema id {version.schema_id}")
    if not added:
        click.echo("no schema changed")
