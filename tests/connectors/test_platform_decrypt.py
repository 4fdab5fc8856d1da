"""The platforms' decrypt clients against local fakes that check what the platforms check:
the signature over every parameter, the required parameters, the batch limits; and answer in
the published formats (connectors/platform_decrypt.py has the sources)."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from connectors.platform_decrypt import (
    DouyinDecrypter,
    PinduoduoDecrypter,
    TaobaoOaidDecrypter,
    douyin_sign,
    pdd_sign,
    top_sign,
)
from connectors.platform_pii import DecryptError, Opened
from events.models import PlatformCiphertext
from tests.fake_http import FakeHttpServer

PDD_SECRET, TOP_SECRET = "pdd-client-secret", "top-app-secret"
PDD_NAME = "~AgAAAAKj5K0FdThr3gCXEjX7VukfDJ4VXsxKOdZIGJk=~e3T2WeW7~0~~"
PDD_PHONE = "$Y/YKpKSij9Re$AgAAAAKj5K0GdThr3gD91OwqU75VBWn0HBgJhtknQj0=$0$$"
PDD_ADDRESS = "~AgAAAAQ8QMcFToQakAAp/+XZ8M5rYUVluWGC7ppm308=~0~"
PDD_CLEAR = {PDD_NAME: ("林晓坤", 5), PDD_PHONE: ("18400913965-7576", 6),
             PDD_ADDRESS: ("王厝宫路8号", 8)}  # fmt: skip
OAID = "1XBqtAXr1vMeicL0ia9k8Nh6LUDvqs8JF4Y2iaH6L4oB9gHGliapqzvYEicIAEibvgHsNkV2ECIsDDHcJlZ"


def _pdd(params: dict[str, str]) -> dict[str, Any]:
    missing = {"type", "client_id", "access_token", "timestamp", "data_type", "sign"} - set(params)
    if missing:
        return {"error_response": {"error_code": 10000, "error_msg": f"缺少参数 {missing}"}}
    if params["sign"] != pdd_sign(params, PDD_SECRET):
        return {"error_response": {"error_code": 10016, "error_msg": "签名校验失败"}}
    items = json.loads(params["data_list"])
    if not 0 < len(items) <= 100 or params["type"] != "pdd.open.decrypt.batch":
        return {"error_response": {"error_code": 10000, "error_msg": "参数错误"}}
    answers = []
    for item in items:
        clear, data_type = PDD_CLEAR.get(item["encrypted_data"], (None, 0))
        answers.append({
            "data_tag": item["data_tag"], "encrypted_data": item["encrypted_data"],
            "decrypted_data": clear, "data_type": data_type,
            "error_code": 0 if clear else 50002, "error_msg": "" if clear else "解密失败",
        })  # fmt: skip
    return {"open_decrypt_batch_response": {"data_decrypt_list": answers}}


DOUYIN_SECRET = "douyin-app-secret"
DOUYIN_PHONE = "$c0qBj0QrZm9qae50eoBTInPj8PWvCjUyafxWt5cELI0=$pExhpmm6cJ5VuSkv*CgkIARCtHCAB$1$$"
DOUYIN_NAME = "#ML3B#0BB1W4adLHYf+1s8VI3eLeeK0Kq0kc8zLLZ0B9W*CgkIARCtHCABKAESPgo8YToG#1##"


def _douyin(params: dict[str, str]) -> dict[str, Any]:
    required = {"app_key", "method", "access_token", "param_json", "timestamp", "v", "sign"}
    if missing := required - set(params):
        return {"code": 40001, "msg": f"缺少参数 {sorted(missing)}", "data": {}}
    if params["sign"] != douyin_sign(params, DOUYIN_SECRET):
        return {"code": 40004, "msg": "签名校验失败", "data": {}}
    body = json.loads(params["param_json"])
    if params["param_json"] != json.dumps(body, sort_keys=True, separators=(",", ":"),
                                          ensure_ascii=False):  # fmt: skip
        return {"code": 40003, "msg": "param_json 需按键排序且无空格", "data": {}}
    answers = []
    for info in body["cipher_infos"]:
        text = info["cipher_text"]
        virtual = text == DOUYIN_PHONE
        clear = "18400913965-7576" if virtual else ("李雷" if text == DOUYIN_NAME else "")
        answers.append({
            "auth_id": info["auth_id"], "cipher_text": text,
            "decrypt_text": clear,
            "err_no": 0 if text in (DOUYIN_PHONE, DOUYIN_NAME) else 300008,
            "err_msg": "", "data_type": 3 if virtual else 2, "is_virtual_tel": virtual,
            "phone_no_a": "18400913965" if virtual else "", "phone_no_b": "7576" if virtual else "",
            "expire_time": 1765000000,
        })  # fmt: skip
    return {"code": 10000, "msg": "success", "data": {"decrypt_infos": answers,
            "custom_err": {"err_code": 0, "err_msg": ""}}}  # fmt: skip


def _top(params: dict[str, str]) -> dict[str, Any]:
    required = {"method", "app_key", "session", "timestamp", "format", "v", "sign_method", "sign"}
    if missing := required - set(params):
        return {"error_response": {"code": 25, "msg": f"Missing {sorted(missing)}"}}
    if params["sign"] != top_sign(params, TOP_SECRET, params["sign_method"]):
        return {"error_response": {"code": 25, "msg": "Invalid signature"}}
    queries = json.loads(params["query_list"])
    if not 0 < len(queries) <= 20 or any(not q.get("oaid") or not q.get("tid") for q in queries):
        return {"error_response": {"code": 41, "msg": "Invalid arguments:query_list"}}
    receivers = [
        {"name": "王晓雯", "mobile": "18877771111-123", "phone": "",
         "address_detail": "文一西路588号", "town": "文新街道", "district": "西湖区",
         "city": "杭州市", "state": "浙江省", "country": "中国", "oaid": q["oaid"],
         "tid": q["tid"], "matched": q["oaid"] == OAID,
         "privacy_protection": True, "secret_no_expire_time": "2026-12-20 00:00:00"}
        for q in queries
    ]  # fmt: skip
    return {"top_oaid_decrypt_response": {"receiver_list": {"receiver": receivers}}}


@pytest.fixture
def platform() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A local server answering as PDD's router (/pdd) and TOP's (/top); the requests it got."""
    seen: list[dict[str, str]] = []
    answer: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
        "/pdd": _pdd, "/top": _top, "/order/batchDecrypt": _douyin,
    }  # fmt: skip

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            params = dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
            seen.append(params)
            data = json.dumps(answer[self.path](params), ensure_ascii=False).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json;charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = FakeHttpServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def pdd(url: str, secret: str = PDD_SECRET) -> PinduoduoDecrypter:
    return PinduoduoDecrypter(
        client_id="pdd-client", client_secret=secret, access_token="shop-token", url=f"{url}/pdd"
    )


def test_pinduoduo_opens_an_order_s_receiver_with_a_signed_batch(
    platform: tuple[str, list[dict[str, str]]],
) -> None:
    url, seen = platform
    cipher = PlatformCiphertext(
        platform="pinduoduo", name=PDD_NAME, phone=PDD_PHONE, address=PDD_ADDRESS
    )
    opened = pdd(url).open("260612-050163945762047", cipher)
    assert opened == Opened(
        name="林晓坤", phone="18400913965", phone_extension="7576", street="王厝宫路8号"
    )
    sent = seen[-1]
    assert sent["type"] == "pdd.open.decrypt.batch" and sent["data_type"] == "JSON"
    tags = {item["data_tag"] for item in json.loads(sent["data_list"])}
    assert tags == {"260612-050163945762047"}


def test_pinduoduo_refuses_a_wrong_signature_and_what_it_cannot_open_stays_shut(
    platform: tuple[str, list[dict[str, str]]],
) -> None:
    url, _ = platform
    cipher = PlatformCiphertext(platform="pinduoduo", name=PDD_NAME)
    with pytest.raises(DecryptError, match="签名校验失败"):
        pdd(url, secret="not-the-secret").open("1", cipher)
    unknown = PlatformCiphertext(platform="pinduoduo", name="~AgAAAAUnknown=~0~")
    assert pdd(url).open("1", unknown) == Opened()
    with pytest.raises(DecryptError, match="client_secret is not set"):
        pdd(url, secret="")


@pytest.mark.parametrize("sign_method", ["md5", "hmac-sha256"])
def test_taobao_opens_a_trade_s_receiver_by_its_oaid_with_a_signed_call(
    platform: tuple[str, list[dict[str, str]]], sign_method: str
) -> None:
    url, seen = platform
    client = TaobaoOaidDecrypter(
        app_key="12345678", app_secret=TOP_SECRET, session="shop-session",
        sign_method=sign_method, url=f"{url}/top",
    )  # fmt: skip
    opened = client.open("2986451203357719849", PlatformCiphertext(platform="tmall", open_id=OAID))
    assert opened == Opened(
        name="王晓雯", phone="18877771111", phone_extension="123", street="文一西路588号"
    )
    sent = seen[-1]
    assert sent["method"] == "taobao.top.oaid.decrypt" and sent["sign_method"] == sign_method
    assert json.loads(sent["query_list"]) == [
        {"oaid": OAID, "tid": "2986451203357719849", "scene": "1002"}
    ]


def test_taobao_refuses_a_wrong_signature_and_a_stale_oaid_is_not_taken(
    platform: tuple[str, list[dict[str, str]]],
) -> None:
    url, _ = platform
    wrong = TaobaoOaidDecrypter(
        app_key="12345678", app_secret="not-the-secret", session="s", url=f"{url}/top"
    )
    with pytest.raises(DecryptError, match="Invalid signature"):
        wrong.open("1", PlatformCiphertext(platform="tmall", open_id=OAID))
    right = TaobaoOaidDecrypter(app_key="12345678", app_secret=TOP_SECRET, session="s",
                                url=f"{url}/top")  # fmt: skip
    with pytest.raises(DecryptError, match="no longer matches"):
        right.open("1", PlatformCiphertext(platform="tmall", open_id="an-old-oaid"))
    with pytest.raises(DecryptError, match="no OAID"):
        right.open("1", PlatformCiphertext(platform="tmall", name_mask="王**"))


def test_douyin_opens_a_virtual_number_and_a_name_with_a_signed_call(
    platform: tuple[str, list[dict[str, str]]],
) -> None:
    url, seen = platform
    client = DouyinDecrypter(
        app_key="7001", app_secret=DOUYIN_SECRET, access_token="shop-token", url=url
    )
    cipher = PlatformCiphertext(platform="douyin", name=DOUYIN_NAME, phone=DOUYIN_PHONE)
    opened = client.open("4962566906438436758", cipher)
    assert opened == Opened(name="李雷", phone="18400913965", phone_extension="7576")
    sent = seen[-1]
    assert sent["method"] == "order.batchDecrypt" and sent["v"] == "2"
    infos = json.loads(sent["param_json"])["cipher_infos"]
    assert {info["auth_id"] for info in infos} == {"4962566906438436758"}
    wrong = DouyinDecrypter(app_key="7001", app_secret="nope", access_token="t", url=url)
    with pytest.raises(DecryptError, match="签名校验失败"):
        wrong.open("1", cipher)
