"""`oms audit`: check the audit trail's hash chains (`verify`), show its latest entries
(`log`), and project it into ClickHouse for the `audit` report (`project`). The trail itself:
infra/audit.py."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from infra.exit_codes import ExitCode
from infra.settings import get_settings

# `oms audit verify`'s exit code when a chain is broken (the trail was tampered with, or an
# entry is missing): distinct from a usage error (2) and from Kafka being away (75).
BROKEN = 3


@click.group()
def audit() -> None:
    """The audit trail: who did what, when and from where, hash-chained on Kafka."""


@audit.command("verify")
@click.option(
    "--partition",
    "partitions",
    type=click.IntRange(min=0),
    multiple=True,
    help="Only this partition's chain (repeatable); default: every partition.",
)
@click.option("--topic", default=None, help="The audit topic; default: OMS_TOPIC_AUDIT.")
def audit_verify(partitions: tuple[int, ...], topic: str | None) -> None:
    """Recompute every entry's hash and link from the partition's first entry: exit 0 when
    every chain is intact, 3 naming the offset of each entry that was changed or follows a
    removed one, 75 when Kafka does not answer."""
    from infra.audit import AuditUnavailable, verify

    try:
        reports = verify(get_settings(), topic=topic, partitions=partitions or None)
    except AuditUnavailable as exc:
        click.echo(f"oms audit verify: {exc}", err=True)
        sys.exit(ExitCode.TEMPFAIL)
    broken = False
    for report in reports:
        state = "intact" if report.intact else f"BROKEN at {len(report.breaks)} place(s)"
        last = (
            f", last entry {report.tail.seq} at offset {report.last_offset}"
            if report.last_offset is not None
            else ""
        )
        click.echo(f"partition {report.partition}: {report.entries} entries, {state}{last}")
        for found in report.breaks:
            broken = True
            click.echo(f"  {found}", err=True)
    if broken:
        sys.exit(BROKEN)


@audit.command("log")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option(
    "--partition",
    type=click.IntRange(min=0),
    default=None,
    help="Only this partition; default: every partition, merged by time.",
)
@click.option("--json", "as_json", is_flag=True, help="Each entry as stored (JSON), a line each.")
def audit_log(limit: int, partition: int | None, as_json: bool) -> None:
    """The latest LIMIT entries on the topic, oldest first."""
    from infra.audit import AuditUnavailable, NotAnEntry, parse, partitions_of, read_last

    settings = get_settings()
    topic = settings.topics.audit
    latest: list[tuple[str, int, int, dict[str, Any]]] = []
    try:
        wanted = [partition] if partition is not None else partitions_of(settings, topic)
        for p in wanted:
            for offset, value in read_last(settings, topic, p, limit):
                try:
                    fields = parse(value).fields
                except NotAnEntry as exc:
                    fields = {"problem": f"not an audit entry ({exc})"}
                latest.append((str(fields.get("at", "")), p, offset, fields))
    except AuditUnavailable as exc:
        click.echo(f"oms audit log: {exc}", err=True)
        sys.exit(ExitCode.TEMPFAIL)
    for at, p, offset, fields in sorted(latest, key=lambda e: e[:3])[-limit:]:
        shown = json.dumps(fields, ensure_ascii=False, sort_keys=True) if as_json else None
        click.echo(shown or _line(at, f"{p}:{offset}", fields))


def _line(at: str, where: str, fields: dict[str, Any]) -> str:
    status = fields.get("status")
    outcome = f"{fields.get('outcome', '')}{f' {status}' if status else ''}"
    what = fields.get("action", fields.get("problem", ""))
    who = f"{fields.get('principal', '?')} ({fields.get('role', '')})"
    parts = (at, where, who, what, fields.get("resource", ""), outcome, fields.get("client_ip"))
    return "  ".join(str(part) for part in parts if part)


@audit.command("project")
@click.option("--once", is_flag=True, help="Stop once the table has caught up with the topic.")
def audit_project(once: bool) -> None:
    """Fill ClickHouse's `audit_log` from the audit topic, exactly once across restarts (for
    `oms report audit`). Runs until stopped; exit 75 when Kafka or ClickHouse is away (a
    restart resumes where the table ends)."""
    from infra.exit_codes import run_until_stopped
    from projections.audit import AuditProjection
    from projections.reconnect import exit_code
    from projections.store import connect

    settings = get_settings()

    def main() -> None:
        store = connect(settings.resolved_clickhouse_url)
        projection = AuditProjection(settings=settings, store=store)
        try:
            written = projection.run(until=(lambda p: p.caught_up()) if once else None)
        finally:
            projection.close()
            store.close()
        click.echo(f"{written} audit entries projected")

    run_until_stopped("oms audit project", main, exit_code=exit_code)
