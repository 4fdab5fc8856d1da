"""`oms report NAME`: one subcommand per report of projections.reports, with one option per
parameter of its SQL file."""

from __future__ import annotations

import sys
from typing import Any

import click

from infra.settings import get_settings


class _ReportGroup(click.Group):
    """One subcommand per report in projections.reports.REPORTS, built when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from projections.reports import REPORTS

        return list(REPORTS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from projections.reports import REPORTS

        return _report_command(cmd_name) if cmd_name in REPORTS else None


@click.group("report", cls=_ReportGroup, invoke_without_command=True)
@click.option("--list", "list_reports", is_flag=True, help="List the reports.")
@click.pass_context
def report(ctx: click.Context, list_reports: bool) -> None:
    """Analytics from the ClickHouse read models: `oms report NAME [--PARAM VALUE ...]`."""
    if ctx.invoked_subcommand is None:
        from projections.reports import REPORTS

        for name, entry in REPORTS.items():
            click.echo(f"{name:<22} {entry.title}: {entry.description}")


def _report_command(name: str) -> click.Command:
    """`oms report NAME`, with one option per parameter of the report's SQL file."""
    from projections.reports import REPORTS

    entry = REPORTS[name]

    def run(csv: bool, **params: Any) -> None:
        from projections.reports import ReportError, run_report
        from projections.store import StoreError, connect

        store = connect(get_settings().resolved_clickhouse_url)
        given = {key: value for key, value in params.items() if value is not None}
        try:
            result = run_report(store, name, **given)
        except ReportError as exc:
            raise click.UsageError(str(exc)) from exc
        except StoreError as exc:
            hint = " (run `oms project --migrate`)" if "exist" in str(exc) else ""
            reason = " ".join(str(exc).split(" -- in:", 1)[0].split())
            raise click.ClickException(f"{reason}{hint}") from exc
        cells = [
            ["" if v is None else f"{v:g}" if isinstance(v, float) else str(v) for v in row]
            for row in result.rows
        ]
        if csv:
            import csv as csv_format

            writer = csv_format.writer(sys.stdout)
            writer.writerow(result.columns)
            writer.writerows(cells)
            return
        widths = [
            max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(result.columns)
        ]
        click.echo("  ".join(c.ljust(w) for c, w in zip(result.columns, widths, strict=True)))
        click.echo("  ".join("-" * w for w in widths))
        for row, raw in zip(cells, result.rows, strict=True):
            click.echo(
                "  ".join(
                    cell.rjust(w) if isinstance(v, int | float) else cell.ljust(w)
                    for cell, w, v in zip(row, widths, raw, strict=True)
                ).rstrip()
            )
        click.echo(f"({len(cells)} rows)")

    options: list[click.Parameter] = [
        click.Option(
            [f"--{param.replace('_', '-')}", param],
            default=None,
            help=f"{ch_type}" + ("" if param in entry.defaults else " (required)"),
        )
        for param, ch_type in entry.parameters.items()
    ]
    options.append(click.Option(["--csv"], is_flag=True, help="CSV instead of a table."))
    return click.Command(
        name,
        callback=run,
        params=options,
        short_help=entry.title,
        help=f"{entry.title}: {entry.description}\n\nSQL: projections/sql/{entry.sql_file}",
    )
