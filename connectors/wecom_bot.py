"""A WeCom (企业微信) group robot: POST https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=KEY
with `{"msgtype": "markdown", "markdown": {"content": ...}}` (at most 4096 bytes of UTF-8) or
`{"msgtype": "text", "text": {"content": ..., "mentioned_mobile_list": [...]}}` (at most 2048
bytes; markdown cannot @-mention). It answers `{"errcode": 0, "errmsg": "ok"}`.

Errors: 45009 is over the robot's limit of 20 messages a minute, -1 the system busy: worth
another try; 93000 an invalid webhook key, and any other code: permanent (the alert is
failed and dead-lettered; the other sinks go on). A robot cannot be asked whether it got a
message: after a crash between a send and its record, one message may be sent twice.

The key is a secret: it is in the URL only, never in an error, a record or a log line.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

from pydantic import SecretStr

from connectors.outbound import PermanentFailure, TransientFailure, Transport, urllib_transport
from connectors.staff_messages import fit

WECOM_URL = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"
MARKDOWN_MAX = 4096  # bytes of UTF-8
TEXT_MAX = 2048
TRANSIENT_CODES = frozenset({-1, 45009})  # system busy; over 20 messages a minute
INVALID_KEY = 93000


class WeComRobot:
    name = "wecom"

    def __init__(
        self, *, key: SecretStr, api_url: str = WECOM_URL, transport: Transport = urllib_transport
    ) -> None:
        self.key, self.api_url, self.transport = key, api_url, transport

    def send_markdown(self, content: str) -> str:
        return self._post(
            {"msgtype": "markdown", "markdown": {"content": fit(content, MARKDOWN_MAX)}}
        )

    def send_text(self, content: str, *, mention: tuple[str, ...] = ()) -> str:
        text: dict[str, object] = {"content": fit(content, TEXT_MAX)}
        if mention:
            text["mentioned_mobile_list"] = [m.removeprefix("+86") for m in mention]
        return self._post({"msgtype": "text", "text": text})

    def _post(self, body: dict[str, object]) -> str:
        query = urllib.parse.urlencode({"key": self.key.get_secret_value()})
        request = urllib.request.Request(
            f"{self.api_url}?{query}",
            data=json.dumps(body, ensure_ascii=False).encode(),
            method="POST",
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        status, raw = self.transport(request)
        if status == 429 or status >= 500:
            raise TransientFailure(f"WeCom HTTP {status}")
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if status != 200 or not isinstance(answer, dict):
            raise PermanentFailure(f"WeCom HTTP {status}, not an answer: {raw[:200]!r}")
        code = answer.get("errcode")
        errmsg = str(answer.get("errmsg", "")).replace(self.key.get_secret_value(), "***")
        said = f"WeCom {code}: {errmsg[:200]}"
        if code == 0:
            return said
        if code in TRANSIENT_CODES:
            raise TransientFailure(said)
        if code == INVALID_KEY:
            raise PermanentFailure(f"{said} (the robot's webhook key is not valid)")
        raise PermanentFailure(said)
