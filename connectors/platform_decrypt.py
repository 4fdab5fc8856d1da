"""Clients for the platforms' decrypt APIs: a merchant opens the receiver of its own order
(for a label, a call, an after-sales contact) with its app's credentials.

- Pinduoduo `pdd.open.decrypt.batch` (POST https://gw-api.pinduoduo.com/api/router): common
  parameters `type`, `client_id`, `access_token`, `timestamp` (Unix seconds), `data_type=JSON`
  and `sign`, the uppercase MD5 of `client_secret + k1v1k2v2... + client_secret` over every
  other parameter sorted by name; `data_list` is a JSON list of up to 100
  `{"data_tag": <order sn>, "encrypted_data": <ciphertext>}`. The answer's
  `open_decrypt_batch_response.data_decrypt_list` gives each item's `decrypted_data` and
  `error_code` (0 when opened); a refused call answers `error_response`.
- Taobao / Tmall `taobao.top.oaid.decrypt` (POST https://eco.taobao.com/router/rest): TOP's
  system parameters `method`, `app_key`, `session`, `timestamp` ("yyyy-MM-dd HH:mm:ss",
  Beijing time), `format=json`, `v=2.0`, `sign_method` and `sign` — md5: the uppercase MD5 of
  `secret + k1v1... + secret`; hmac-sha256: the uppercase HMAC-SHA256 of `k1v1...` keyed by
  the secret — over every other parameter sorted by name; `query_list` is a JSON list of up
  to 20 `{"oaid", "tid", "scene"}`. The answer's `top_oaid_decrypt_response.receiver_list.
  receiver` gives `name`, `mobile` (a virtual number `18877771111-123` when
  `privacy_protection` is true), `phone`, `address_detail` and `matched`.

- Douyin (抖店) `order.batchDecrypt` (POST https://openapi-fxg.jinritemai.com/order/batchDecrypt,
  the method's dots as slashes): `app_key`, `method`, `access_token`, `param_json` (JSON with
  its keys sorted, no spaces: `{"cipher_infos": [{"auth_id": <order id>, "cipher_text": ...}]}`),
  `timestamp` ("yyyy-MM-dd HH:mm:ss", Beijing), `v=2` and `sign`: the lowercase MD5 of
  `secret + "app_key" + app_key + "method" + method + "param_json" + param_json +
  "timestamp" + timestamp + "v" + v + secret`. The answer (`code` 10000 when accepted)
  gives `data.decrypt_infos[]` with `decrypt_text`, `err_no` and, for a virtual number,
  `is_virtual_tel` with the relay `phone_no_a` and extension `phone_no_b`.

Sources: open.pinduoduo.com API docs for pdd.open.decrypt.batch (and the public SDKs
Cherrs/pdd-rs `src/requests/pdd_open_decrypt_batch.rs`); developer.alibaba.com apiId=54714
(taobao.top.oaid.decrypt) and bububa/opentaobao `model/topoaid/`; the doudian SDK's
`order_batchDecrypt` request and response models (westng/doudian-sdk
`src/Api/order_batchDecrypt/`). Tests run both against
local fakes that check the signature and the required fields (tests/connectors/
test_platform_decrypt.py); nothing here can reach the platforms from CI.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from connectors.platform_pii import DecryptError, Opened, split_virtual
from events.models import PlatformCiphertext

BEIJING = timezone(timedelta(hours=8))
PDD_URL = "https://gw-api.pinduoduo.com/api/router"
TOP_URL = "https://eco.taobao.com/router/rest"
DOUYIN_URL = "https://openapi-fxg.jinritemai.com"


def _concatenated(params: Mapping[str, str]) -> str:
    return "".join(f"{key}{params[key]}" for key in sorted(params) if key != "sign")


def pdd_sign(params: Mapping[str, str], secret: str) -> str:
    text = f"{secret}{_concatenated(params)}{secret}"
    return hashlib.md5(text.encode()).hexdigest().upper()


def top_sign(params: Mapping[str, str], secret: str, method: str = "md5") -> str:
    text = _concatenated(params)
    if method == "md5":
        return hashlib.md5(f"{secret}{text}{secret}".encode()).hexdigest().upper()
    if method == "hmac-sha256":
        return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest().upper()
    raise ValueError(f"unknown TOP sign_method {method!r}")


def douyin_sign(params: Mapping[str, str], secret: str) -> str:
    text = "".join(
        f"{key}{params[key]}" for key in ("app_key", "method", "param_json", "timestamp", "v")
    )
    return hashlib.md5(f"{secret}{text}{secret}".encode()).hexdigest()


def _post(url: str, params: Mapping[str, str], timeout_s: float) -> Any:
    body = urllib.parse.urlencode(params).encode()
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, TimeoutError, ValueError) as exc:
        raise DecryptError(f"{url}: {exc}") from exc


def _required(value: str, what: str) -> str:
    if not value:
        raise DecryptError(f"{what} is not set: the platform cannot be asked")  # fail closed
    return value


class PinduoduoDecrypter:
    """`pdd.open.decrypt.batch` for the ciphertexts of one order."""

    platform = "pinduoduo"

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        access_token: str,
        url: str = PDD_URL,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client_id = _required(client_id, "the Pinduoduo client_id")
        self.client_secret = _required(client_secret, "the Pinduoduo client_secret")
        self.access_token = _required(access_token, "the shop's Pinduoduo access_token")
        self.url, self.timeout_s, self.clock = url, timeout_s, clock

    def open(self, external_id: str, cipher: PlatformCiphertext) -> Opened:
        wanted = {f: v for f in ("name", "phone", "address") if (v := getattr(cipher, f))}
        if not wanted:
            return Opened()
        items = [{"data_tag": external_id, "encrypted_data": v} for v in wanted.values()]
        params = {
            "type": "pdd.open.decrypt.batch",
            "client_id": self.client_id,
            "access_token": self.access_token,
            "timestamp": str(int(self.clock())),
            "data_type": "JSON",
            "data_list": json.dumps(items, ensure_ascii=False, separators=(",", ":")),
        }
        params["sign"] = pdd_sign(params, self.client_secret)
        answer = _post(self.url, params, self.timeout_s)
        if "error_response" in answer:
            error = answer["error_response"]
            raise DecryptError(f"pdd.open.decrypt.batch refused: {error.get('error_msg', error)}")
        try:
            results = answer["open_decrypt_batch_response"]["data_decrypt_list"]
            opened = {
                item["encrypted_data"]: item["decrypted_data"]
                for item in results
                if item.get("error_code", 0) == 0 and item.get("decrypted_data") is not None
            }
        except (KeyError, TypeError) as exc:
            raise DecryptError(f"pdd.open.decrypt.batch answered without {exc}") from None
        clear = {field: opened.get(text) for field, text in wanted.items()}
        clear_phone = clear.get("phone")
        phone = split_virtual(clear_phone) if clear_phone else None
        return Opened(
            name=clear.get("name"),
            phone=phone.number if phone else None,
            phone_extension=phone.extension if phone else None,
            street=clear.get("address"),
        )


class TaobaoOaidDecrypter:
    """`taobao.top.oaid.decrypt`: the receiver of one trade, by its OAID."""

    platform = "tmall"

    def __init__(
        self,
        *,
        app_key: str,
        app_secret: str,
        session: str,
        scene: str = "1002",  # 四通一达电子面单发货: the scene the receiver is opened for
        sign_method: str = "hmac-sha256",
        url: str = TOP_URL,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app_key = _required(app_key, "the TOP app_key")
        self.app_secret = _required(app_secret, "the TOP app secret")
        self.session = _required(session, "the shop's TOP session key")
        if sign_method not in ("md5", "hmac-sha256"):
            raise ValueError(f"unknown TOP sign_method {sign_method!r}")
        self.scene, self.sign_method = scene, sign_method
        self.url, self.timeout_s, self.clock = url, timeout_s, clock

    def open(self, external_id: str, cipher: PlatformCiphertext) -> Opened:
        if not cipher.open_id:
            raise DecryptError(f"trade {external_id} carries no OAID to decrypt by")
        now = datetime.fromtimestamp(self.clock(), UTC).astimezone(BEIJING)
        query = [{"oaid": cipher.open_id, "tid": external_id, "scene": self.scene}]
        params = {
            "method": "taobao.top.oaid.decrypt",
            "app_key": self.app_key,
            "session": self.session,
            "timestamp": now.strftime("%Y-%m-%d %H:%M:%S"),
            "format": "json",
            "v": "2.0",
            "sign_method": self.sign_method,
            "query_list": json.dumps(query, separators=(",", ":")),
        }
        params["sign"] = top_sign(params, self.app_secret, self.sign_method)
        answer = _post(self.url, params, self.timeout_s)
        if "error_response" in answer:
            error = answer["error_response"]
            why = error.get("sub_msg") or error.get("msg") or error
            raise DecryptError(f"taobao.top.oaid.decrypt refused: {why}")
        try:
            found = answer["top_oaid_decrypt_response"]["receiver_list"]["receiver"]
        except (KeyError, TypeError) as exc:
            raise DecryptError(f"taobao.top.oaid.decrypt answered without {exc}") from None
        mine = next((r for r in found if str(r.get("tid")) == external_id), None)
        if mine is None or mine.get("matched") is False:
            # The OAID no longer matches the trade (its receiver changed): fetch it again.
            raise DecryptError(f"the OAID of trade {external_id} no longer matches it")
        phone = split_virtual(mine["mobile"]) if mine.get("mobile") else None
        return Opened(
            name=mine.get("name"),
            phone=phone.number if phone else mine.get("phone"),
            phone_extension=phone.extension if phone else None,
            street=mine.get("address_detail"),
        )


class DouyinDecrypter:
    """`order.batchDecrypt` for the ciphertexts of one order."""

    platform = "douyin"
    method = "order.batchDecrypt"

    def __init__(
        self,
        *,
        app_key: str,
        app_secret: str,
        access_token: str,
        url: str = DOUYIN_URL,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app_key = _required(app_key, "the Douyin app_key")
        self.app_secret = _required(app_secret, "the Douyin app secret")
        self.access_token = _required(access_token, "the shop's Douyin access_token")
        self.url, self.timeout_s, self.clock = url, timeout_s, clock

    def open(self, external_id: str, cipher: PlatformCiphertext) -> Opened:
        wanted = {f: v for f in ("name", "phone", "address") if (v := getattr(cipher, f))}
        if not wanted:
            return Opened()
        infos = [{"auth_id": external_id, "cipher_text": text} for text in wanted.values()]
        now = datetime.fromtimestamp(self.clock(), UTC).astimezone(BEIJING)
        params = {
            "app_key": self.app_key,
            "method": self.method,
            "access_token": self.access_token,
            "param_json": json.dumps(
                {"cipher_infos": infos}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            ),
            "timestamp": now.strftime("%Y-%m-%d %H:%M:%S"),
            "v": "2",
        }
        params["sign"] = douyin_sign(params, self.app_secret)
        answer = _post(f"{self.url}/{self.method.replace('.', '/')}", params, self.timeout_s)
        if answer.get("code") != 10000:
            raise DecryptError(f"order.batchDecrypt refused: {answer.get('msg', answer)}")
        try:
            results = answer["data"]["decrypt_infos"]
        except (KeyError, TypeError) as exc:
            raise DecryptError(f"order.batchDecrypt answered without {exc}") from None
        opened = {r["cipher_text"]: r for r in results if r.get("err_no", 0) == 0}
        name, phone, street = (opened.get(wanted.get(f, "")) for f in ("name", "phone", "address"))
        number = extension = None
        if phone is not None:
            if phone.get("is_virtual_tel") and phone.get("phone_no_a"):
                number, extension = phone["phone_no_a"], phone.get("phone_no_b") or None
            else:
                split = split_virtual(phone.get("decrypt_text") or "")
                number, extension = split.number or None, split.extension
        return Opened(
            name=name.get("decrypt_text") if name else None,
            phone=number,
            phone_extension=extension,
            street=street.get("decrypt_text") if street else None,
        )
