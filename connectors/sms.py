"""Text messages to customers: SMS through Aliyun (China) or Twilio (elsewhere), and WeChat
subscribe messages (connectors/wechat_notify.py), in each provider's published format.

A `TextMessage` is one rendered notice to one address (a phone number in E.164, or a WeChat
openid) with the values its provider-side template needs. Providers answer in two ways:
- `send(message)` returns the provider's id for the message, or raises `TransientFailure`
  (tried again with backoff), `PermanentFailure` (recorded failed, dead-lettered) or
  `ProviderMisconfigured` (credentials, signature name or templates the provider refuses:
  no message could go out, so the notifier stops rather than failing every message);
- `already_sent(message, since)` says, after a crash between the call and its record,
  whether the provider already has the message (True/False), or None where the provider
  publishes no such question (then the message may go out twice; docs/architecture.md).

**Aliyun SMS** (Dysmsapi 2017-05-25; help.aliyun.com/document_detail/101414.html SendSms,
102352 QuerySendDetails, 315526 signature): an RPC-style GET to dysmsapi.aliyuncs.com, signed
with HMAC-SHA1 over `GET&%2F&` + the percent-encoded, sorted query (RFC 3986, `~` unescaped,
space `%20`), keyed with the AccessKey secret + `&`. Mainland SMS goes out only through a
template approved by Aliyun: the operator maps each message kind to its `TemplateCode` and the
variables the template names; `TemplateParam` carries their values (JSON). `OutId` carries the
idempotency key, and `QuerySendDetails` (phone + day) lists what was sent with its OutId: so
Aliyun can be asked whether a message went out. `Code` other than `OK` is an error:
`isv.BUSINESS_LIMIT_CONTROL`, `Throttling*`, `isp.SYSTEM_ERROR` and `ServiceUnavailable` are
worth another try; a bad number or template values are the message's fault; a bad signature,
key, sign name or template code is ours.

**Twilio** (Messages resource, www.twilio.com/docs/messaging/api/message-resource): a form
POST to `/2010-04-01/Accounts/{AccountSid}/Messages.json` with HTTP Basic auth (Account SID,
auth token), `To`, `From` or `MessagingServiceSid`, and `Body` (the rendered text). 201 with
the Message `sid`; 429 and 5xx are worth another try; 401/403 (error 20003) is ours; other 4xx
(21211 invalid To, 21610 the recipient replied STOP) are the message's. Twilio takes no
idempotency key on this call; after a crash it is asked instead with the Message list
(`GET .../Messages.json?To=&From=&DateSent>=YYYY-MM-DD`, the query twilio-python sends for
`date_sent_after`; pages followed by `next_page_uri`): a message to the number, from our
sender, with the same body, created since the intent and not `failed`, is ours. The body
names the order and what happened to it, so two notices do not share one.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import re
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.messages import money
from connectors.outbound import PermanentFailure, TransientFailure, Transport, urllib_transport
from events.models import utc_now
from events.notifications import Notice

ParamValue = str | datetime | None


class ProviderMisconfigured(RuntimeError):
    """The provider refuses our credentials, signature or templates: nothing can be sent."""


class NoTemplate(PermanentFailure):
    """The operator set no provider template for this kind of message: it is not sent on this
    channel (recorded skipped, not failed: a choice, not an error)."""


@dataclass(frozen=True)
class TextMessage:
    to: str  # E.164 phone number, or a WeChat openid
    kind: str  # the message kind (events.notifications.MessageKind value)
    text: str  # the rendered text (providers that take free text)
    key: str  # the idempotency key
    params: Mapping[str, ParamValue] = field(default_factory=dict)  # template values


Report = Literal["delivered", "undelivered", "pending"]


class TextProvider(Protocol):
    name: str

    def send(self, message: TextMessage) -> str: ...

    def already_sent(self, message: TextMessage, since: datetime) -> bool | None: ...

    def report(self, message: TextMessage, provider_id: str, sent_at: datetime) -> Report | None:
        """What the provider knows of a sent message's way to the handset; None when it
        publishes no such question."""
        ...


def template_params(notice: Notice, *, zone: tzinfo) -> dict[str, ParamValue]:
    """The values a provider-side template may name, from a notice (no personal data)."""
    return {
        "order": notice.external_id,
        "store": notice.location,
        "eta": notice.eta.astimezone(zone) if notice.eta else None,
        "previous_eta": notice.previous_eta.astimezone(zone) if notice.previous_eta else None,
        "courier": notice.courier,
        "carrier": notice.carrier,
        "tracking": notice.tracking_number,
        "tracking_url": notice.tracking_url,
        "amount": money(notice.amount, notice.currency) if notice.amount is not None else None,
        "reason": notice.reason,
    }


# ---------------------------------------------------------------- Aliyun


ALIYUN_API_URL = "https://dysmsapi.aliyuncs.com/"
ALIYUN_TRANSIENT = re.compile(
    r"^(isv\.BUSINESS_LIMIT_CONTROL|Throttling.*|isp\.SYSTEM_ERROR|ServiceUnavailable|"
    r"InternalError|isv\.OUT_OF_SERVICE)$"
)
ALIYUN_OURS = re.compile(
    r"^(SignatureDoesNotMatch|InvalidAccessKeyId.*|isp\.RAM_PERMISSION_DENY|"
    r"isv\.SMS_SIGNATURE_ILLEGAL|isv\.SMS_TEMPLATE_ILLEGAL|isv\.ACCOUNT_NOT_EXISTS|"
    r"isv\.ACCOUNT_ABNORMAL|Forbidden.*|IncompleteSignature|MissingAccessKeyId)$"
)
ALIYUN_VALUE_MAX = 35  # characters of one template variable (通知短信)


class AliyunTemplate(BaseModel):
    """One approved template: its code and the variables it names, in the notice's terms
    (`{"code": "SMS_4815", "params": {"order": "order", "time": "eta"}}`: template variable
    → notice value)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    code: str = Field(pattern=r"^SMS_\d+$")
    params: dict[str, str] = Field(default_factory=dict)


def aliyun_encode(value: str) -> str:
    """Aliyun's percent-encoding (RFC 3986: unreserved kept, space %20, `*` %2A, `~` kept)."""
    return urllib.parse.quote(value, safe="-_.~")


def aliyun_signature(params: Mapping[str, str], secret: str, *, method: str = "GET") -> str:
    """Signature V1: HMAC-SHA1 of METHOD&%2F&encode(sorted canonical query), key secret + &."""
    canonical = "&".join(
        f"{aliyun_encode(k)}={aliyun_encode(v)}" for k, v in sorted(params.items())
    )
    to_sign = f"{method}&{aliyun_encode('/')}&{aliyun_encode(canonical)}"
    digest = hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class AliyunSms:
    name = "aliyun"

    def __init__(
        self,
        *,
        access_key_id: str,
        access_key_secret: SecretStr,
        sign_name: str,
        templates: Mapping[str, AliyunTemplate],
        api_url: str = ALIYUN_API_URL,
        transport: Transport = urllib_transport,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if not access_key_id or not access_key_secret.get_secret_value() or not sign_name:
            raise ProviderMisconfigured(
                "Aliyun SMS needs an AccessKey id, its secret and a sign name"
            )
        self.key_id, self.secret, self.sign_name = access_key_id, access_key_secret, sign_name
        self.templates, self.api_url = dict(templates), api_url
        self.transport, self.clock = transport, clock

    def _call(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        query = {
            "AccessKeyId": self.key_id,
            "Action": action,
            "Format": "JSON",
            "RegionId": "cn-hangzhou",
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": uuid.uuid4().hex,
            "SignatureVersion": "1.0",
            "Timestamp": self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Version": "2017-05-25",
            **params,
        }
        signature = aliyun_signature(query, self.secret.get_secret_value())
        url = f"{self.api_url}?Signature={aliyun_encode(signature)}&" + "&".join(
            f"{aliyun_encode(k)}={aliyun_encode(v)}" for k, v in sorted(query.items())
        )
        status, body = self.transport(urllib.request.Request(url, method="GET"))
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            if status == 429 or status >= 500:
                raise TransientFailure(f"Aliyun HTTP {status}: {body[:200]!r}")
            raise PermanentFailure(f"Aliyun HTTP {status}, not JSON: {body[:200]!r}")
        code = str(answer.get("Code", ""))
        if code == "OK":
            return answer
        said = f"Aliyun {action} {code}: {answer.get('Message', '')}"
        if ALIYUN_TRANSIENT.match(code) or status >= 500:
            raise TransientFailure(said)
        if ALIYUN_OURS.match(code):
            raise ProviderMisconfigured(said)
        raise PermanentFailure(said)

    def _template(self, message: TextMessage) -> tuple[AliyunTemplate, dict[str, str]]:
        template = self.templates.get(message.kind)
        if template is None:
            raise NoTemplate(f"no Aliyun template for {message.kind} (OMS_ALIYUN_SMS_TEMPLATES)")
        values = {}
        for variable, name in template.params.items():
            value = message.params.get(name)
            if value is None:
                raise PermanentFailure(
                    f"{message.kind}: template variable {variable} ({name}) has no value"
                )
            text = value.strftime("%m-%d %H:%M") if isinstance(value, datetime) else value
            values[variable] = text[:ALIYUN_VALUE_MAX]
        return template, values

    def send(self, message: TextMessage) -> str:
        template, values = self._template(message)
        answer = self._call(
            "SendSms",
            {
                "PhoneNumbers": _mainland(message.to),
                "SignName": self.sign_name,
                "TemplateCode": template.code,
                "TemplateParam": json.dumps(values, ensure_ascii=False, separators=(",", ":")),
                "OutId": message.key,
            },
        )
        return str(answer.get("BizId", ""))

    def _detail(self, message: TextMessage, since: datetime) -> dict[str, Any] | None:
        """QuerySendDetails' entry for this message (matched on OutId), on a day since `since`."""
        day = since.date()
        while day <= self.clock().date():
            page = 1
            while True:
                answer = self._call(
                    "QuerySendDetails",
                    {
                        "PhoneNumber": _mainland(message.to),
                        "SendDate": day.strftime("%Y%m%d"),
                        "PageSize": "50",
                        "CurrentPage": str(page),
                    },
                )
                details = (answer.get("SmsSendDetailDTOs") or {}).get("SmsSendDetailDTO") or []
                for detail in details:
                    if detail.get("OutId") == message.key:
                        return dict(detail)
                if page * 50 >= int(answer.get("TotalCount") or 0):
                    break
                page += 1
            day = day.fromordinal(day.toordinal() + 1)
        return None

    def already_sent(self, message: TextMessage, since: datetime) -> bool | None:
        """Whether a message with this OutId went to the number on a day since `since`."""
        detail = self._detail(message, since)
        # SendStatus 1: waiting for the carrier's receipt, 2: failed, 3: delivered.
        return detail is not None and detail.get("SendStatus") != 2

    def report(self, message: TextMessage, provider_id: str, sent_at: datetime) -> Report | None:
        detail = self._detail(message, sent_at)
        if detail is None:
            return "pending"
        state = int(detail.get("SendStatus") or 1)
        return "delivered" if state == 3 else "undelivered" if state == 2 else "pending"


def _mainland(phone: str) -> str:
    """Aliyun takes mainland numbers without +86, others with their country code, no +."""
    digits = phone.removeprefix("+")
    return digits[2:] if digits.startswith("86") and len(digits) == 13 else digits


# ---------------------------------------------------------------- Twilio


TWILIO_API_URL = "https://api.twilio.com"
TWILIO_PAGES_ASKED = 10  # of 100 messages to one number in a day or two


class TwilioSms:
    name = "twilio"

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: SecretStr,
        sender: str,
        api_url: str = TWILIO_API_URL,
        transport: Transport = urllib_transport,
    ) -> None:
        if not re.fullmatch(r"AC[0-9a-fA-F]{32}", account_sid or ""):
            raise ProviderMisconfigured("Twilio account SID: AC followed by 32 hex digits")
        if not auth_token.get_secret_value() or not sender:
            raise ProviderMisconfigured(
                "Twilio needs an auth token and a From number or MG service"
            )
        self.sid, self.token, self.sender = account_sid, auth_token, sender
        self.api_url, self.transport = api_url.rstrip("/"), transport

    def send(self, message: TextMessage) -> str:
        if not re.fullmatch(r"\+[1-9]\d{6,14}", message.to):
            raise PermanentFailure(f"not an E.164 number: {message.to[:4]}…")
        sender = (
            {"MessagingServiceSid": self.sender}
            if self.sender.startswith("MG")
            else {"From": self.sender}
        )
        form = urllib.parse.urlencode({"To": message.to, "Body": message.text, **sender}).encode()
        credentials = base64.b64encode(
            f"{self.sid}:{self.token.get_secret_value()}".encode()
        ).decode()
        request = urllib.request.Request(
            f"{self.api_url}/2010-04-01/Accounts/{self.sid}/Messages.json",
            data=form,
            method="POST",
            headers={
                "Authorization": f"Basic {credentials}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        status, body = self.transport(request)
        try:
            answer = json.loads(body)
        except ValueError:
            answer = {}
        said = f"Twilio HTTP {status} {answer.get('code', '')}: {answer.get('message', body[:200])}"
        if status in (200, 201) and answer.get("sid"):
            return str(answer["sid"])
        if status == 429 or status >= 500:
            raise TransientFailure(said)
        if status in (401, 403):
            raise ProviderMisconfigured(said)
        raise PermanentFailure(said)

    def already_sent(self, message: TextMessage, since: datetime) -> bool | None:
        """Whether Twilio has a message to the number with this body, from our sender,
        created since `since` (and not failed to leave Twilio)."""
        query = {"To": message.to, "DateSent>": since.astimezone(UTC).date().isoformat()}
        if not self.sender.startswith("MG"):
            query["From"] = self.sender
        query["PageSize"] = "100"
        page: str | None = (
            f"/2010-04-01/Accounts/{self.sid}/Messages.json?{urllib.parse.urlencode(query)}"
        )
        for _ in range(TWILIO_PAGES_ASKED):
            if page is None:
                return False
            answer = self._get(page)
            for found in answer.get("messages") or []:
                if self._ours(found, message, since):
                    return True
            page = answer.get("next_page_uri") or None
        raise TransientFailure(f"Twilio: more than {TWILIO_PAGES_ASKED} pages to look through")

    def _ours(self, found: dict[str, Any], message: TextMessage, since: datetime) -> bool:
        if found.get("to") != message.to or found.get("body") != message.text:
            return False
        if found.get("status") == "failed":  # never left Twilio: not sent
            return False
        if self.sender.startswith("MG") and found.get("messaging_service_sid") != self.sender:
            return False
        try:
            created = email.utils.parsedate_to_datetime(str(found.get("date_created")))
        except (TypeError, ValueError):
            return True  # ours by number and body; the date only narrows it
        return created >= since - timedelta(seconds=1)

    def _get(self, path: str) -> dict[str, Any]:
        credentials = base64.b64encode(
            f"{self.sid}:{self.token.get_secret_value()}".encode()
        ).decode()
        request = urllib.request.Request(
            f"{self.api_url}{path}", headers={"Authorization": f"Basic {credentials}"}
        )
        status, body = self.transport(request)
        if status == 429 or status >= 500:
            raise TransientFailure(f"Twilio HTTP {status}")
        if status in (401, 403):
            raise ProviderMisconfigured(f"Twilio HTTP {status}: {body[:200]!r}")
        if status != 200:
            raise PermanentFailure(f"Twilio HTTP {status}: {body[:200]!r}")
        try:
            answer = json.loads(body)
        except ValueError as exc:
            raise TransientFailure(f"Twilio answered no JSON: {body[:200]!r}") from exc
        if not isinstance(answer, dict):
            raise TransientFailure(f"Twilio answered no object: {body[:200]!r}")
        return answer

    def report(self, message: TextMessage, provider_id: str, sent_at: datetime) -> Report | None:
        """The Message resource's `status` (GET .../Messages/{sid}.json): delivered; failed or
        undelivered; anything else (queued, sending, sent) still on its way."""
        credentials = base64.b64encode(
            f"{self.sid}:{self.token.get_secret_value()}".encode()
        ).decode()
        request = urllib.request.Request(
            f"{self.api_url}/2010-04-01/Accounts/{self.sid}/Messages/"
            f"{urllib.parse.quote(provider_id)}.json",
            headers={"Authorization": f"Basic {credentials}"},
        )
        status, body = self.transport(request)
        if status == 429 or status >= 500:
            raise TransientFailure(f"Twilio HTTP {status}")
        if status != 200:
            raise PermanentFailure(f"Twilio HTTP {status}: {body[:200]!r}")
        try:
            state = json.loads(body).get("status")
        except (ValueError, AttributeError) as exc:
            raise TransientFailure(f"Twilio answered no JSON: {body[:200]!r}") from exc
        if state == "delivered":
            return "delivered"
        return "undelivered" if state in ("failed", "undelivered") else "pending"
