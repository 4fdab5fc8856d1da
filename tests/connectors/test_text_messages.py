"""Text-message providers (connectors/sms.py, connectors/wechat_notify.py) against a local fake
that checks what the real services check: Aliyun's signature and templates, Twilio's
credentials and fields, WeChat's token and the rules of template values."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr

from connectors.outbound import PermanentFailure, TransientFailure
from connectors.sms import (
    AliyunSms,
    AliyunTemplate,
    ProviderMisconfigured,
    TextMessage,
    TwilioSms,
    aliyun_signature,
    template_params,
)
from connectors.wechat_notify import WeChatSubscribe, WeChatTemplate, wechat_value
from events.notifications import MessageChannel, MessageKind, Notice
from tests.connectors.fake_messaging import (
    ALIYUN_KEY_ID,
    ALIYUN_SECRET,
    ALIYUN_SIGN,
    TWILIO_FROM,
    TWILIO_SID,
    TWILIO_TOKEN,
    WECHAT_APP_ID,
    WECHAT_SECRET,
    FakeMessaging,
    fake_messaging,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
ETA = datetime(2026, 12, 6, 11, 5, tzinfo=UTC)  # 19:05 in Shanghai


def notice(kind: MessageKind = MessageKind.CONFIRMED) -> Notice:
    return Notice(
        idempotency_key=f"key-{kind.value}", kind=kind, channel=MessageChannel.SMS,
        locale="zh-CN", cause_event_id="e-1", cause_type="OrderAcceptedByStore",
        caused_at=ETA, order_id="o-1", order_channel="wechat", external_id="WX20261206-0042",
        location="S01", eta=ETA, courier="李师傅",
    )  # fmt: skip


def message(to: str, kind: MessageKind = MessageKind.CONFIRMED, key: str = "k-1") -> TextMessage:
    return TextMessage(to=to, kind=kind.value, text="您的订单已确认,预计19:05可取", key=key,
                       params=template_params(notice(kind), zone=SHANGHAI))  # fmt: skip


@pytest.fixture
def fake() -> Iterator[FakeMessaging]:
    with fake_messaging() as running:
        yield running


def test_the_aliyun_signature_matches_the_published_example() -> None:
    # help.aliyun.com "签名机制": DescribeRegions signed with testid / testsecret.
    params = {"AccessKeyId": "testid", "Action": "DescribeRegions", "Format": "XML",
              "SignatureMethod": "HMAC-SHA1",
              "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
              "SignatureVersion": "1.0", "Timestamp": "2016-02-23T12:46:24Z",
              "Version": "2014-05-26"}  # fmt: skip
    assert aliyun_signature(params, "testsecret") == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="


def aliyun(fake: FakeMessaging, secret: str = ALIYUN_SECRET) -> AliyunSms:
    templates = {
        "confirmed": AliyunTemplate(code="SMS_100001", params={"order": "order", "time": "eta"}),
        "cancelled": AliyunTemplate(code="SMS_100002", params={"order": "order"}),
    }
    return AliyunSms(access_key_id=ALIYUN_KEY_ID, access_key_secret=SecretStr(secret),
                     sign_name=ALIYUN_SIGN, templates=templates,
                     api_url=f"{fake.url}/aliyun/")  # fmt: skip


def test_aliyun_sends_the_approved_template_with_its_values_and_can_be_asked_after(
    fake: FakeMessaging,
) -> None:
    client = aliyun(fake)
    biz_id = client.send(message("+8613800000000", key="k-1"))
    assert biz_id and fake.rejected == []
    [sent] = fake.sms
    assert (sent["to"], sent["template"], sent["out_id"]) == ("13800000000", "SMS_100001", "k-1")
    assert sent["values"] == {"order": "WX20261206-0042", "time": "12-06 19:05"}
    since = datetime.now(UTC)
    assert client.already_sent(message("+8613800000000", key="k-1"), since) is True
    assert client.already_sent(message("+8613800000000", key="k-2"), since) is False
    assert client.report(message("+8613800000000", key="k-1"), biz_id, since) == "delivered"
    fake.aliyun_status["k-1"] = 2
    assert client.report(message("+8613800000000", key="k-1"), biz_id, since) == "undelivered"
    assert client.already_sent(message("+8613800000000", key="k-1"), since) is False
    fake.aliyun_status["k-1"] = 1
    assert client.report(message("+8613800000000", key="k-1"), biz_id, since) == "pending"


def test_aliyun_failures_are_told_apart(fake: FakeMessaging) -> None:
    client = aliyun(fake)
    fake.fail_next.append(("aliyun", "isv.BUSINESS_LIMIT_CONTROL"))
    with pytest.raises(TransientFailure, match="BUSINESS_LIMIT_CONTROL"):
        client.send(message("+8613800000000"))
    with pytest.raises(PermanentFailure, match="MOBILE_NUMBER_ILLEGAL"):
        client.send(message("+86123"))
    with pytest.raises(PermanentFailure, match="no Aliyun template"):
        client.send(message("+8613800000000", kind=MessageKind.REFUNDED))
    with pytest.raises(ProviderMisconfigured, match="SignatureDoesNotMatch"):
        aliyun(fake, secret="wrong").send(message("+8613800000000"))
    assert fake.sms == []
    with pytest.raises(ProviderMisconfigured):
        AliyunSms(access_key_id="", access_key_secret=SecretStr("x"), sign_name="s", templates={})


def twilio(fake: FakeMessaging, token: str = TWILIO_TOKEN) -> TwilioSms:
    return TwilioSms(account_sid=TWILIO_SID, auth_token=SecretStr(token), sender=TWILIO_FROM,
                     api_url=f"{fake.url}/twilio")  # fmt: skip


def test_twilio_sends_the_rendered_text_and_tells_failures_apart(fake: FakeMessaging) -> None:
    sid = twilio(fake).send(message("+447700900123"))
    assert sid.startswith("SM") and fake.rejected == []
    [sent] = fake.sms
    assert (sent["to"], sent["from"], sent["body"]) == (
        "+447700900123", TWILIO_FROM, "您的订单已确认,预计19:05可取",
    )  # fmt: skip
    with pytest.raises(PermanentFailure, match="E.164"):
        twilio(fake).send(message("07700 900123"))
    fake.fail_next.append(("twilio", 429))
    with pytest.raises(TransientFailure, match="429"):
        twilio(fake).send(message("+447700900123"))
    with pytest.raises(ProviderMisconfigured, match="20003"):
        twilio(fake, token="wrong").send(message("+447700900123"))
    with pytest.raises(ProviderMisconfigured, match="SID"):
        TwilioSms(account_sid="nope", auth_token=SecretStr("t"), sender=TWILIO_FROM)
    assert len(fake.sms) == 1
    now = datetime.now(UTC)
    assert twilio(fake).report(message("+447700900123"), sid, now) == "delivered"
    for told, report in [("undelivered", "undelivered"), ("failed", "undelivered"),
                         ("sent", "pending"), ("queued", "pending")]:  # fmt: skip
        fake.twilio_status[sid] = told
        assert twilio(fake).report(message("+447700900123"), sid, now) == report
    with pytest.raises(PermanentFailure, match="404"):
        twilio(fake).report(message("+447700900123"), "SM" + "0" * 32, now)


def test_twilio_is_asked_whether_it_has_a_message_after_a_crash(fake: FakeMessaging) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    client = twilio(fake)
    sid = client.send(message("+447700900123"))
    assert client.already_sent(message("+447700900123"), before) is True
    asked = fake.twilio_lists[-1]
    assert (asked["To"], asked["From"]) == ("+447700900123", TWILIO_FROM)
    assert asked["DateSent>"] == before.date().isoformat()
    assert client.already_sent(message("+447700900124"), before) is False  # another number
    other = replace(message("+447700900123"), text="您的订单已送达")
    assert client.already_sent(other, before) is False  # another notice
    assert client.already_sent(message("+447700900123"), before + timedelta(days=1)) is False
    fake.twilio_status[sid] = "failed"  # it never left Twilio: not sent
    assert client.already_sent(message("+447700900123"), before) is False
    fake.twilio_status[sid] = "delivered"
    # Found on a later page: newer messages to the same number fill the first.
    for n in range(120):
        client.send(replace(message("+447700900123"), text=f"订单 {n} 已确认"))
    assert client.already_sent(message("+447700900123"), before) is True
    assert fake.twilio_lists[-1].get("Page") == "1"
    with pytest.raises(ProviderMisconfigured):
        twilio(fake, token="wrong").already_sent(message("+447700900123"), before)


def wechat(fake: FakeMessaging, secret: str = WECHAT_SECRET) -> WeChatSubscribe:
    template = WeChatTemplate(
        template_id="tpl-confirmed",
        data={"character_string1": "order", "time2": "eta", "thing3": "store"},
        page="pages/order/detail",
    )
    return WeChatSubscribe(app_id=WECHAT_APP_ID, app_secret=SecretStr(secret),
                           templates={"confirmed": template},
                           api_url=f"{fake.url}/wechat")  # fmt: skip


def test_wechat_sends_the_template_keys_in_their_rules_and_renews_a_stale_token(
    fake: FakeMessaging,
) -> None:
    client = wechat(fake)
    openid = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
    assert client.send(message(openid, key="k-1")) and client.send(message(openid, key="k-2"))
    assert fake.tokens_issued == 1 and fake.rejected == []
    first = fake.wechat[0]
    assert first["touser"] == openid and first["page"] == "pages/order/detail"
    assert first["data"] == {
        "character_string1": {"value": "WX20261206-0042"},
        "time2": {"value": "2026年12月6日 19:05"},
        "thing3": {"value": "S01"},
    }
    fake.expire_tokens()
    client.send(message(openid, key="k-3"))
    assert fake.tokens_issued == 2 and len(fake.wechat) == 3


def test_wechat_failures_are_told_apart(fake: FakeMessaging) -> None:
    client = wechat(fake)
    fake.fail_next.append(("wechat", 43101))
    with pytest.raises(PermanentFailure, match="43101"):
        client.send(message("oOpenId"))
    fake.fail_next.append(("wechat", -1))
    with pytest.raises(TransientFailure, match="-1"):
        client.send(message("oOpenId"))
    with pytest.raises(PermanentFailure, match="no WeChat template"):
        client.send(message("oOpenId", kind=MessageKind.DELIVERED))
    with pytest.raises(ProviderMisconfigured, match="40125"):
        wechat(fake, secret="wrong").send(message("oOpenId"))
    assert fake.wechat == []


def test_wechat_values_keep_to_their_key_rules() -> None:
    assert (
        wechat_value("thing3", "一二三四五六七八九十一二三四五六七八九十多余")
        == "一二三四五六七八九十一二三四五六七八九十"
    )
    assert wechat_value("character_string1", "订单 WX-42/七") == "WX-42/"
    assert wechat_value("time2", datetime(2026, 1, 5, 9, 7)) == "2026年1月5日 09:07"
    assert wechat_value("amount4", "¥1,234.50") == "¥1234.50"
