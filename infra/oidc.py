"""OIDC bearer tokens: a JWT from the identity provider, verified against its JWKS.

Issuer, audience and expiry are required claims; only RS256, ES256 and EdDSA signatures are
taken, so neither `alg: none` nor an HS256 token signed with the public key gets through. The
key set is fetched from `OMS_OIDC_JWKS_URL` and kept for five minutes; a token naming a key id
the set does not hold fetches it again at most once a minute (the provider rotated its keys).
The role comes from `OMS_OIDC_ROLE_CLAIM` (default `oms_role`), the stores from
`OMS_OIDC_STORES_CLAIM` (default `oms_stores`), the channels from `oms_channels`.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from infra.principals import AccessError, AccessMisconfigured, Principal, Role, check_scope
from infra.settings import Settings

ALGORITHMS = ("RS256", "ES256", "EdDSA")
KEYS_KEPT_S = 300.0
REFETCH_AT_MOST_EVERY_S = 60.0


class OidcVerifier:
    def __init__(
        self,
        *,
        jwks_url: str,
        issuer: str,
        audience: str,
        role_claim: str = "oms_role",
        stores_claim: str = "oms_stores",
    ) -> None:
        if not (jwks_url and issuer and audience):
            raise AccessMisconfigured(
                "OIDC needs OMS_OIDC_JWKS_URL, OMS_OIDC_ISSUER and OMS_OIDC_AUDIENCE"
            )
        self.jwks_url, self.issuer, self.audience = jwks_url, issuer, audience
        self.role_claim, self.stores_claim = role_claim, stores_claim
        self._lock = threading.Lock()
        self._keys: KeySet | None = None
        self._fetched = 0.0

    @classmethod
    def of(cls, settings: Settings) -> OidcVerifier | None:
        """The verifier the settings ask for, or None when OIDC is not configured."""
        if not settings.oidc_jwks_url:
            return None
        return cls(
            jwks_url=settings.oidc_jwks_url,
            issuer=settings.oidc_issuer or "",
            audience=settings.oidc_audience or "",
            role_claim=settings.oidc_role_claim,
            stores_claim=settings.oidc_stores_claim,
        )

    def _fetch(self) -> KeySet:
        with urllib.request.urlopen(self.jwks_url, timeout=5) as response:  # noqa: S310 - configured
            document: Any = json.loads(response.read())
        return KeySet.import_key_set(document)

    def _key_set(self, *, refresh: bool) -> KeySet:
        """Blocking (an HTTP fetch at most every few minutes): call it off the event loop."""
        with self._lock:
            age = time.monotonic() - self._fetched
            stale = self._keys is None or age > KEYS_KEPT_S
            if stale or (refresh and age > REFETCH_AT_MOST_EVERY_S):
                try:
                    self._keys = self._fetch()
                except (OSError, ValueError, JoseError) as exc:
                    if self._keys is None:
                        raise AccessError(
                            f"the identity provider's keys are unavailable: {exc}"
                        ) from None
                else:
                    self._fetched = time.monotonic()
            assert self._keys is not None
            return self._keys

    def principal(self, token: str) -> Principal:
        """The principal a token proves; AccessError for anything else."""
        try:
            try:
                decoded = jwt.decode(token, self._key_set(refresh=False), algorithms=ALGORITHMS)
            except JoseError as exc:
                if "key" not in type(exc).__name__.lower():
                    raise
                decoded = jwt.decode(token, self._key_set(refresh=True), algorithms=ALGORITHMS)
            jwt.JWTClaimsRegistry(
                iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": self.audience},
                exp={"essential": True},
                sub={"essential": True},
            ).validate(decoded.claims)
        except (JoseError, ValueError) as exc:
            raise AccessError(f"bearer token refused: {exc}") from None
        claims = decoded.claims
        try:
            role = Role(str(claims.get(self.role_claim)))
        except ValueError:
            raise AccessError(f"the token's {self.role_claim!r} claim is not a role") from None
        stores, channels = claims.get(self.stores_claim), claims.get("oms_channels")
        if not all(v is None or isinstance(v, list) for v in (stores, channels)):
            raise AccessError("the token's stores and channels must be lists")
        try:
            check_scope(role, stores, channels)
        except ValueError as exc:
            raise AccessError(f"the token's scope: {exc}") from None
        return Principal(
            id=f"oidc:{claims['sub']}",
            role=role,
            stores=None if stores is None else frozenset(map(str, stores)),
            channels=None if channels is None else frozenset(map(str, channels)),
            via="oidc",
        )
