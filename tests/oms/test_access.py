"""Who may call what on `oms api` (oms/access.py): every route × every role × inside and
outside its scope, and each way of proving who one is (API keys, OIDC tokens, sessions).

The app is the real one with a publisher that keeps what it is given (no broker needed) and
an order lookup that knows two orders; what a route does once admitted is tested elsewhere, so
"allowed" here means "not 401/403/429".
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from pydantic import SecretStr

import oms.api
from infra.principals import (
    AccessError,
    AccessFile,
    AccessMisconfigured,
    Role,
    issue_session,
    read_session,
)
from infra.settings import Settings
from oms.access import POLICY, LogAudit, RateLimiter
from oms.operations import STORE_ACTIONS
from tests.connectors.conftest import FakePublisher

R = Role
EVERY_ROLE = list(Role)
# The specification, written out by hand (not derived from POLICY): route -> roles admitted.
STAFF = {R.ADMIN, R.STORE_MANAGER, R.KITCHEN, R.REVIEWER, R.STOCK_CLERK, R.CUSTOMER_SERVICE}
EXPECTED: dict[tuple[str, str], set[Role]] = {
    ("POST", "/orders/O-IN/review"): {R.ADMIN, R.REVIEWER},
    ("POST", "/orders/O-IN/cancel"): {R.ADMIN, R.STORE_MANAGER, R.CUSTOMER_SERVICE},
    ("POST", "/stock/SKU-1/S01/set"): {R.ADMIN, R.STORE_MANAGER, R.STOCK_CLERK},
    ("POST", "/stock/SKU-1/S01/adjust"): {R.ADMIN, R.STORE_MANAGER, R.STOCK_CLERK},
    ("POST", "/stock/SKU-1/S01/receive"): {R.ADMIN, R.STORE_MANAGER, R.STOCK_CLERK},
    ("POST", "/stock/SKU-1/S01/safety"): {R.ADMIN, R.STORE_MANAGER, R.STOCK_CLERK},
    ("GET", "/orders?store=S01&channel=webshop"): STAFF | {R.ANALYST, R.INTEGRATION},
    ("GET", "/orders/O-IN"): STAFF | {R.ANALYST, R.INTEGRATION},
    ("GET", "/events"): STAFF | {R.ANALYST, R.INTEGRATION},
    ("GET", "/reports"): {R.ADMIN, R.ANALYST},
    ("GET", "/subscriptions"): {R.ADMIN, R.ANALYST},
    ("GET", "/pipeline"): {R.ADMIN, R.ANALYST},
    ("GET", "/metrics"): {R.ADMIN, R.ANALYST},
    ("GET", "/reports/sales_by_channel"): {R.ADMIN, R.ANALYST},
    ("GET", "/reports/audit"): {R.ADMIN},
    ("GET", "/dashboard"): {R.ADMIN, R.ANALYST},
    ("GET", "/dashboard/"): {R.ADMIN, R.ANALYST},
    ("GET", "/customers/+8613900000000/export"): {R.ADMIN, R.CUSTOMER_SERVICE},
    ("GET", "/phone"): {R.ADMIN, R.STORE_MANAGER, R.CUSTOMER_SERVICE},
    ("POST", "/webhooks/phone"): {R.ADMIN, R.STORE_MANAGER, R.CUSTOMER_SERVICE},
    ("GET", "/me"): STAFF | {R.ANALYST, R.INTEGRATION},
    ("POST", "/orders/O-IN/returns"): {R.ADMIN, R.CUSTOMER_SERVICE, R.STORE_MANAGER},
    ("GET", "/orders/O-IN/returns"): {R.ADMIN, R.CUSTOMER_SERVICE, R.STORE_MANAGER},
    ("GET", "/returns"): {R.ADMIN, R.CUSTOMER_SERVICE},
    **{
        ("POST", f"/returns/O-IN/R-1/{step}"): {R.ADMIN, R.CUSTOMER_SERVICE, R.STORE_MANAGER}
        for step in ("approve", "deny", "label", "receive", "refund")
    },
    ("GET", "/stores/S01/kitchen"): {R.ADMIN, R.STORE_MANAGER, R.KITCHEN},
    ("GET", "/stores/S01/tickets"): {R.ADMIN, R.STORE_MANAGER, R.KITCHEN},
    **{
        ("POST", f"/stores/S01/orders/O-IN/{action}"): {R.ADMIN, R.STORE_MANAGER, R.KITCHEN}
        for action in STORE_ACTIONS
    },
}
# The same routes pointed outside a scope of store S01 and channel webshop.
OUTSIDE = {
    ("POST", "/orders/O-IN/cancel"): ("POST", "/orders/O-OUT/cancel"),
    ("POST", "/stock/SKU-1/S01/set"): ("POST", "/stock/SKU-1/S02/set"),
    ("POST", "/stock/SKU-1/S01/adjust"): ("POST", "/stock/SKU-1/S02/adjust"),
    ("POST", "/stock/SKU-1/S01/receive"): ("POST", "/stock/SKU-1/S02/receive"),
    ("POST", "/stock/SKU-1/S01/safety"): ("POST", "/stock/SKU-1/S02/safety"),
    ("GET", "/orders?store=S01&channel=webshop"): ("GET", "/orders?store=S02&channel=meituan"),
    ("GET", "/orders/O-IN"): ("GET", "/orders/O-OUT"),
    ("GET", "/stores/S01/kitchen"): ("GET", "/stores/S02/kitchen"),
    ("GET", "/stores/S01/tickets"): ("GET", "/stores/S02/tickets"),
    **{
        ("POST", f"/stores/S01/orders/O-IN/{action}"): ("POST", f"/stores/S02/orders/O-IN/{action}")
        for action in STORE_ACTIONS
    },
}
PUBLIC = [("GET", "/healthz"), ("GET", "/livez"), ("GET", "/openapi.json"), ("GET", "/login")]
BODIES = {
    "review": {"decision": "approve"},
    "cancel": {"reason": "customer called"},
    "set": {"counted": 3},
    "adjust": {"delta": -1, "reason": "DAMAGED"},
    "receive": {"quantity": 5},
    "safety": {"quantity": 1},
    "accept": {"ready_in_minutes": 20},
    "decline": {"reason": "out of noodles", "reason_code": "SOLD_OUT"},
    "start": {},
    "ready": {},
    "handoff": {"to": "courier", "courier": "李师傅"},
    "deliver": {},
    "complete": {},
    "accept-change": {"revision": 2},
    "refuse-change": {"revision": 2, "reason": "already in the wok", "reason_code": "COOKED"},
    "returns": {"lines": [{"sku": "MUG-CERAMIC", "quantity": 1}], "reason": "broken"},
    "approve": {"return_location": "S01"},
    "deny": {"reason": "past the window"},
    "label": {},
    "refund": {},
}
PLACES = {"O-IN": ("S01", "webshop"), "O-OUT": ("S02", "meituan")}


def scope_of(role: Role) -> dict[str, Any]:
    if role in {R.STORE_MANAGER, R.KITCHEN, R.STOCK_CLERK}:
        return {"stores": ["S01"]}
    if role is R.INTEGRATION:
        return {"channels": ["webshop"]}
    return {}


@pytest.fixture
def settings(tmp_path: Path, chdb_path: Path) -> Settings:
    return Settings(
        home=tmp_path,
        access_file=tmp_path / "access.json",
        session_secret="a session secret of the access tests, long enough",  # type: ignore[arg-type]
        clickhouse_url=f"chdb://{chdb_path}?database=access_test",
    )


@pytest.fixture
def access_file(settings: Settings) -> AccessFile:
    return AccessFile.of(settings)


@pytest.fixture
def audit() -> LogAudit:
    return LogAudit()


def make_app(
    settings: Settings, audit: LogAudit, monkeypatch: pytest.MonkeyPatch
) -> web.Application:
    async def order_place(_: web.Request, order_id: str) -> tuple[str, str] | None:
        return PLACES.get(order_id)

    monkeypatch.setattr(oms.api, "AsyncPublisher", FakePublisher)
    monkeypatch.setattr(oms.api, "_order_place", order_place)
    return oms.api.create_app(settings, audit=audit)


@pytest.fixture
async def client(
    settings: Settings, audit: LogAudit, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(make_app(settings, audit, monkeypatch))) as test_client:
        yield test_client


async def call(
    client: TestClient[Any, Any], method: str, path: str, headers: dict[str, str]
) -> int:
    action = path.rsplit("/", 1)[-1]
    if method == "POST" and path.startswith("/webhooks/phone"):
        response = await client.post(path, data={"ticket": "P-1"}, headers=headers)
    elif method == "POST":
        response = await client.post(path, json=BODIES[action], headers=headers)
    else:
        response = await client.get(path, headers=headers, allow_redirects=False)
    return response.status


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ------------------------------------------------------------------ the matrix


def test_every_route_has_a_rule_and_the_matrix_covers_every_protected_one(
    settings: Settings, audit: LogAudit, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(settings, audit, monkeypatch)
    served = {
        ("GET" if r.method == "HEAD" else r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None
    }
    assert served <= POLICY.keys(), served - POLICY.keys()
    protected = {key for key, rule in POLICY.items() if rule.kind == "roles"}
    covered = {(m, p.split("?")[0]) for m, p in EXPECTED}
    for method, template in protected:
        pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template))
        assert any(m == method and re.fullmatch(pattern, p) for m, p in covered), template


@pytest.mark.parametrize("role", EVERY_ROLE)
async def test_each_role_is_admitted_exactly_where_the_specification_says(
    role: Role, client: TestClient[Any, Any], access_file: AccessFile
) -> None:
    _, key = access_file.create_key(role, name=f"matrix {role}", **scope_of(role))
    wrong: list[str] = []
    for (method, path), admitted in EXPECTED.items():
        status = await call(client, method, path, bearer(key))
        if (status not in {401, 403}) != (role in admitted):
            wrong.append(f"{method} {path}: {status}")
        if role in admitted and (method, path) in OUTSIDE:
            out_method, out_path = OUTSIDE[(method, path)]
            status = await call(client, out_method, out_path, bearer(key))
            scoped = bool(scope_of(role))
            if (status == 403) != scoped:
                wrong.append(f"outside scope {out_method} {out_path}: {status}")
    assert not wrong, wrong


async def test_no_credentials_is_401_and_public_routes_stay_open(
    client: TestClient[Any, Any],
) -> None:
    for method, path in EXPECTED:
        status = await call(client, method, path, {"Accept": "application/json"})
        assert status == 401, (method, path, status)
    for method, path in PUBLIC:
        assert await call(client, method, path, {}) == 200, path
    page = await client.get("/dashboard/", headers={"Accept": "text/html"}, allow_redirects=False)
    assert page.status == 303 and page.headers["Location"].startswith("/login?next=")


async def test_keys_that_prove_nothing_are_401(
    client: TestClient[Any, Any], access_file: AccessFile
) -> None:
    key_id, key = access_file.create_key(Role.ADMIN)
    assert await call(client, "GET", "/me", bearer(key)) == 200
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    for bad in [forged, "oms_nothing", "oms_", "", "Basic abc"]:
        headers = {"Authorization": bad} if bad.startswith("Basic") else bearer(bad)
        assert await call(client, "GET", "/me", headers) == 401, bad
    access_file.revoke_key(key_id)
    assert await call(client, "GET", "/me", bearer(key)) == 401
    new_id, new_key = access_file.rotate_key(access_file.create_key(Role.ANALYST)[0])
    assert await call(client, "GET", "/reports", bearer(new_key)) == 200
    listed = {k["id"]: k for k in access_file.api_keys()}
    assert listed[key_id]["revoked_at"] and not listed[new_id]["revoked_at"]
    assert "secret_sha256" not in json.dumps(access_file.api_keys())
    # Only the hash is kept (the secret itself may hold "_": it is all that follows the id).
    assert key.split("_", 2)[2] not in access_file.path.read_text()


def test_scoped_roles_need_their_scope() -> None:
    with pytest.raises(ValueError, match="store"):
        AccessFile(Path("/nonexistent/a.json")).create_key(Role.STORE_MANAGER)
    with pytest.raises(ValueError, match="channel"):
        AccessFile(Path("/nonexistent/a.json")).create_key(Role.INTEGRATION)


# ------------------------------------------------------------------ the actor and the audit


async def test_the_actor_is_the_principal_and_every_command_is_audited(
    client: TestClient[Any, Any], access_file: AccessFile, audit: LogAudit
) -> None:
    key_id, key = access_file.create_key(Role.REVIEWER)
    typed = await client.post(
        "/orders/O-IN/review", json={"decision": "approve", "reviewer": "boss"}, headers=bearer(key)
    )
    assert typed.status == 400 and (await typed.json())["field"] == "reviewer"
    done = await client.post(
        "/orders/O-IN/review", json={"decision": "approve"}, headers=bearer(key)
    )
    assert done.status == 202
    denied = await client.post("/stock/SKU-1/S01/set", json={"counted": 1}, headers=bearer(key))
    assert denied.status == 403
    await client.get("/customers/+86139/export", headers=bearer(key))
    entries = [(e["actor"], e["action"], e["outcome"][:6]) for e in audit.entries]
    assert (f"key:{key_id}", "POST /orders/O-IN/review", "allowe") in entries
    assert (f"key:{key_id}", "POST /stock/SKU-1/S01/set", "denied") in entries
    assert (f"key:{key_id}", "GET /customers/+86139/export", "denied") in entries


async def test_a_command_that_cannot_be_audited_is_not_done(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infra.audit import AuditUnavailable

    class Broken(LogAudit):
        async def record(self, *args: Any, **kwargs: Any) -> None:
            raise AuditUnavailable("the audit topic is away")

    published: list[Any] = []

    class Keeping(FakePublisher):
        async def publish(self, topic: str, event: Any) -> None:
            published.append(event)

    app = make_app(settings, Broken(), monkeypatch)
    monkeypatch.setattr(oms.api, "AsyncPublisher", Keeping)
    app = oms.api.create_app(settings, audit=Broken())
    _, key = AccessFile.of(settings).create_key(Role.ADMIN)
    async with TestClient(TestServer(app)) as client:
        answer = await client.post("/stock/SKU-1/S01/set", json={"counted": 1}, headers=bearer(key))
        assert answer.status == 503 and "audit" in (await answer.json())["error"]
    assert published == []


# ------------------------------------------------------------------ cross-site and content


async def test_commands_are_json_only_and_foreign_origins_are_refused(
    client: TestClient[Any, Any], access_file: AccessFile
) -> None:
    _, key = access_file.create_key(Role.ADMIN)
    form = await client.post("/stock/SKU-1/S01/set", data={"counted": "3"}, headers=bearer(key))
    assert form.status == 415
    foreign = await client.post(
        "/stock/SKU-1/S01/set",
        json={"counted": 3},
        headers=bearer(key) | {"Origin": "https://evil.example"},
    )
    assert foreign.status == 403
    hook = await client.post(
        "/webhooks/webshop", data=b"{}", headers={"Origin": "https://evil.example"}
    )
    assert hook.status == 403


async def test_a_browser_session_signs_in_needs_csrf_and_signs_out(
    client: TestClient[Any, Any], access_file: AccessFile
) -> None:
    access_file.create_user("li.na", "a long enough password", Role.STORE_MANAGER, stores=["S01"])
    wrong = await client.post("/login", data={"user": "li.na", "password": "guess"})
    assert wrong.status == 401
    origin = {"Origin": str(client.make_url("")).rstrip("/")}
    signed_in = await client.post(
        "/login",
        data={"user": "li.na", "password": "a long enough password", "next": "//evil.example/"},
        headers=origin,
        allow_redirects=False,
    )
    assert signed_in.status == 303 and signed_in.headers["Location"] == "/dashboard/"
    cookie = signed_in.cookies["oms_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["secure"]
    client.session.cookie_jar.update_cookies({"oms_session": cookie.value})
    me = await (await client.get("/me")).json()
    assert me["id"] == "user:li.na" and me["stores"] == ["S01"]
    body = {"counted": 2}
    no_token = await client.post("/stock/SKU-1/S01/set", json=body, headers=origin)
    assert no_token.status == 403
    csrf = {"X-CSRF-Token": me["csrf_token"]}
    no_origin = await client.post("/stock/SKU-1/S01/set", json=body, headers=csrf)
    assert no_origin.status == 403
    done = await client.post("/stock/SKU-1/S01/set", json=body, headers=origin | csrf)
    assert done.status == 202
    outside = await client.post("/stock/SKU-1/S02/set", json=body, headers=origin | csrf)
    assert outside.status == 403
    access_file.remove_user("li.na")  # removed: signed out at once
    assert (await client.get("/me")).status == 401


def test_sessions_cannot_be_forged_or_kept_past_expiry() -> None:
    secret = b"s" * 32
    cookie = issue_session(secret, "li.na")
    assert read_session(secret, cookie).user == "li.na"
    with pytest.raises(AccessError, match="forged"):
        read_session(b"t" * 32, cookie)
    payload, signature = cookie.split(".")
    with pytest.raises(AccessError):
        read_session(secret, payload[:-2] + "xx." + signature)
    with pytest.raises(AccessError, match="expired"):
        read_session(secret, issue_session(secret, "li.na", seconds=-1))


def test_the_api_does_not_start_without_a_session_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oms.api, "AsyncPublisher", FakePublisher)
    settings = Settings(home=tmp_path, access_file=tmp_path / "a.json", session_secret=None)
    with pytest.raises(AccessMisconfigured, match="OMS_SESSION_SECRET"):
        oms.api.create_app(settings)
    (tmp_path / "a.json").write_text("{not json")
    secret = "x" * 40
    broken = settings.model_copy(update={"session_secret": SecretStr(secret)})
    with pytest.raises(AccessMisconfigured, match="cannot be read"):
        oms.api.create_app(broken)


# ------------------------------------------------------------------ OIDC


@pytest.fixture
def identity_provider() -> Iterator[tuple[str, RSAKey]]:
    """A JWKS served over HTTP on a local port, and its private key."""
    key = RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256", "use": "sig"})
    document = json.dumps(KeySet([key]).as_dict(private=False)).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *_: Any) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/jwks.json", key
    server.shutdown()


def token(key: RSAKey, **claims: Any) -> str:
    base = {"iss": "https://id.example", "aud": "oms", "sub": "u-1", "exp": time.time() + 60}
    return jwt.encode({"alg": "RS256", "kid": "k1"}, base | claims, key)


async def test_oidc_tokens_are_verified_against_the_providers_keys(
    settings: Settings,
    audit: LogAudit,
    monkeypatch: pytest.MonkeyPatch,
    identity_provider: tuple[str, RSAKey],
) -> None:
    url, key = identity_provider
    configured = settings.model_copy(
        update={"oidc_jwks_url": url, "oidc_issuer": "https://id.example", "oidc_audience": "oms"}
    )
    app = make_app(configured, audit, monkeypatch)
    other = RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256"})
    async with TestClient(TestServer(app)) as client:
        good = token(key, oms_role="analyst")
        assert await call(client, "GET", "/reports", bearer(good)) == 200
        assert await call(client, "POST", "/orders/O-IN/review", bearer(good)) == 403
        refused = {
            "wrong signer": token(other, oms_role="admin"),
            "expired": token(key, oms_role="admin", exp=time.time() - 5),
            "wrong audience": token(key, oms_role="admin", aud="someone-else"),
            "wrong issuer": token(key, oms_role="admin", iss="https://evil.example"),
            "no role": token(key),
            "store role without stores": token(key, oms_role="store_manager"),
            "alg none": _unsigned(
                {
                    "iss": "https://id.example",
                    "aud": "oms",
                    "sub": "x",
                    "exp": time.time() + 60,
                    "oms_role": "admin",
                }
            ),  # fmt: skip
        }
        for why, bad in refused.items():
            assert await call(client, "GET", "/reports", bearer(bad)) == 401, why
        scoped = token(key, oms_role="store_manager", oms_stores=["S01"])
        assert await call(client, "GET", "/orders/O-IN", bearer(scoped)) != 403
        assert await call(client, "GET", "/orders/O-OUT", bearer(scoped)) == 403


def _unsigned(claims: dict[str, Any]) -> str:
    import base64

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part(claims)}."


# ------------------------------------------------------------------ limits and headers


def test_the_rate_limiter_lets_a_burst_through_then_says_when_to_come_back() -> None:
    limiter = RateLimiter(10, burst=3)
    assert [limiter.wait_s("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.wait_s("a", now=0.0) == pytest.approx(0.1)
    assert limiter.wait_s("b", now=0.0) == 0.0  # another caller has its own bucket
    assert limiter.wait_s("a", now=0.1) == 0.0


async def test_over_the_limit_is_429_with_retry_after_and_answers_carry_security_headers(
    settings: Settings, audit: LogAudit, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = settings.model_copy(update={"rate_per_ip": 1.0})
    async with TestClient(TestServer(make_app(slow, audit, monkeypatch))) as client:
        statuses = [(await client.get("/openapi.json")).status for _ in range(4)]
        assert statuses[:2] == [200, 200] and statuses[-1] == 429
        limited = await client.get("/openapi.json")
        assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
        health = await client.get("/healthz")
        assert health.status == 200
        assert health.headers["X-Content-Type-Options"] == "nosniff"
        assert health.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in health.headers["Content-Security-Policy"]


def test_the_command_line_makes_lists_rotates_and_revokes_keys_and_users(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from infra.settings import get_settings
    from oms.cli import main

    env = {"OMS_ACCESS_FILE": str(tmp_path / "a.json"), "OMS_NEW_PASSWORD": "long enough pass"}
    runner = CliRunner(env=env)
    get_settings.cache_clear()
    try:
        made = runner.invoke(main, ["keys", "create", "--role", "stock_clerk", "--store", "S01"])
        assert made.exit_code == 0, made.output
        key_id, key = made.output.split()[1], made.output.split()[-1]
        assert key.startswith("oms_") and key not in (tmp_path / "a.json").read_text()
        unscoped = runner.invoke(main, ["keys", "create", "--role", "stock_clerk"])
        assert unscoped.exit_code != 0 and "--store" in unscoped.output
        rotated = runner.invoke(main, ["keys", "rotate", key_id])
        assert rotated.exit_code == 0 and f"replaces {key_id}" in rotated.output
        listed = runner.invoke(main, ["keys", "list"]).output
        assert f"{key_id}  stock_clerk" in listed and "revoked" in listed and key not in listed
        assert runner.invoke(main, ["keys", "revoke", "nope"]).exit_code != 0
        user = runner.invoke(main, ["users", "create", "li.na", "--role", "analyst"])
        assert user.exit_code == 0, user.output
        who = AccessFile(tmp_path / "a.json").user_principal("li.na", "long enough pass")
        assert who.role is Role.ANALYST
        assert runner.invoke(main, ["users", "remove", "li.na"]).exit_code == 0
    finally:
        get_settings.cache_clear()


def test_a_development_session_key_is_made_once_owner_only(tmp_path: Path) -> None:
    from infra.principals import ensure_local_session_secret, session_secret

    path = ensure_local_session_secret(tmp_path)
    first = path.read_bytes()
    assert ensure_local_session_secret(tmp_path).read_bytes() == first  # kept, not replaced
    assert path.stat().st_mode & 0o777 == 0o600
    assert session_secret(Settings(home=tmp_path, session_secret=None)) == first.strip()


async def test_sign_ins_and_webhooks_have_limits_of_their_own(
    settings: Settings, audit: LogAudit, monkeypatch: pytest.MonkeyPatch
) -> None:
    tight = settings.model_copy(
        update={"rate_per_ip": 1.0, "sign_ins_per_ip_minute": 4.0, "webhook_rate_per_ip": 1000.0}
    )
    async with TestClient(TestServer(make_app(tight, audit, monkeypatch))) as client:
        tries = [
            (await client.post("/login", data={"user": "x", "password": "y"})).status
            for _ in range(3)
        ]
        assert tries == [401, 401, 429]  # a burst of 2, then one every 15 s
        # A platform pushing 20 webhooks at once is not held to the operators' limit of 1/s.
        hooks = [(await client.post("/webhooks/webshop", data=b"{}")).status for _ in range(20)]
        assert 429 not in hooks
