"""`oms privacy`: a customer's access and erasure requests (oms/privacy.py), and a master key
for the data keys of personal data (infra/keystore.py)."""

from __future__ import annotations

import json
import sys

import click

from infra.settings import get_settings


@click.group()
def privacy() -> None:
    """Personal data: export what is held about a customer, or forget them."""


def _failed(exc: Exception) -> click.ClickException:
    from infra.keystore import KeyStoreError
    from oms.privacy import UnknownCustomer

    if isinstance(exc, UnknownCustomer):
        return click.BadParameter(str(exc), param_hint=exc.field)
    if isinstance(exc, KeyStoreError):
        return click.ClickException(str(exc))
    raise exc


@privacy.command("forget")
@click.argument("customer")
def privacy_forget(customer: str) -> None:
    """Erase CUSTOMER (a phone number, channel:customer-id, or customer key): their data keys
    are deleted, so no topic gives their personal data back, and ClickHouse's copies emptied.
    Orders and totals stay."""
    from oms.privacy import forget

    try:
        done = forget(get_settings(), customer)
    except Exception as exc:
        raise _failed(exc) from exc
    click.echo(
        f"forgot customer {done.customer_key}: {done.keys} data key(s) deleted, "
        f"personal data of {done.orders} order(s) erased from ClickHouse"
    )


@privacy.command("export")
@click.argument("customer")
def privacy_export(customer: str) -> None:
    """Everything held about CUSTOMER, as JSON on standard output (an access request)."""
    from oms.privacy import export

    try:
        held = export(get_settings(), customer)
    except Exception as exc:
        raise _failed(exc) from exc
    json.dump(held, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")


@privacy.command("master-key")
def privacy_master_key() -> None:
    """Print a new random master key (32 bytes, base64) for OMS_MASTER_KEY."""
    from infra.keystore import MasterKey

    click.echo(MasterKey.generate())
