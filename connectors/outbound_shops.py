"""Calls to the shop platforms whose published APIs take an order's progress: Square (Orders
API) and WooCommerce (REST API v3). Same `PlatformClient` interface as the delivery platforms'
clients (connectors/outbound.py): `send` makes one `PlatformCall`, `already_done` answers the
outbox's question after a crash. Formats and sources: docs/connectors.md, "Telling the
platforms".

Square (https://connect.squareup.com/v2/orders/{order_id}; `Authorization: Bearer <access
token>`, `Square-Version: <date>`): the order's fulfillments are moved PROPOSED → RESERVED
(the store took it) → PREPARED (ready) → COMPLETED (handed over), or to CANCELED.
RetrieveOrder (GET) gives the order's `version`, `location_id` and fulfillment `uid`s;
UpdateOrder (PUT) sends the sparse order `{"order": {"location_id", "version", "fulfillments":
[{"uid", "state"}]}, "idempotency_key"}`. Square's optimistic concurrency refuses a stale
`version` (error code VERSION_MISMATCH: read again, try again); its idempotency key makes a
repeated identical request a no-op that answers the order as it is. Square documents that a
key reused with a *different* request is answered 200 without applying it, so the key is the
outbox call key plus the version it applies to (`<call key>-v<version>`): the same call at the
same version is deduplicated by Square, a call at a newer version is a new request, and a
version once moved past cannot be applied to again (optimistic concurrency): at most one update
per call. Errors: `{"errors": [{"category", "code", "detail", "field"}]}`. Sources: Square's API
reference, UpdateOrder and RetrieveOrder (developer.squareup.com/reference/square/orders/
update-order: "Orders with a COMPLETED or CANCELED state cannot be updated"; "reattempt it with
the same idempotency key without worrying about creating duplicate updates"), "Update orders"
(developer.squareup.com/docs/orders-api/manage-orders/update-orders: version required, new
idempotency key per update) and the SDK square/square-python-sdk (src/square/orders/
raw_client.py `get` / `update`, types/fulfillment_state.py, types/error.py, core/
client_wrapper.py: Bearer token and Square-Version, environment.py: the base URLs).

WooCommerce (https://<store>/wp-json/wc/v3/; HTTP Basic with the REST API consumer key and
secret, which WooCommerce accepts over HTTPS only, so a plain-http store URL is refused except
on the loopback): PUT `orders/<id>` `{"status"}` (processing, completed, cancelled) after a GET
of the order (an order already there or past it is not put back), and POST `orders/<id>/notes`
`{"note", "customer_note": true}` for "ready for pickup", which has no status (the customer is
shown and emailed the note). Status check: GET `orders/<id>` (`status`) and GET
`orders/<id>/notes?type=customer` (the note's exact text). Errors: `{"code", "message", "data":
{"status"}}`. Sources: the
WooCommerce REST API documentation, woocommerce/woocommerce-rest-api-docs
(source/includes/wp-api-v3/_authentication.md "Authentication over HTTPS", _orders.md "Update
an order" and the status options, _order-notes.md "Create an order note" / "List all order
notes" with `type`).
"""

from __future__ import annotations

import base64
import html
import ipaddress
import json
import urllib.parse
import urllib.request
from datetime import datetime
from typing import Any

from connectors.outbound import (
    MissingCredentials,
    PermanentFailure,
    TransientFailure,
    Transport,
    Unsupported,
    urllib_transport,
)
from events.platform_calls import CallKind, PlatformCall
from infra.settings import Settings

# ---------------------------------------------------------------- Square

SQUARE_STATES: dict[CallKind, str] = {
    CallKind.CONFIRM: "RESERVED",
    CallKind.READY: "PREPARED",
    CallKind.COMPLETE: "COMPLETED",
    CallKind.CANCEL: "CANCELED",
}
_RANK = {"PROPOSED": 0, "RESERVED": 1, "PREPARED": 2, "COMPLETED": 3}
_TERMINAL = frozenset({"COMPLETED", "CANCELED", "FAILED"})
# Square's error codes worth another try (besides HTTP 429 and 5xx): a stale version is read
# again and the update made at the new one.
SQUARE_TRANSIENT = frozenset(
    {"VERSION_MISMATCH", "RATE_LIMITED", "INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE"}
)


class AlreadyPast(Unsupported):
    """The order is already past where the call would take it (cancelled, failed): nothing to
    tell any more (the outbox records it skipped, with this reason)."""


class SquareClient:
    name = "square"

    def __init__(
        self,
        *,
        access_token: str,
        api_url: str,
        square_version: str,
        transport: Transport = urllib_transport,
    ) -> None:
        self.access_token, self.square_version = access_token, square_version
        self.api_url = api_url.rstrip("/") + "/"
        self.transport = transport

    @classmethod
    def from_settings(cls, settings: Settings) -> SquareClient:
        token = _secret(settings.square_access_token)
        if not token:
            raise MissingCredentials("OMS_SQUARE_ACCESS_TOKEN is not set: Square cannot be called")
        return cls(
            access_token=token,
            api_url=settings.square_api_url,
            square_version=settings.square_version,
        )

    def send(self, call: PlatformCall, *, now: datetime) -> str:
        target = _square_target(call)
        order = self.retrieve(call)
        version = order.get("version")
        fulfillments = _fulfillments(order, call)
        if not isinstance(version, int):
            raise Unsupported(
                f"Square order {_order(call)} has no version: it was not created through the "
                "API, and Square lets no one else update it"
            )
        behind = [f for f in fulfillments if _behind(f, target, order_id=_order(call))]
        if not behind:
            states = {str(f.get("uid")): f.get("state") for f in fulfillments}
            return json.dumps({"already": states, "version": version})
        closed = order.get("state")
        if closed in ("COMPLETED", "CANCELED"):  # Square updates no closed order
            why = f"Square order {_order(call)} is {closed}: its fulfillment stays"
            raise PermanentFailure(why) if target == "CANCELED" else AlreadyPast(why)
        body = {
            "order": {
                "location_id": order.get("location_id"),
                "version": version,
                "fulfillments": [{"uid": f["uid"], "state": target} for f in behind],
            },
            "idempotency_key": f"{call.idempotency_key}-v{version}",
        }
        answer = self.request("PUT", f"v2/orders/{_quoted(call)}", body)
        updated = answer.get("order") if isinstance(answer, dict) else None
        if not isinstance(updated, dict):
            raise TransientFailure(f"Square answered no order: {str(answer)[:200]}")
        moved = {str(f.get("uid")): f.get("state") for f in updated.get("fulfillments") or []}
        if any(moved.get(f["uid"]) != target for f in behind):
            # Square answers a reused key with the order as it is: read again, decide again.
            raise TransientFailure(f"Square did not move the fulfillment to {target}: {moved}")
        return json.dumps({"version": updated.get("version"), "fulfillments": moved})

    def already_done(self, call: PlatformCall, *, now: datetime) -> bool | None:
        target = _square_target(call)
        fulfillments = self.retrieve(call).get("fulfillments") or []
        if not fulfillments:
            return False  # nothing to move: `send` says why
        return all(_at_or_past(str(f.get("state") or "PROPOSED"), target) for f in fulfillments)

    def retrieve(self, call: PlatformCall) -> dict[str, Any]:
        """RetrieveOrder: the order as Square holds it now."""
        answer = self.request("GET", f"v2/orders/{_quoted(call)}", None)
        order = answer.get("order") if isinstance(answer, dict) else None
        if not isinstance(order, dict):
            raise TransientFailure(f"Square answered no order: {str(answer)[:200]}")
        return order

    def request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        """One authenticated request; the answer, or `CallFailed`."""
        headers = {
            "Authorization": f"Bearer {self.access_token}",
            "Square-Version": self.square_version,
            "Accept": "application/json",
        }
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        status, raw = self.transport(
            urllib.request.Request(self.api_url + path, data=data, method=method, headers=headers)
        )
        answer = _json_or_none(raw)
        errors = answer.get("errors") if isinstance(answer, dict) else None
        if status >= 400 or errors:
            codes = [str(e.get("code")) for e in errors or [] if isinstance(e, dict)]
            detail = "; ".join(
                f"{e.get('code')}: {e.get('detail', '')} ({e.get('field', '')})"
                for e in errors or []
                if isinstance(e, dict)
            )
            message = f"Square HTTP {status}: {detail or raw[:200]!r}"
            if status == 429 or status >= 500 or any(c in SQUARE_TRANSIENT for c in codes):
                raise TransientFailure(message)
            raise PermanentFailure(message)
        if answer is None:
            raise TransientFailure(f"not JSON: {raw[:200]!r}")
        return answer


def _square_target(call: PlatformCall) -> str:
    if call.kind not in SQUARE_STATES:
        raise Unsupported(f"Square's Orders API has no call for {call.kind.value}")
    return SQUARE_STATES[call.kind]


def _fulfillments(order: dict[str, Any], call: PlatformCall) -> list[dict[str, Any]]:
    found = [f for f in order.get("fulfillments") or [] if isinstance(f, dict) and f.get("uid")]
    if not found:
        raise Unsupported(
            f"Square order {_order(call)} has no fulfillment to move (an in-store sale)"
        )
    return found


def _at_or_past(state: str, target: str) -> bool:
    if state == target:
        return True
    if target == "CANCELED" or state not in _RANK:
        return False
    return _RANK[state] >= _RANK[target]


def _behind(fulfillment: dict[str, Any], target: str, *, order_id: str) -> bool:
    """Whether `fulfillment` is to be moved to `target`; raises when it cannot be."""
    state = str(fulfillment.get("state") or "PROPOSED")
    if _at_or_past(state, target):
        return False
    if state in _TERMINAL:
        if target == "CANCELED":
            raise PermanentFailure(f"Square order {order_id} is {state}: it cannot be canceled")
        raise AlreadyPast(f"Square order {order_id} is {state}: not moved to {target}")
    return True


# ---------------------------------------------------------------- WooCommerce

WOOCOMMERCE_STATUS: dict[CallKind, str] = {
    CallKind.CONFIRM: "processing",
    CallKind.COMPLETE: "completed",
    CallKind.CANCEL: "cancelled",
}
# The statuses in which a status call is done or moot (the order is past it).
_WOO_PAST: dict[CallKind, frozenset[str]] = {
    CallKind.CONFIRM: frozenset({"processing", "completed", "cancelled", "refunded"}),
    CallKind.COMPLETE: frozenset({"completed", "cancelled", "refunded"}),
    CallKind.CANCEL: frozenset({"cancelled", "refunded"}),
}
# Statuses an order does not leave by our calls: a call that is not done there is moot.
_WOO_CLOSED = frozenset({"completed", "cancelled", "refunded", "failed", "trash"})
WOOCOMMERCE_NOTES = {CallKind.READY: "Your order is ready for pickup."}


def woocommerce_note(call: PlatformCall) -> str:
    """The customer note a call adds (its exact text is how the status check finds it)."""
    if call.kind not in WOOCOMMERCE_NOTES:
        raise Unsupported(f"WooCommerce is not told {call.kind.value}")
    return WOOCOMMERCE_NOTES[call.kind]


class WooCommerceClient:
    name = "woocommerce"

    def __init__(
        self,
        *,
        store_url: str,
        consumer_key: str,
        consumer_secret: str,
        transport: Transport = urllib_transport,
    ) -> None:
        self.api_url = store_url.rstrip("/") + "/wp-json/wc/v3/"
        self.authorization = "Basic " + base64.b64encode(
            f"{consumer_key}:{consumer_secret}".encode()
        ).decode("ascii")
        self.transport = transport

    @classmethod
    def from_settings(cls, settings: Settings) -> WooCommerceClient:
        def required(value: str | None, variable: str) -> str:
            if not (value or "").strip():
                raise MissingCredentials(f"{variable} is not set: WooCommerce cannot be called")
            return str(value).strip()

        url = required(settings.woocommerce_url, "OMS_WOOCOMMERCE_URL")
        if not _https_or_loopback(url):
            raise MissingCredentials(
                f"OMS_WOOCOMMERCE_URL {url!r} is not https: WooCommerce takes the consumer key "
                "and secret (HTTP Basic) over HTTPS only"
            )
        return cls(
            store_url=url,
            consumer_key=required(
                _secret(settings.woocommerce_consumer_key), "OMS_WOOCOMMERCE_CONSUMER_KEY"
            ),
            consumer_secret=required(
                _secret(settings.woocommerce_consumer_secret), "OMS_WOOCOMMERCE_CONSUMER_SECRET"
            ),
        )

    def send(self, call: PlatformCall, *, now: datetime) -> str:
        order = _numeric_order(call)
        if call.kind in WOOCOMMERCE_STATUS:
            status = WOOCOMMERCE_STATUS[call.kind]
            current = self.request("GET", f"orders/{order}", None)
            was = current.get("status") if isinstance(current, dict) else None
            if was in _WOO_PAST[call.kind]:
                return json.dumps({"id": current.get("id"), "already": was})
            if was in _WOO_CLOSED:  # not reopened to be told a step it is past
                why = f"WooCommerce order {order} is {was}: not set to {status}"
                raise PermanentFailure(why) if call.kind is CallKind.CANCEL else AlreadyPast(why)
            answer = self.request("PUT", f"orders/{order}", {"status": status})
            now_is = answer.get("status") if isinstance(answer, dict) else None
            if now_is not in _WOO_PAST[call.kind]:  # (a shop's plugin may move it further)
                raise TransientFailure(f"WooCommerce answered status {now_is!r}, not {status}")
            return json.dumps({"id": answer.get("id"), "status": now_is})
        note = woocommerce_note(call)
        answer = self.request(
            "POST", f"orders/{order}/notes", {"note": note, "customer_note": True}
        )
        return json.dumps({"note_id": answer.get("id") if isinstance(answer, dict) else None})

    def already_done(self, call: PlatformCall, *, now: datetime) -> bool | None:
        order = _numeric_order(call)
        if call.kind in WOOCOMMERCE_STATUS:
            answer = self.request("GET", f"orders/{order}", None)
            return isinstance(answer, dict) and answer.get("status") in _WOO_PAST[call.kind]
        note = woocommerce_note(call)
        notes = self.request("GET", f"orders/{order}/notes?type=customer", None)
        return isinstance(notes, list) and any(
            isinstance(n, dict)
            and n.get("customer_note") is True
            and html.unescape(str(n.get("note", ""))).strip() == note
            for n in notes
        )

    def request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        """One authenticated request; the answer, or `CallFailed`."""
        headers = {"Authorization": self.authorization, "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body, ensure_ascii=False).encode()
        status, raw = self.transport(
            urllib.request.Request(self.api_url + path, data=data, method=method, headers=headers)
        )
        answer = _json_or_none(raw)
        if status >= 400:
            code = answer.get("code") if isinstance(answer, dict) else None
            text = answer.get("message") if isinstance(answer, dict) else raw[:200]
            message = f"WooCommerce HTTP {status} {code or ''}: {text!r}"
            if status == 429 or status >= 500:
                raise TransientFailure(message)
            raise PermanentFailure(message)
        if answer is None:
            raise TransientFailure(f"not JSON: {raw[:200]!r}")
        return answer


# ---------------------------------------------------------------- shared


def _secret(value: Any) -> str:
    text = value.get_secret_value() if value is not None else ""
    return str(text).strip()


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _order(call: PlatformCall) -> str:
    if not call.platform_order_id:
        raise PermanentFailure(f"{call.kind.value} names no {call.platform} order")
    return call.platform_order_id


def _quoted(call: PlatformCall) -> str:
    return urllib.parse.quote(_order(call), safe="")


def _numeric_order(call: PlatformCall) -> str:
    order = _order(call)
    if not order.isdigit():
        raise PermanentFailure(f"a WooCommerce order id is a number, not {order!r}")
    return order


def _https_or_loopback(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return True
    if parts.scheme != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
