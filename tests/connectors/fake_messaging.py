"""A fake of Aliyun SMS, Twilio and WeChat subscribe messages for tests (the real ones cannot
be reached here): one local HTTP server that checks what each provider documents it checks
(connectors/sms.py and connectors/wechat_notify.py have the sources) — Aliyun's HMAC-SHA1
signature, timestamp window and one-time nonce, approved template codes and their variables;
Twilio's Basic credentials and required fields; WeChat's access token, template keys and the
rules of their values — answers in each provider's format, records every message, and can be
told to fail.

Aliyun at `/aliyun/`, Twilio at `/twilio/2010-04-01/...`, WeChat at `/wechat/cgi-bin/...`.
"""

from __future__ import annotations

import base64
import email.utils
import json
import re
import secrets
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any

from connectors.sms import aliyun_signature
from tests.fake_http import FakeHttpServer

ALIYUN_KEY_ID, ALIYUN_SECRET, ALIYUN_SIGN = "LTAI5tFake", "fake-aliyun-secret", "好味道"
ALIYUN_TEMPLATES = {"SMS_100001": {"order", "time"}, "SMS_100002": {"order"}}
TWILIO_SID, TWILIO_TOKEN = "AC" + "0" * 31 + "1", "fake-twilio-token"
TWILIO_FROM = "+15005550006"
WECHAT_APP_ID, WECHAT_SECRET = "wx0123456789abcdef", "fake-wechat-secret"
WECHAT_TEMPLATES = {"tpl-confirmed": {"character_string1", "time2", "thing3"}}
WECHAT_RULES = {
    "thing": re.compile(r"^.{1,20}$"),
    "character_string": re.compile(r"^[0-9A-Za-z\-_.:/#@+]{1,32}$"),
    "time": re.compile(r"^\d{4}年\d{1,2}月\d{1,2}日 \d{2}:\d{2}$"),
}


@dataclass
class FakeMessaging:
    url: str = ""
    sms: list[dict[str, Any]] = field(default_factory=list)  # Aliyun and Twilio, as sent
    wechat: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # requests refused, and why
    fail_next: list[tuple[str, Any]] = field(default_factory=list)  # (provider, code)
    tokens: set[str] = field(default_factory=set)
    # What the carriers reported: Aliyun SendStatus by OutId (3 delivered, 2 failed, 1 waiting;
    # default 3), Twilio status by SID (default delivered).
    aliyun_status: dict[str, int] = field(default_factory=dict)
    twilio_status: dict[str, str] = field(default_factory=dict)
    twilio_lists: list[dict[str, str]] = field(default_factory=list)  # the list queries asked
    tokens_issued: int = 0
    nonces: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def expire_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def _failure(self, provider: str) -> Any:
        with self.lock:
            for i, (name, code) in enumerate(self.fail_next):
                if name == provider:
                    del self.fail_next[i]
                    return code
        return None

    # ------------------------------------------------------------ Aliyun

    def aliyun(self, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        def refuse(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
            self.rejected.append(f"aliyun {code}: {message}")
            return status, {"Code": code, "Message": message, "RequestId": secrets.token_hex(8)}

        given = query.pop("Signature", "")
        if query.get("AccessKeyId") != ALIYUN_KEY_ID:
            return refuse(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
        if given != aliyun_signature(query, ALIYUN_SECRET):
            return refuse(400, "SignatureDoesNotMatch", "Specified signature is not matched")
        common = {"Action", "Format", "RegionId", "SignatureMethod", "SignatureNonce",
                  "SignatureVersion", "Timestamp", "Version"}  # fmt: skip
        if missing := common - query.keys():
            return refuse(400, "MissingParameter", f"missing {sorted(missing)}")
        if query["SignatureMethod"] != "HMAC-SHA1" or query["Version"] != "2017-05-25":
            return refuse(400, "InvalidParameter", "SignatureMethod/Version")
        at = datetime.strptime(query["Timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        if abs(datetime.now(UTC) - at) > timedelta(minutes=15):
            return refuse(400, "InvalidTimeStamp.Expired", "Specified time stamp is expired")
        with self.lock:
            if query["SignatureNonce"] in self.nonces:
                return refuse(400, "SignatureNonceUsed", "Specified signature nonce was used")
            self.nonces.add(query["SignatureNonce"])
        if query["Action"] == "QuerySendDetails":
            return self._aliyun_query(query)
        if query["Action"] != "SendSms":
            return refuse(400, "InvalidAction.NotFound", query["Action"])
        if code := self._failure("aliyun"):
            return refuse(200, code, "told to fail")
        if not re.fullmatch(r"1\d{10}", query.get("PhoneNumbers", "")):
            return refuse(200, "isv.MOBILE_NUMBER_ILLEGAL", "invalid mobile number")
        if query.get("SignName") != ALIYUN_SIGN:
            return refuse(200, "isv.SMS_SIGNATURE_ILLEGAL", "invalid sign name")
        variables = ALIYUN_TEMPLATES.get(query.get("TemplateCode", ""))
        if variables is None:
            return refuse(200, "isv.SMS_TEMPLATE_ILLEGAL", "invalid template code")
        try:
            values = json.loads(query.get("TemplateParam", ""))
        except ValueError:
            return refuse(200, "isv.INVALID_JSON_PARAM", "TemplateParam is not JSON")
        if set(values) != variables or not all(
            isinstance(v, str) and 0 < len(v) <= 35 for v in values.values()
        ):
            return refuse(200, "isv.TEMPLATE_MISSING_PARAMETERS", f"variables {sorted(values)}")
        biz_id = f"{secrets.randbelow(10**15):015d}^0"
        with self.lock:
            self.sms.append({"provider": "aliyun", "to": query["PhoneNumbers"], "biz_id": biz_id,
                             "out_id": query.get("OutId"), "template": query["TemplateCode"],
                             "values": values, "day": at.strftime("%Y%m%d")})  # fmt: skip
        return 200, {"Code": "OK", "Message": "OK", "BizId": biz_id, "RequestId": "r"}

    def _aliyun_query(self, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        for name in ("PhoneNumber", "SendDate", "PageSize", "CurrentPage"):
            if name not in query:
                return 400, {"Code": "MissingParameter", "Message": name}
        sent = [m for m in self.sms if m["provider"] == "aliyun"
                and m["to"] == query["PhoneNumber"] and m["day"] == query["SendDate"]]  # fmt: skip
        size, page = int(query["PageSize"]), int(query["CurrentPage"])
        shown = sent[(page - 1) * size : page * size]
        details = [
            {"OutId": m["out_id"], "SendStatus": self.aliyun_status.get(m["out_id"], 3),
             "PhoneNum": m["to"]}
            for m in shown
        ]  # fmt: skip
        return 200, {"Code": "OK", "TotalCount": len(sent),
                     "SmsSendDetailDTOs": {"SmsSendDetailDTO": details}}  # fmt: skip

    # ------------------------------------------------------------ Twilio

    def twilio(self, path: str, headers: Any, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        def refuse(status: int, code: int, message: str) -> tuple[int, dict[str, Any]]:
            self.rejected.append(f"twilio {code}: {message}")
            return status, {"code": code, "message": message, "status": status}

        expected = "Basic " + base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
        if headers.get("Authorization") != expected:
            return refuse(401, 20003, "Authenticate")
        if path != f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json":
            return refuse(404, 20404, "The requested resource was not found")
        if code := self._failure("twilio"):
            return refuse(int(code), 20429 if code == 429 else 20500, "told to fail")
        if not re.fullmatch(r"\+[1-9]\d{6,14}", form.get("To", "")):
            return refuse(400, 21211, "Invalid 'To' Phone Number")
        if "From" not in form and "MessagingServiceSid" not in form:
            return refuse(400, 21603, "A 'From' or 'MessagingServiceSid' parameter is required")
        if not 0 < len(form.get("Body", "")) <= 1600:
            return refuse(400, 21602, "Message body is required")
        sid = "SM" + secrets.token_hex(16)
        with self.lock:
            now = email.utils.format_datetime(datetime.now(UTC))
            self.sms.append({"provider": "twilio", "to": form["To"], "sid": sid,
                             "body": form["Body"], "from": form.get("From"),
                             "messaging_service_sid": form.get("MessagingServiceSid"),
                             "date_created": now})  # fmt: skip
        return 201, {"sid": sid, "status": "queued", "to": form["To"], "body": form["Body"]}

    def twilio_message(
        self, path: str, headers: Any, query: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        expected = "Basic " + base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
        if headers.get("Authorization") != expected:
            return 401, {"code": 20003, "message": "Authenticate", "status": 401}
        if path == f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json":
            return self.twilio_list(path, query)
        prefix = f"/2010-04-01/Accounts/{TWILIO_SID}/Messages/"
        sid = path.removeprefix(prefix).removesuffix(".json")
        if not path.startswith(prefix) or not any(m.get("sid") == sid for m in self.sms):
            return 404, {"code": 20404, "message": "not found", "status": 404}
        return 200, {"sid": sid, "status": self.twilio_status.get(sid, "delivered")}

    def twilio_list(self, path: str, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The Message list: filtered by To, From and `DateSent>` (a day, or an ISO time: on
        or after its day), newest first, `PageSize` a page, `next_page_uri` to the next."""
        self.twilio_lists.append(dict(query))
        after = query.get("DateSent>")
        try:
            day = datetime.fromisoformat(after).date() if after else None
        except ValueError:
            return 400, {"code": 20001, "message": "Invalid DateSent>", "status": 400}
        size, page = int(query.get("PageSize", "50")), int(query.get("Page", "0"))

        def created(m: dict[str, Any]) -> datetime:
            return email.utils.parsedate_to_datetime(m["date_created"])

        with self.lock:
            found = [
                m for m in reversed(self.sms) if m["provider"] == "twilio"
                and ("To" not in query or m["to"] == query["To"])
                and ("From" not in query or m["from"] == query["From"])
                and (day is None or created(m).date() >= day)
            ]  # fmt: skip
        shown = found[page * size : (page + 1) * size]
        more = (page + 1) * size < len(found)
        next_query = urllib.parse.urlencode({**query, "Page": str(page + 1)})
        messages = [
            {"sid": m["sid"], "to": m["to"], "from": m["from"], "body": m["body"],
             "messaging_service_sid": m["messaging_service_sid"],
             "status": self.twilio_status.get(m["sid"], "delivered"),
             "date_created": m["date_created"]}
            for m in shown
        ]  # fmt: skip
        return 200, {
            "messages": messages,
            "page": page,
            "page_size": size,
            "next_page_uri": f"{path}?{next_query}" if more else None,
        }

    # ------------------------------------------------------------ WeChat

    def wechat_token(self, query: dict[str, str]) -> dict[str, Any]:
        if query.get("grant_type") != "client_credential":
            return {"errcode": 40002, "errmsg": "invalid grant_type"}
        if query.get("appid") != WECHAT_APP_ID:
            return {"errcode": 40013, "errmsg": "invalid appid"}
        if query.get("secret") != WECHAT_SECRET:
            return {"errcode": 40125, "errmsg": "invalid appsecret"}
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.tokens.add(token)
            self.tokens_issued += 1
        return {"access_token": token, "expires_in": 7200}

    def wechat_send(self, query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        def refuse(code: int, message: str) -> dict[str, Any]:
            self.rejected.append(f"wechat {code}: {message}")
            return {"errcode": code, "errmsg": message}

        if query.get("access_token") not in self.tokens:
            return refuse(40001, "invalid credential, access_token is invalid or not latest")
        if code := self._failure("wechat"):
            return refuse(int(code), "told to fail")
        if not body.get("touser"):
            return refuse(40003, "invalid openid")
        keys = WECHAT_TEMPLATES.get(body.get("template_id", ""))
        if keys is None:
            return refuse(40037, "invalid template_id")
        data = body.get("data") or {}
        if set(data) != keys:
            return refuse(47003, f"argument invalid! data keys {sorted(data)}")
        for key, entry in data.items():
            rule = WECHAT_RULES[re.sub(r"\d+$", "", key)]
            if not rule.match(str((entry or {}).get("value", ""))):
                return refuse(47003, f"argument invalid! data.{key}.value invalid")
        if body.get("miniprogram_state", "formal") not in {"developer", "trial", "formal"}:
            return refuse(47003, "miniprogram_state")
        msgid = secrets.randbelow(10**18)
        with self.lock:
            self.wechat.append({**body, "msgid": msgid})
        return {"errcode": 0, "errmsg": "ok", "msgid": msgid}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeMessaging

    def log_message(self, *_: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        if url.path == "/aliyun/":
            self._answer(*self.fake.aliyun(query))
        elif url.path.startswith("/twilio/"):
            self._answer(
                *self.fake.twilio_message(url.path.removeprefix("/twilio"), self.headers, query)
            )
        elif url.path == "/wechat/cgi-bin/token":
            self._answer(200, self.fake.wechat_token(query))
        else:
            self._answer(404, {"error": "no such path"})

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path.startswith("/twilio/"):
            form = dict(urllib.parse.parse_qsl(raw.decode()))
            self._answer(*self.fake.twilio(url.path.removeprefix("/twilio"), self.headers, form))
        elif url.path == "/wechat/cgi-bin/message/subscribe/send":
            self._answer(200, self.fake.wechat_send(query, json.loads(raw or b"{}")))
        else:
            self._answer(404, {"error": "no such path"})


@contextmanager
def fake_messaging() -> Iterator[FakeMessaging]:
    fake = FakeMessaging()
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = FakeHttpServer(("127.0.0.1", 0), handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
