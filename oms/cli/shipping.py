"""`oms carriers`: the carrier adapters installed (connectors/carriers/, found through the
`orderstream.carriers` entry points; docs/carriers.md)."""

from __future__ import annotations

import sys

import click


@click.group()
def carriers() -> None:
    """Carriers (found through the `orderstream.carriers` entry points)."""


@carriers.command("list")
def carriers_list() -> None:
    """Every installed carrier: what it can carry, the package it comes from, whether it
    loads."""
    from connectors.carriers.registry import registered

    rows = registered()
    click.echo(f"{'carrier':<10} {'temperatures':<24} {'cod':<4} {'package':<24} target")
    for row in rows:
        if row.carrier is None:
            click.echo(
                f"{row.name:<10} {'-':<24} {'-':<4} {row.distribution:<24} {row.target}"
                f"  BROKEN: {row.error}"
            )
            continue
        kept = ",".join(sorted(t.value for t in row.carrier.temperatures))
        cod = "yes" if row.carrier.cash_on_delivery else "no"
        click.echo(f"{row.name:<10} {kept:<24} {cod:<4} {row.distribution:<24} {row.target}")
    if any(row.error for row in rows):
        sys.exit(1)
