"""Who may call what on `oms api`: the route policy, and the middlewares that enforce it.

Every route the app serves has a rule in POLICY (a test fails for a route without one, and the
middleware refuses such a route with 403: fail closed). A rule says who may call it:

- `public`: anyone (health, the OpenAPI document, the login page, the dashboard's static files,
  a customer's tracking page, whose token is its own credential);
- `platform`: a sales platform, which proves itself by the webhook's signature (connectors/);
- a set of roles (infra/principals.py), optionally held to the caller's stores: the store in
  the path (`{location}`), the store of the order in the path (looked up in the read models),
  or the `store` (and for integrations `channel`) a listing is filtered by.

The middlewares, outermost first: security headers on every answer; a per-address rate limit;
authentication (API key or OIDC token as `Authorization: Bearer`, or the session cookie);
the rule (401 without credentials, 403 for the wrong role or outside the caller's scope);
cross-site protection for cookie sessions; a per-principal rate limit; and the audit entry of
every command and every read of personal data, written before the handler runs, so that what
cannot be audited is not done (503).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from html import escape
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

from connectors.webhooks import STAFF_ONLY_CHANNELS
from infra.audit import AuditEntry, AuditTrail, AuditUnavailable, PrincipalKind
from infra.http import problem
from infra.oidc import OidcVerifier
from infra.principals import (
    KEY_PREFIX,
    SESSION_COOKIE,
    SESSION_SECONDS,
    AccessError,
    AccessFile,
    AccessMisconfigured,
    Principal,
    Role,
    Session,
    issue_session,
    read_session,
    session_secret,
)
from infra.settings import Settings
from oms.operations import STORE_ACTIONS

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
EVERYONE_STAFF = frozenset(
    {
        Role.ADMIN,
        Role.STORE_MANAGER,
        Role.KITCHEN,
        Role.REVIEWER,
        Role.STOCK_CLERK,
        Role.CUSTOMER_SERVICE,
    }
)
ORDER_READERS = EVERYONE_STAFF | {Role.ANALYST, Role.INTEGRATION}
STOCK_KEEPERS = frozenset({Role.ADMIN, Role.STORE_MANAGER, Role.STOCK_CLERK})
STORE_STAFF = frozenset({Role.ADMIN, Role.STORE_MANAGER, Role.KITCHEN})  # a store's steps
RETURNS_DESK = frozenset({Role.ADMIN, Role.CUSTOMER_SERVICE, Role.STORE_MANAGER})
# The steps of a return over HTTP (oms.returns.RETURN_STEPS; a route without a rule is refused).
RETURN_STEP_NAMES = ("approve", "deny", "label", "receive", "refund")
PHONE_TAKERS = frozenset({Role.ADMIN, Role.STORE_MANAGER, Role.CUSTOMER_SERVICE})
ANALYSTS = frozenset({Role.ADMIN, Role.ANALYST})


@dataclass(frozen=True)
class Rule:
    """Who may call a route. `roles` None: see `kind`."""

    kind: str  # "public" | "platform" | "roles"
    roles: frozenset[Role] = frozenset()
    scope: str | None = None  # "location" (path) | "order" (path) | "listing" (query)
    personal_data: bool = False  # a read of personal data: audited like a command


PUBLIC = Rule("public")

POLICY: dict[tuple[str, str], Rule] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/livez"): PUBLIC,  # a status word, nothing else (oms/health.py)
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/login"): PUBLIC,
    ("POST", "/login"): PUBLIC,
    ("POST", "/logout"): PUBLIC,
    ("GET", "/dashboard/static/{filename}"): PUBLIC,  # code and style, no data
    ("GET", "/kitchen/static/{filename}"): PUBLIC,  # code and style, no data
    # A customer's parcel, from a label's QR code: the token's MAC is the credential, and the
    # page shows no personal data but a masked first name and a city (oms/tracking_page.py).
    ("GET", "/track/{token}"): PUBLIC,
    ("GET", "/stores/{location}/kitchen"): Rule("roles", STORE_STAFF, "location"),
    ("GET", "/stores/{location}/tickets"): Rule("roles", STORE_STAFF, "location"),
    ("GET", "/me"): Rule("roles", ORDER_READERS),
    # Platforms sign their webhooks; the phone channel is staff typing (rule below).
    ("POST", "/webhooks/{channel}"): Rule("platform"),
    ("POST", "/webhooks/{channel}/{kind}"): Rule("platform"),  # cancellations, refunds, riders
    # Carriers' tracking pushes: each verified by its adapter (a signature, or SF's route query).
    ("POST", "/carriers/{carrier}/push"): Rule("platform"),
    ("GET", "/phone"): Rule("roles", PHONE_TAKERS),
    # Commands.
    ("POST", "/orders/{order_id}/review"): Rule("roles", frozenset({Role.ADMIN, Role.REVIEWER})),
    ("POST", "/orders/{order_id}/cancel"): Rule(
        "roles", frozenset({Role.ADMIN, Role.STORE_MANAGER, Role.CUSTOMER_SERVICE}), "order"
    ),
    **{
        ("POST", f"/stores/{{location}}/orders/{{order_id}}/{action}"): Rule(
            "roles", STORE_STAFF, "location"
        )
        for action in STORE_ACTIONS
    },
    # The returns desk (oms/returns.py): customer service, and a store manager for its orders.
    ("POST", "/orders/{order_id}/returns"): Rule("roles", RETURNS_DESK, "order"),
    ("GET", "/orders/{order_id}/returns"): Rule("roles", RETURNS_DESK, "order"),
    **{
        ("POST", f"/returns/{{order_id}}/{{return_id}}/{step}"): Rule(
            "roles", RETURNS_DESK, "order"
        )
        for step in RETURN_STEP_NAMES
    },
    ("GET", "/returns"): Rule("roles", frozenset({Role.ADMIN, Role.CUSTOMER_SERVICE})),
    ("POST", "/stock/{sku}/{location}/set"): Rule("roles", STOCK_KEEPERS, "location"),
    ("POST", "/stock/{sku}/{location}/adjust"): Rule("roles", STOCK_KEEPERS, "location"),
    ("POST", "/stock/{sku}/{location}/receive"): Rule("roles", STOCK_KEEPERS, "location"),
    ("POST", "/stock/{sku}/{location}/safety"): Rule("roles", STOCK_KEEPERS, "location"),
    # Reads.
    ("GET", "/orders"): Rule("roles", ORDER_READERS, "listing"),
    ("GET", "/orders/{order_id}"): Rule("roles", ORDER_READERS, "order"),
    # The logs as JSON pages, each caller held to its stores and channels (oms/feed.py).
    ("GET", "/events"): Rule("roles", ORDER_READERS | ANALYSTS),
    ("GET", "/reports"): Rule("roles", ANALYSTS),
    ("GET", "/subscriptions"): Rule("roles", ANALYSTS),  # outbound webhooks and their lag
    ("GET", "/pipeline"): Rule("roles", ANALYSTS),  # consumers' lag, messages per minute
    # Prometheus text: no personal data, but the business's volumes; a scraper's key.
    ("GET", "/metrics"): Rule("roles", ANALYSTS),
    ("GET", "/reports/{name}"): Rule("roles", ANALYSTS),
    ("GET", "/dashboard"): Rule("roles", ANALYSTS),
    ("GET", "/dashboard/"): Rule("roles", ANALYSTS),
    ("GET", "/customers/{customer}/export"): Rule(
        "roles", frozenset({Role.ADMIN, Role.CUSTOMER_SERVICE}), personal_data=True
    ),
}
PHONE_WEBHOOK = Rule("roles", PHONE_TAKERS)  # the channels staff type in (the phone form)
# Who did what from where is the owner's to read, and reading it is itself audited.
AUDIT_REPORT = Rule("roles", frozenset({Role.ADMIN}), personal_data=True)


def rule_for(request: web.Request) -> Rule | None:
    """The rule of the route `request` matched; None for a route POLICY does not know."""
    route = request.match_info.route
    if route.resource is None:  # no route matched: the handler answers 404/405
        return PUBLIC
    method = "GET" if request.method == "HEAD" else request.method
    rule = POLICY.get((method, route.resource.canonical))
    channel = request.match_info.get("channel")
    if rule is not None and rule.kind == "platform" and channel in STAFF_ONLY_CHANNELS:
        return PHONE_WEBHOOK
    if route.resource.canonical == "/reports/{name}" and request.match_info["name"] == "audit":
        return AUDIT_REPORT
    return rule


# ------------------------------------------------------------------ audit


class AuditSink(Protocol):
    """Where the access middleware writes what was done and by whom (the audit trail)."""

    async def record(
        self, request: web.Request, principal: Principal | None, *, outcome: str, status: int
    ) -> None: ...


class LogAudit:
    """An audit sink that only logs: for tests of the policy alone."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    async def record(
        self, request: web.Request, principal: Principal | None, *, outcome: str, status: int
    ) -> None:
        self.entries.append(
            {
                "actor": principal.id if principal else None,
                "action": f"{request.method} {request.path}",
                "outcome": outcome,
                "status": status,
            }
        )


class TrailAudit:
    """The audit sink of `oms api`: entries on the hash-chained audit topic (infra/audit.py).
    A customer named in a path is recorded by their pseudonymous key, never as typed: the
    topic is kept forever."""

    def __init__(self, settings: Settings, trail: AuditTrail | None = None) -> None:
        self.settings = settings
        self.trail = trail or AuditTrail.from_settings(settings)

    def _resource(self, request: web.Request) -> str:
        found = dict(request.match_info)
        if "customer" in found:
            from infra.keystore import MasterKey
            from oms.privacy import subject_for

            pepper = MasterKey.from_settings(self.settings).pepper
            try:
                found["customer"] = subject_for(found["customer"], pepper)
            except ValueError:  # not a customer id at all: nobody's data, nothing to hide
                found["customer"] = "(not a customer id)"
        return ",".join(f"{k}={v}" for k, v in sorted(found.items()))

    async def record(
        self, request: web.Request, principal: Principal | None, *, outcome: str, status: int
    ) -> None:
        route = request.match_info.route.resource
        kinds: dict[str, PrincipalKind] = {"api_key": "api_key", "session": "user", "oidc": "token"}
        verdict, _, reason = outcome.partition(": ")
        entry = AuditEntry(
            principal=principal.id if principal else "anonymous",
            principal_kind=kinds[principal.via] if principal else "user",
            role=principal.role.value if principal else "",
            action=f"{request.method} {route.canonical if route else request.path}",
            resource=self._resource(request),
            outcome="allowed"
            if verdict == "allowed"
            else "completed"
            if verdict == "signed in"
            else "denied",
            status=status or None,
            reason=reason or ("" if verdict in {"allowed", "signed in"} else verdict),
            client_ip=client_address(request, self.settings.trusted_proxies),
            user_agent=request.headers.get("User-Agent", ""),
            request_id=request.headers.get("X-Request-Id", ""),
        )
        await self.trail.record(entry)

    async def close(self) -> None:
        await self.trail.close()


# ------------------------------------------------------------------ rate limits


class RateLimiter:
    """Token buckets per key: `rate` a second, bursts of `burst`. Idle full buckets are
    dropped when the table grows, so memory stays bounded by the busy keys."""

    def __init__(self, rate: float, *, burst: float | None = None, most_keys: int = 10_000):
        self.rate, self.burst, self.most_keys = rate, burst or max(1.0, 2 * rate), most_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def wait_s(self, key: str, now: float | None = None) -> float:
        """0 if a request of `key` may go now (and takes a token), else seconds until one may."""
        now = time.monotonic() if now is None else now
        tokens, then = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > self.most_keys:
            self._prune(now)
        return 0.0

    def _prune(self, now: float) -> None:
        full = [
            k
            for k, (t, then) in self._buckets.items()
            if t + (now - then) * self.rate >= self.burst
        ]
        for k in full:
            del self._buckets[k]


def _too_many(wait_s: float, what: str) -> web.Response:
    answer = problem(429, f"too many requests from this {what}; retry later")
    answer.headers["Retry-After"] = str(max(1, math.ceil(wait_s)))
    return answer


def client_address(request: web.Request, trusted_proxies: list[str]) -> str:
    """The caller's address; through a trusted proxy, the last untrusted X-Forwarded-For hop."""
    remote = request.remote or "unknown"
    if remote not in trusted_proxies:
        return remote
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if hop not in trusted_proxies:
            return hop
    return remote


# ------------------------------------------------------------------ authentication


@dataclass
class Access:
    """What the middlewares share: the access file, the session secret, the OIDC verifier,
    the audit sink, the rate limiters and the read-model lookup for order scopes."""

    settings: Settings
    file: AccessFile
    secret: bytes
    oidc: OidcVerifier | None
    audit: AuditSink
    per_ip: RateLimiter
    webhooks_per_ip: RateLimiter
    sign_ins_per_ip: RateLimiter
    per_principal: RateLimiter
    order_place: Callable[[web.Request, str], Awaitable[tuple[str, str] | None]]

    @classmethod
    def of(
        cls,
        settings: Settings,
        audit: AuditSink,
        order_place: Callable[[web.Request, str], Awaitable[tuple[str, str] | None]],
    ) -> Access:
        return cls(
            settings=settings,
            file=AccessFile.of(settings),
            secret=session_secret(settings),
            oidc=OidcVerifier.of(settings),
            audit=audit,
            per_ip=RateLimiter(settings.rate_per_ip),
            webhooks_per_ip=RateLimiter(settings.webhook_rate_per_ip),
            # A burst of a few tries, then one every few seconds: guessing passwords is slow,
            # and so is each guess's scrypt, which the limit keeps from tying up the CPU.
            sign_ins_per_ip=RateLimiter(
                settings.sign_ins_per_ip_minute / 60,
                burst=max(1.0, settings.sign_ins_per_ip_minute / 2),
            ),
            per_principal=RateLimiter(settings.rate_per_principal),
            order_place=order_place,
        )

    async def authenticate(self, request: web.Request) -> tuple[Principal | None, Session | None]:
        """The caller, if it shows credentials; AccessError if they prove nothing."""
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AccessError("Authorization must be 'Bearer <API key or token>'")
            token = token.strip()
            if token.startswith(KEY_PREFIX):
                return self.file.key_principal(token), None
            if self.oidc is None:
                raise AccessError("bearer tokens are not configured here (no OMS_OIDC_JWKS_URL)")
            oidc = self.oidc
            return await asyncio.to_thread(oidc.principal, token), None
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            session = read_session(self.secret, cookie)
            return self.file.user_principal(session.user), session
        return None, None


ACCESS = web.AppKey("access", Access)
CALLER = web.RequestKey("principal", Principal)  # the authenticated caller of a request


def _same_origin(request: web.Request) -> bool:
    """Whether the page that sent an unsafe request is this API's own (Origin, else Referer)."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source:
        return False
    parsed = urllib.parse.urlsplit(source)
    return parsed.netloc == request.host


def _cross_site(request: web.Request, session: Session | None) -> str | None:
    """Why an unsafe request must be refused as cross-site, or None."""
    if request.method in SAFE_METHODS:
        return None
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urllib.parse.urlsplit(origin).netloc != request.host:
        return f"a request from {origin} may not act on this API"
    if session is None:  # API keys and tokens: a browser never attaches them by itself
        return None
    if not _same_origin(request):
        return "a signed-in browser request needs an Origin or Referer of this site"
    form = request.content_type in {"application/x-www-form-urlencoded", "multipart/form-data"}
    if not form and request.headers.get("X-CSRF-Token") != session.csrf:
        return "X-CSRF-Token is missing or wrong (GET /me gives it)"
    return None


async def _in_scope(access: Access, request: web.Request, rule: Rule, who: Principal) -> str | None:
    """Why `who` may not act where the request points, or None."""
    if rule.scope is None or (who.stores is None and who.channels is None):
        return None
    if rule.scope == "location":
        store = request.match_info["location"]
        return None if who.covers_store(store) else f"{who.id} does not work for store {store}"
    if rule.scope == "listing":
        wanted_store, channel = request.query.get("store"), request.query.get("channel")
        if who.stores is not None and not who.covers_store(wanted_store):
            return f"give store= one of your stores ({', '.join(sorted(who.stores))})"
        if who.channels is not None and not who.covers_channel(channel):
            return f"give channel= one of your channels ({', '.join(sorted(who.channels))})"
        return None
    place = await access.order_place(request, request.match_info["order_id"])
    if place is None:
        return "the order is not in the read models yet, so its store cannot be checked"
    store, channel = place
    if not who.covers_store(store) or not who.covers_channel(channel):
        return f"the order belongs to a store or channel outside {who.id}'s scope"
    return None


def _wants_page(request: web.Request) -> bool:
    return request.method == "GET" and "text/html" in request.headers.get("Accept", "")


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'",
    )
    forwarded_https = request.headers.get("X-Forwarded-Proto") == "https"
    if request.secure or forwarded_https:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response


@web.middleware
async def enforce(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authentication, the route's rule, cross-site checks, rate limits and the audit entry."""
    access = request.app[ACCESS]
    address = client_address(request, access.settings.trusted_proxies)
    rule = rule_for(request)
    probe = request.path in {"/healthz", "/livez", "/readyz"}
    if not probe and (wait := _address_wait(access, request, rule, address)):
        return _too_many(wait, "address")
    if rule is None:
        log.error("no access rule for %s %s: refused", request.method, request.path)
        return problem(403, "this route has no access rule, so nobody may call it")
    if rule.kind in {"public", "platform"}:
        if request.method not in SAFE_METHODS and (why := _cross_site(request, None)):
            return problem(403, why)
        return await handler(request)
    try:
        who, session = await access.authenticate(request)
    except AccessError as exc:
        await _audit(access, request, None, outcome=f"unauthenticated: {exc}", status=401)
        return _unauthenticated(request, str(exc))
    if who is None:
        return _unauthenticated(request, "sign in, or send 'Authorization: Bearer <API key>'")
    denied = None
    if who.role not in rule.roles:
        allowed = ", ".join(sorted(r.value for r in rule.roles))
        denied = f"{who.id} is a {who.role.value}; this needs one of: {allowed}"
    else:
        denied = _cross_site(request, session) or await _in_scope(access, request, rule, who)
    if denied:
        await _audit(access, request, who, outcome=f"denied: {denied}", status=403)
        return problem(403, denied)
    if wait := access.per_principal.wait_s(who.id):
        return _too_many(wait, "caller")
    request[CALLER] = who
    if request.method not in SAFE_METHODS or rule.personal_data:
        try:
            await access.audit.record(request, who, outcome="allowed", status=0)
        except AuditUnavailable as exc:
            return problem(503, f"the audit trail is unavailable, so nothing was done: {exc}")
    return await handler(request)


def _address_wait(access: Access, request: web.Request, rule: Rule | None, address: str) -> float:
    """Seconds the address must wait, by the limit of what it calls: platforms push webhooks
    from a few addresses at their own pace, people sign in rarely, the rest is in between."""
    if rule is not None and rule.kind == "platform":
        return access.webhooks_per_ip.wait_s(address)
    if request.path == "/login" and request.method == "POST":
        return access.sign_ins_per_ip.wait_s(address)
    return access.per_ip.wait_s(address)


async def _audit(
    access: Access, request: web.Request, who: Principal | None, *, outcome: str, status: int
) -> None:
    """A refused attempt is audited on a best-effort basis: refusing needs no trail."""
    try:
        await access.audit.record(request, who, outcome=outcome, status=status)
    except AuditUnavailable as exc:
        log.warning("audit of a refused %s %s failed: %s", request.method, request.path, exc)


def _unauthenticated(request: web.Request, reason: str) -> web.StreamResponse:
    if _wants_page(request):
        target = urllib.parse.quote(request.path_qs, safe="")
        raise web.HTTPSeeOther(f"/login?next={target}")
    answer = problem(401, reason)
    answer.headers["WWW-Authenticate"] = 'Bearer realm="oms"'
    return answer


def principal_of(request: web.Request) -> Principal:
    """The authenticated caller of a route whose rule names roles."""
    return request[CALLER]


# ------------------------------------------------------------------ login pages

_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>OrderStream: sign in</title>
<style>body{{font-family:sans-serif;max-width:24rem;margin:3rem auto}}
label{{display:block;margin:.8rem 0}}input{{width:100%;font-size:1.1rem}}</style></head>
<body><h1>Sign in</h1><p>{message}</p>
<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<label>User <input name="user" autocomplete="username" required></label>
<label>Password <input name="password" type="password" autocomplete="current-password"
required></label><button type="submit">Sign in</button></form></body></html>
"""


def _next_page(raw: str | None) -> str:
    """Only a path of this site: never `//elsewhere` or a full URL (an open redirect)."""
    if raw and raw.startswith("/") and not raw.startswith("//") and "\\" not in raw:
        return raw
    return "/dashboard/"


async def login_page(request: web.Request) -> web.Response:
    page = _LOGIN_PAGE.format(message="", next=escape(_next_page(request.query.get("next"))))
    return web.Response(text=page, content_type="text/html")


async def login(request: web.Request) -> web.StreamResponse:
    access = request.app[ACCESS]
    form = await request.post()
    user, password = str(form.get("user", "")), str(form.get("password", ""))
    target = _next_page(str(form.get("next", "")))
    try:
        who = await asyncio.to_thread(access.file.user_principal, user, password)
    except AccessError as exc:
        await _audit(access, request, None, outcome=f"sign-in of {user!r} refused", status=401)
        if "text/html" not in request.headers.get("Accept", ""):  # a script, not the form
            return problem(401, str(exc))
        page = _LOGIN_PAGE.format(message=escape(str(exc)), next=escape(target))
        return web.Response(text=page, content_type="text/html", status=401)
    await _audit(access, request, who, outcome="signed in", status=303)
    response = web.HTTPSeeOther(target)
    response.set_cookie(
        SESSION_COOKIE,
        issue_session(access.secret, user),
        max_age=SESSION_SECONDS,
        httponly=True,
        secure=access.settings.secure_cookies,
        samesite="Strict",
        path="/",
    )
    return response


async def logout(_: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def me(request: web.Request) -> web.Response:
    """The caller as the API sees it; for a browser session, also its CSRF token."""
    access = request.app[ACCESS]
    body = principal_of(request).describe()
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and not request.headers.get("Authorization"):
        body["csrf_token"] = read_session(access.secret, cookie).csrf
    response = web.json_response(body)
    response.headers["Cache-Control"] = "no-store"
    return response


def add_routes(
    app: web.Application,
    settings: Settings,
    *,
    audit: AuditSink,
    order_place: Callable[[web.Request, str], Awaitable[tuple[str, str] | None]],
) -> None:
    """The login routes, and what the middlewares need; AccessMisconfigured (fail closed) when
    there is no session secret or the access file cannot be read."""
    access = Access.of(settings, audit, order_place)
    access.file.api_keys()  # read it now: a broken access file stops the start, not a request
    app[ACCESS] = access
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/me", me)


__all__ = [
    "ACCESS",
    "POLICY",
    "AccessMisconfigured",
    "AuditSink",
    "AuditUnavailable",
    "LogAudit",
    "RateLimiter",
    "Rule",
    "add_routes",
    "enforce",
    "principal_of",
    "rule_for",
    "security_headers",
]
