"""WeChat mini-program subscribe messages (订阅消息) to customers who ordered in the
mini-program and agreed to be told (wx.requestSubscribeMessage on the customer's phone).

Published format (developers.weixin.qq.com/miniprogram/dev/server/API/mp-message-management/
subscribe-message/api_sendmessage.html; access token: .../mp-access-token/getAccessToken.html):
- `GET /cgi-bin/token?grant_type=client_credential&appid=APPID&secret=APPSECRET` answers
  `{"access_token": ..., "expires_in": 7200}`; it is kept until a few minutes before it expires,
  and fetched again at once when an answer says it is invalid or expired (40001, 42001, 40014).
- `POST /cgi-bin/message/subscribe/send?access_token=TOKEN` with `touser` (the openid),
  `template_id`, `page`, `miniprogram_state`, `lang` and `data`: `{"thing1": {"value": ...}}`.
  The keys are the approved template's; their type prefix limits the value (thing: 20
  characters; character_string: 32 digits, letters or symbols; time: `2019年10月1日 15:01`;
  amount: a currency sign and up to 10 digits; phrase: 5 characters; name: 10).
- `errcode` 0 is sent; 43101 (the customer did not subscribe, or unsubscribed) and 40003
  (bad openid) and 47003 (a value breaks its key's rule) are the message's; 40037 (bad
  template id) and 41030 (bad page) are the operator's configuration; -1 (system busy) and
  45009 (daily limit) are worth another try later.

The operator maps each message kind to a template and its keys to notice values:
`{"confirmed": {"template_id": "...", "data": {"character_string1": "order", "time2": "eta"}}}`.
WeChat publishes no way to ask whether a message went out: after a crash between the call and
its record it may go out twice.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.outbound import PermanentFailure, TransientFailure, Transport, urllib_transport
from connectors.sms import NoTemplate, ParamValue, ProviderMisconfigured, Report, TextMessage

WECHAT_API_URL = "https://api.weixin.qq.com"
TOKEN_MARGIN_S = 300  # fetch a new token this long before the old one expires
STALE_TOKEN = frozenset({40001, 42001, 40014})
NOT_SUBSCRIBED = frozenset({43101, 40003})
OURS = frozenset({40037, 41030, 40013, 40125, 40164})  # template id, page, app id, secret, IP
TRANSIENT = frozenset({-1, 45009, 45011})
LIMITS = {
    "thing": 20,
    "character_string": 32,
    "phrase": 5,
    "name": 10,
    "letter": 32,
    "number": 32,
    "symbol": 5,
    "car_number": 8,
    "phone_number": 17,
}


class WeChatTemplate(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    template_id: str = Field(min_length=1)
    data: dict[str, str] = Field(description="template key (thing1, time2, ...) → notice value")
    page: str | None = None


def wechat_value(key: str, value: ParamValue) -> str:
    """A notice value in the form the key's type takes (its letters before the digits)."""
    kind = re.sub(r"\d+$", "", key)
    if isinstance(value, datetime):
        return value.strftime("%Y年%-m月%-d日 %H:%M")
    text = "" if value is None else str(value)
    if kind == "character_string":
        text = re.sub(r"[^0-9A-Za-z\-_.:/#@+]", "", text)
    elif kind == "amount":
        text = text.removesuffix(" CNY").replace(",", "")
    return text[: LIMITS.get(kind, 20)]


class WeChatSubscribe:
    name = "wechat"

    def __init__(
        self,
        *,
        app_id: str,
        app_secret: SecretStr,
        templates: Mapping[str, WeChatTemplate],
        state: str = "formal",
        api_url: str = WECHAT_API_URL,
        transport: Transport = urllib_transport,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not app_id or not app_secret.get_secret_value():
            raise ProviderMisconfigured("WeChat subscribe messages need the app id and secret")
        self.app_id, self.secret = app_id, app_secret
        self.templates, self.state = dict(templates), state
        self.api_url, self.transport, self.clock = api_url.rstrip("/"), transport, clock
        self._token: tuple[str, float] | None = None  # (token, good until)

    def _get(self, request: urllib.request.Request) -> dict[str, Any]:
        status, body = self.transport(request)
        if status == 429 or status >= 500:
            raise TransientFailure(f"WeChat HTTP {status}")
        try:
            answer = json.loads(body)
        except ValueError as exc:
            raise TransientFailure(f"WeChat answered no JSON: {body[:200]!r}") from exc
        return answer if isinstance(answer, dict) else {}

    def token(self, *, fresh: bool = False) -> str:
        if self._token and not fresh and self.clock() < self._token[1]:
            return self._token[0]
        query = urllib.parse.urlencode(
            {
                "grant_type": "client_credential",
                "appid": self.app_id,
                "secret": self.secret.get_secret_value(),
            }
        )
        answer = self._get(urllib.request.Request(f"{self.api_url}/cgi-bin/token?{query}"))
        if not answer.get("access_token"):
            code = answer.get("errcode")
            if code in TRANSIENT:
                raise TransientFailure(f"WeChat token: {code} {answer.get('errmsg')}")
            raise ProviderMisconfigured(f"WeChat token: {code} {answer.get('errmsg')}")
        expires = float(answer.get("expires_in") or 7200)
        self._token = (str(answer["access_token"]), self.clock() + expires - TOKEN_MARGIN_S)
        return self._token[0]

    def send(self, message: TextMessage) -> str:
        template = self.templates.get(message.kind)
        if template is None:
            raise NoTemplate(f"no WeChat template for {message.kind} (OMS_WECHAT_NOTIFY_TEMPLATES)")
        body: dict[str, Any] = {
            "touser": message.to,
            "template_id": template.template_id,
            "miniprogram_state": self.state,
            "lang": "zh_CN",
            "data": {
                key: {"value": wechat_value(key, message.params.get(name))}
                for key, name in template.data.items()
            },
        }
        if template.page:
            body["page"] = template.page
        payload = json.dumps(body, ensure_ascii=False).encode()
        for fresh in (False, True):
            url = f"{self.api_url}/cgi-bin/message/subscribe/send?access_token=" + (
                urllib.parse.quote(self.token(fresh=fresh))
            )
            answer = self._get(
                urllib.request.Request(
                    url,
                    data=payload,
                    method="POST",
                    headers={"Content-Type": "application/json; charset=utf-8"},
                )
            )
            code = answer.get("errcode", 0)
            if code not in STALE_TOKEN:
                break
        said = f"WeChat {code}: {answer.get('errmsg', '')}"
        if code == 0:
            return str(answer.get("msgid", ""))
        if code in TRANSIENT or code in STALE_TOKEN:
            raise TransientFailure(said)
        if code in NOT_SUBSCRIBED:
            raise PermanentFailure(said)
        if code in OURS:
            raise ProviderMisconfigured(said)
        raise PermanentFailure(said)

    def already_sent(self, message: TextMessage, since: datetime) -> bool | None:
        return None  # WeChat publishes no lookup of sent subscribe messages

    def report(self, message: TextMessage, provider_id: str, sent_at: datetime) -> Report | None:
        return None  # nor of their delivery
