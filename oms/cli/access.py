"""`oms keys` and `oms users`: who may call `oms api` (infra/principals.py). A key is printed
once, when it is made; only its hash is kept. A password is read from the terminal (or
OMS_NEW_PASSWORD for scripts), never from the command line, where `ps` would show it."""

from __future__ import annotations

import os

import click

from infra.principals import AccessFile, Role
from infra.settings import get_settings

ROLES = click.Choice([role.value for role in Role])


def _file() -> AccessFile:
    return AccessFile.of(get_settings())


def _scope(values: tuple[str, ...]) -> list[str] | None:
    return list(values) or None


@click.group()
def keys() -> None:
    """API keys for machines and scripts: `Authorization: Bearer <key>`."""


@keys.command("create")
@click.option("--role", type=ROLES, required=True)
@click.option("--name", default="", help="what the key is for (shown by `oms keys list`)")
@click.option("--store", "stores", multiple=True, help="a store it works for (repeatable)")
@click.option("--channel", "channels", multiple=True, help="a channel it reads (integrations)")
def keys_create(role: str, name: str, stores: tuple[str, ...], channels: tuple[str, ...]) -> None:
    """Make a key; it is printed once and cannot be shown again."""
    try:
        key_id, key = _file().create_key(
            Role(role), name=name, stores=_scope(stores), channels=_scope(channels)
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"key {key_id} ({role}): {key}")


@keys.command("list")
def keys_list() -> None:
    """Every key: id, role, scope, when made and revoked (never the key itself)."""
    for key in _file().api_keys():
        scope = ",".join(key["stores"] or key["channels"] or ["all"])
        revoked = f"revoked {key['revoked_at']}" if key["revoked_at"] else "active"
        click.echo(
            f"{key['id']}  {key['role']:<16} {scope:<20} {key['created_at']}  {revoked}  "
            f"{key['name']}"
        )


@keys.command("rotate")
@click.argument("key_id")
def keys_rotate(key_id: str) -> None:
    """A new key with KEY_ID's role and scope; KEY_ID is revoked."""
    try:
        new_id, key = _file().rotate_key(key_id)
    except KeyError as exc:
        raise click.BadParameter(str(exc.args[0]), param_hint="KEY_ID") from None
    click.echo(f"key {new_id} replaces {key_id}: {key}")


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke KEY_ID: a running API refuses it from its next request."""
    try:
        _file().revoke_key(key_id)
    except KeyError as exc:
        raise click.BadParameter(str(exc.args[0]), param_hint="KEY_ID") from None
    click.echo(f"revoked {key_id}")


@click.group()
def users() -> None:
    """People who sign in to the browser pages (dashboard, phone form)."""


@users.command("create")
@click.argument("name")
@click.option("--role", type=ROLES, required=True)
@click.option("--store", "stores", multiple=True, help="a store they work for (repeatable)")
def users_create(name: str, role: str, stores: tuple[str, ...]) -> None:
    """Add or replace user NAME; the password is asked for (or taken from OMS_NEW_PASSWORD)."""
    password = os.environ.get("OMS_NEW_PASSWORD") or click.prompt(
        "password", hide_input=True, confirmation_prompt=True
    )
    try:
        _file().create_user(name, password, Role(role), stores=_scope(stores))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"user {name} ({role})")


@users.command("remove")
@click.argument("name")
def users_remove(name: str) -> None:
    """Remove user NAME: their sessions stop working at their next request."""
    try:
        _file().remove_user(name)
    except KeyError as exc:
        raise click.BadParameter(str(exc.args[0]), param_hint="NAME") from None
    click.echo(f"removed {name}")


@users.command("list")
def users_list() -> None:
    for user in _file().users():
        click.echo(f"{user['name']:<20} {user['role']:<16} {','.join(user['stores'] or ['all'])}")
