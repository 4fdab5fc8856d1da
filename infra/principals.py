"""Who is calling: the principals of `oms api`, their roles and scopes, and the three ways one
proves who it is.

- **API keys** for machines: `oms_<id>_<secret>`, the secret 32 random bytes. Only the SHA-256
  of the secret is kept (a secret of 256 random bits needs no slow hash), with the key's role
  and scope, in the access file (`HOME/access.json`, `OMS_ACCESS_FILE`). `oms keys
  create|list|rotate|revoke` manage it; a running API re-reads the file when it changes, so a
  revocation takes effect on the next request.
- **OIDC bearer tokens** for people signed in elsewhere: a JWT verified against the identity
  provider's JWKS (`OMS_OIDC_JWKS_URL`), with issuer and audience required, asymmetric
  algorithms only (no `none`, no HS256 with a public key as secret). The role and the stores
  come from claims (`OMS_OIDC_ROLE_CLAIM`, `OMS_OIDC_STORES_CLAIM`).
- **Login sessions** for the browser pages: users with a scrypt password hash in the access
  file (`oms users create`), and a session cookie signed with HMAC-SHA256 under the session
  secret (`OMS_SESSION_SECRET`, or `HOME/session.key` made by `oms stack up`; without either,
  nobody can sign in: fail closed). The session carries its CSRF token; the user is looked up
  again on every request, so a removed user is signed out at once.

Nothing here knows a route: `oms/access.py` says which role may call what.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from infra.settings import Settings

KEY_PREFIX = "oms_"
SESSION_COOKIE = "oms_session"
SESSION_SECONDS = 8 * 3600
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


class Role(StrEnum):
    ADMIN = "admin"  # the owner: everything
    STORE_MANAGER = "store_manager"  # their stores: orders, stock, cancellations
    KITCHEN = "kitchen"  # their stores: reads orders, takes them through the kitchen
    REVIEWER = "reviewer"  # decides held orders
    STOCK_CLERK = "stock_clerk"  # their stores: counts, receipts, adjustments
    CUSTOMER_SERVICE = "customer_service"  # orders, cancellations, customers' personal data
    ANALYST = "analyst"  # reports and the dashboard; no personal data
    INTEGRATION = "integration"  # another system: reads the orders of its channels


STORE_SCOPED = frozenset({Role.STORE_MANAGER, Role.KITCHEN, Role.STOCK_CLERK})


class AccessError(Exception):
    """Credentials that prove nothing: unknown, revoked, expired, forged or malformed."""


class AccessMisconfigured(Exception):
    """What access needs is missing (no session secret, an unreadable access file)."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `stores`/`channels` of None mean all of them."""

    id: str  # "key:<id>", "user:<name>", "oidc:<subject>": the actor of what it does
    role: Role
    stores: frozenset[str] | None = None
    channels: frozenset[str] | None = None
    via: str = "api_key"  # api_key | session | oidc

    def covers_store(self, store: str | None) -> bool:
        return self.stores is None or (store is not None and store in self.stores)

    def covers_channel(self, channel: str | None) -> bool:
        return self.channels is None or (channel is not None and channel in self.channels)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role.value,
            "stores": sorted(self.stores) if self.stores is not None else None,
            "channels": sorted(self.channels) if self.channels is not None else None,
            "via": self.via,
        }


def _scope(values: list[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(values)


def check_scope(role: Role, stores: list[str] | None, channels: list[str] | None) -> None:
    """A store role needs its stores and an integration its channels: never 'all' by omission."""
    if role in STORE_SCOPED and not stores:
        raise ValueError(f"a {role.value} works for named stores: give --store")
    if role is Role.INTEGRATION and not channels:
        raise ValueError("an integration reads named channels: give --channel")


# ------------------------------------------------------------------ the access file


@dataclass
class _Record:
    role: Role
    stores: list[str] | None
    channels: list[str] | None
    created_at: str
    name: str = ""
    secret_sha256: str = ""  # keys
    password: str = ""  # users: scrypt$salt$hash
    revoked_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        document = {
            "role": self.role.value,
            "stores": self.stores,
            "channels": self.channels,
            "created_at": self.created_at,
            "name": self.name,
            "revoked_at": self.revoked_at,
        }
        if self.secret_sha256:
            document["secret_sha256"] = self.secret_sha256
        if self.password:
            document["password"] = self.password
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> _Record:
        return cls(
            role=Role(document["role"]),
            stores=document.get("stores"),
            channels=document.get("channels"),
            created_at=document.get("created_at", ""),
            name=document.get("name", ""),
            secret_sha256=document.get("secret_sha256", ""),
            password=document.get("password", ""),
            revoked_at=document.get("revoked_at"),
        )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def _password_matches(stored: str, password: str) -> bool:
    try:
        kind, salt, digest = stored.split("$")
    except ValueError:
        return False
    if kind != "scrypt":
        return False
    given = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), **_SCRYPT)
    return hmac.compare_digest(given, bytes.fromhex(digest))


class AccessFile:
    """API keys and users, in one JSON file written atomically; re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, _Record] = {}
        self._users: dict[str, _Record] = {}

    @classmethod
    def of(cls, settings: Settings) -> AccessFile:
        return cls(settings.access_file or settings.home / "access.json")

    # -- reading

    def _load(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._keys, self._users = None, {}, {}
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            document = json.loads(self.path.read_text())
            keys = {k: _Record.from_json(v) for k, v in document.get("keys", {}).items()}
            users = {k: _Record.from_json(v) for k, v in document.get("users", {}).items()}
        except (OSError, ValueError, KeyError) as exc:
            raise AccessMisconfigured(f"the access file {self.path} cannot be read: {exc}") from exc
        self._stamp, self._keys, self._users = stamp, keys, users

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "keys": {k: v.to_json() for k, v in self._keys.items()},
            "users": {k: v.to_json() for k, v in self._users.items()},
        }
        temporary = self.path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(document, out, indent=2, sort_keys=True)
        os.replace(temporary, self.path)
        self._stamp = None

    # -- API keys

    def create_key(
        self,
        role: Role,
        *,
        name: str = "",
        stores: list[str] | None = None,
        channels: list[str] | None = None,
    ) -> tuple[str, str]:
        """A new key: (its id, the whole key). The key is shown once and never stored."""
        check_scope(role, stores, channels)
        with self._lock:
            self._load()
            key_id = secrets.token_hex(4)
            while key_id in self._keys:
                key_id = secrets.token_hex(4)
            secret = secrets.token_urlsafe(32)
            self._keys[key_id] = _Record(
                role=role,
                stores=stores,
                channels=channels,
                created_at=_now(),
                name=name,
                secret_sha256=hashlib.sha256(secret.encode()).hexdigest(),
            )
            self._save()
        return key_id, f"{KEY_PREFIX}{key_id}_{secret}"

    def rotate_key(self, key_id: str) -> tuple[str, str]:
        """A new key with the same role and scope; the old one is revoked."""
        with self._lock:
            self._load()
            old = self._keys.get(key_id)
        if old is None or old.revoked_at:
            raise KeyError(f"no active key {key_id!r}")
        new = self.create_key(old.role, name=old.name, stores=old.stores, channels=old.channels)
        self.revoke_key(key_id)
        return new

    def revoke_key(self, key_id: str) -> None:
        with self._lock:
            self._load()
            record = self._keys.get(key_id)
            if record is None:
                raise KeyError(f"no key {key_id!r}")
            record.revoked_at = record.revoked_at or _now()
            self._save()

    def api_keys(self) -> list[dict[str, Any]]:
        with self._lock:
            self._load()
            return [
                {"id": k} | {f: v for f, v in r.to_json().items() if f != "secret_sha256"}
                for k, r in sorted(self._keys.items())
            ]

    def key_principal(self, key: str) -> Principal:
        """The principal of a presented key; AccessError for anything but an active key."""
        body = key[len(KEY_PREFIX) :] if key.startswith(KEY_PREFIX) else ""
        key_id, _, secret = body.partition("_")
        if not key_id or not secret:
            raise AccessError("malformed API key")
        with self._lock:
            self._load()
            record = self._keys.get(key_id)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        expected = record.secret_sha256 if record else "0" * 64
        if not hmac.compare_digest(digest, expected) or record is None:
            raise AccessError("unknown API key")
        if record.revoked_at:
            raise AccessError(f"API key {key_id} was revoked at {record.revoked_at}")
        return Principal(
            id=f"key:{key_id}",
            role=record.role,
            stores=_scope(record.stores),
            channels=_scope(record.channels),
            via="api_key",
        )

    # -- users

    def create_user(
        self, name: str, password: str, role: Role, *, stores: list[str] | None = None
    ) -> None:
        if not name.strip() or ":" in name:
            raise ValueError("a user name must not be blank or hold ':'")
        if len(password) < 12:
            raise ValueError("a password needs at least 12 characters")
        check_scope(role, stores, None)
        with self._lock:
            self._load()
            self._users[name] = _Record(
                role=role,
                stores=stores,
                channels=None,
                created_at=_now(),
                name=name,
                password=_hash_password(password),
            )
            self._save()

    def remove_user(self, name: str) -> None:
        with self._lock:
            self._load()
            if self._users.pop(name, None) is None:
                raise KeyError(f"no user {name!r}")
            self._save()

    def users(self) -> list[dict[str, Any]]:
        with self._lock:
            self._load()
            return [
                {"name": k} | {f: v for f, v in r.to_json().items() if f != "password"}
                for k, r in sorted(self._users.items())
            ]

    def user_principal(self, name: str, password: str | None = None) -> Principal:
        """The principal of a user; with `password`, only if it matches."""
        with self._lock:
            self._load()
            record = self._users.get(name)
        if record is None:
            if password is not None:  # as slow as a real check: no user enumeration by timing
                _password_matches(_hash_password("x"), password)
            raise AccessError("unknown user or wrong password")
        if password is not None and not _password_matches(record.password, password):
            raise AccessError("unknown user or wrong password")
        return Principal(
            id=f"user:{name}", role=record.role, stores=_scope(record.stores), via="session"
        )


# ------------------------------------------------------------------ sessions


def session_secret(settings: Settings) -> bytes:
    """The key sessions are signed with; AccessMisconfigured without one (fail closed)."""
    if settings.session_secret and settings.session_secret.get_secret_value():
        secret = settings.session_secret.get_secret_value().encode()
    else:
        path = settings.home / "session.key"
        try:
            secret = path.read_bytes().strip()
        except FileNotFoundError:
            raise AccessMisconfigured(
                f"no session secret: set OMS_SESSION_SECRET (32+ characters) or create {path} "
                "(`oms stack up` makes one for development)"
            ) from None
    if len(secret) < 32:
        raise AccessMisconfigured("the session secret must have at least 32 characters")
    return secret


def ensure_local_session_secret(home: Path) -> Path:
    """A development session secret under HOME, made once (mode 0600)."""
    path = home / "session.key"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48))
    return path


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    user: str
    csrf: str
    expires: int


def issue_session(secret: bytes, user: str, *, seconds: int = SESSION_SECONDS) -> str:
    """A signed cookie value for `user`, with a fresh CSRF token."""
    payload = json.dumps(
        {"u": user, "c": secrets.token_urlsafe(24), "e": int(time.time()) + seconds},
        separators=(",", ":"),
    ).encode()
    signature = hmac.new(secret, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(signature)}"


def read_session(secret: bytes, cookie: str) -> Session:
    """The session of a cookie value; AccessError if forged, malformed or expired."""
    try:
        payload_text, signature_text = cookie.split(".")
        payload, signature = _unb64(payload_text), _unb64(signature_text)
    except ValueError:
        raise AccessError("malformed session") from None
    if not hmac.compare_digest(hmac.new(secret, payload, hashlib.sha256).digest(), signature):
        raise AccessError("forged session")
    document = json.loads(payload)
    if document["e"] < time.time():
        raise AccessError("session expired: sign in again")
    return Session(user=document["u"], csrf=document["c"], expires=document["e"])
