"""The notifier's text channels (oms/notify.py with connectors/sms.py and
connectors/wechat_notify.py) on the real broker, against the local fake of Aliyun SMS, Twilio
and WeChat: each customer is told on the channels they have an address for, a platform's relay
number gets no SMS, a kind with no provider template is skipped, and a notifier stopped between
Aliyun's answer and the outcome record asks Aliyun on restart instead of sending again."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.sms import TextMessage
from events.models import (
    Customer,
    Event,
    OrderAcceptedByStore,
    OrderMode,
    OrderReady,
    utc_now,
)
from events.notifications import MessageChannel, NotificationStatus
from infra.publisher import Publisher
from infra.settings import Settings
from oms.notify import Notifier, NotifyNotConfigured, read_records, texts_of
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
from tests.factories import received
from tests.oms.test_notify import COOK

pytestmark = pytest.mark.integration


@pytest.fixture
def fake() -> Iterator[FakeMessaging]:
    with fake_messaging() as running:
        yield running


def texting(settings: Settings, fake: FakeMessaging, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "notify_email": False,
            "notify_channels": ["sms", "wechat"],
            "notify_quiet_hours": "",
            "notify_rate_limit": 100,
            "notify_preferences_file": tmp_path / "preferences.json",
            "notify_sms_provider": "aliyun",
            "aliyun_sms_access_key_id": ALIYUN_KEY_ID,
            "aliyun_sms_access_key_secret": SecretStr(ALIYUN_SECRET),
            "aliyun_sms_sign_name": ALIYUN_SIGN,
            "aliyun_sms_api_url": f"{fake.url}/aliyun/",
            "aliyun_sms_templates": {
                "confirmed": {"code": "SMS_100001", "params": {"order": "order", "time": "eta"}},
                "ready_for_pickup": {"code": "SMS_100002", "params": {"order": "order"}},
            },
            "wechat_notify_app_id": WECHAT_APP_ID,
            "wechat_notify_app_secret": SecretStr(WECHAT_SECRET),
            "wechat_api_url": f"{fake.url}/wechat",
            "wechat_notify_templates": {  # (no template for ready: not sent on WeChat)
                "confirmed": {
                    "template_id": "tpl-confirmed",
                    "data": {"character_string1": "order", "time2": "eta", "thing3": "store"},
                }
            },
        }
    )


def pickup(n: int, *, channel: str, customer: Customer) -> list[Event]:
    """A pickup order accepted with an estimate, then ready."""
    now = utc_now()
    order_id, external = f"t-{n}", f"{7000 + n}"
    base = received(
        order_id=order_id, event_id=f"r-{order_id}", external_id=external, channel=channel,
        mode=OrderMode.PICKUP, customer=customer, occurred_at=now, recorded_at=now, placed_at=now,
    )  # fmt: skip

    def follow(kind: type[Event], seq: int, **fields: Any) -> Event:
        return kind.model_validate(dict(
            event_id=f"{kind.__name__}-{order_id}", order_id=order_id, sequence=seq,
            occurred_at=now, recorded_at=now, correlation_id=order_id, actor=COOK,
            channel=channel, external_id=external, location="S01",
        ) | fields)  # fmt: skip

    accepted = follow(OrderAcceptedByStore, 2, estimated_ready_at=now + timedelta(minutes=20))
    return [base, accepted, follow(OrderReady, 3)]


def publish(settings: Settings, events: list[Event]) -> None:
    publisher = Publisher(settings)
    for event in events:
        publisher.publish(settings.topics.orders, event)
    publisher.flush()


def test_customers_are_told_on_every_text_channel_they_have_an_address_for(
    isolated_settings: Settings, fake: FakeMessaging, tmp_path: Path
) -> None:
    settings = texting(isolated_settings, fake, tmp_path)
    events = (
        pickup(1, channel="webshop", customer=Customer(id="c1", phone="13800000001"))
        + pickup(2, channel="wechat", customer=Customer(id="oWx-openid-2", phone="+8613800000002"))
        # A platform's relay number (隐私号) with the buyer's extension: no SMS to a relay.
        + pickup(
            3,
            channel="webshop",
            customer=Customer(id="c3", phone="13012345678", phone_extension="8421"),
        )  # fmt: skip
    )
    publish(settings, events)
    notifier = Notifier(settings, mailer=None, texts=texts_of(settings))
    # Order 1: 2 SMS. Order 2: 2 SMS + WeChat confirmed + WeChat ready skipped (no template).
    stats = notifier.run(until=lambda n: n.stats.sent + n.stats.skipped >= 6)
    assert (stats.sent, stats.skipped, stats.failed) == (5, 1, 0), stats
    assert fake.rejected == []
    sms = Counter((m["to"], m["template"], m["values"]["order"]) for m in fake.sms)
    assert sms == Counter({
        ("13800000001", "SMS_100001", "7001"): 1, ("13800000001", "SMS_100002", "7001"): 1,
        ("13800000002", "SMS_100001", "7002"): 1, ("13800000002", "SMS_100002", "7002"): 1,
    })  # fmt: skip
    [wechat] = fake.wechat
    assert wechat["touser"] == "oWx-openid-2" and wechat["template_id"] == "tpl-confirmed"
    assert wechat["data"]["character_string1"] == {"value": "7002"}
    records = read_records(settings)
    skipped = [r for r in records.values() if r.status is NotificationStatus.SKIPPED]
    assert [(r.notice.channel, r.notice.kind.value) for r in skipped] == [
        (MessageChannel.WECHAT, "ready_for_pickup")
    ]
    assert all("13800000" not in r.encode().decode() for r in records.values())

    again = Notifier(settings, mailer=None, texts=texts_of(settings))
    restarted = again.run(until=lambda n: n.stats.events >= len(events))
    assert (restarted.sent, restarted.skipped) == (0, 0) and len(fake.sms) == 4


class Stopped(BaseException):
    """The notifier killed between the provider's answer and the outcome record."""


@pytest.mark.parametrize(
    ("provider", "phone"), [("aliyun", "13800000001"), ("twilio", "+447700900001")]
)
def test_after_a_stop_between_the_answer_and_the_record_the_provider_is_asked_not_sent_again(
    isolated_settings: Settings, fake: FakeMessaging, tmp_path: Path, provider: str, phone: str
) -> None:
    settings = texting(isolated_settings, fake, tmp_path).model_copy(
        update={
            "notify_channels": ["sms"],
            "wechat_notify_app_id": None,
            "notify_sms_provider": provider,
            "twilio_account_sid": TWILIO_SID,
            "twilio_auth_token": SecretStr(TWILIO_TOKEN),
            "twilio_from": TWILIO_FROM,
            "twilio_api_url": f"{fake.url}/twilio",
        }
    )
    events = pickup(1, channel="webshop", customer=Customer(id="c1", phone=phone))
    publish(settings, events[:2])  # confirmed only
    texts = texts_of(settings)
    sms = texts[MessageChannel.SMS]
    real_send = sms.send

    def send_then_die(message: TextMessage) -> str:
        real_send(message)
        raise Stopped

    sms.send = send_then_die  # type: ignore[method-assign]
    with pytest.raises(Stopped):
        Notifier(settings, mailer=None, texts=texts).run(until=lambda n: False)
    [intent] = read_records(settings).values()
    assert intent.status is NotificationStatus.INTENT and len(fake.sms) == 1
    assert fake.sms[0]["provider"] == provider

    restarted = Notifier(settings, mailer=None, texts=texts_of(settings))
    stats = restarted.run(until=lambda n: n.stats.sent >= 1)
    assert stats.sent == 1 and len(fake.sms) == 1  # asked, found, not sent again
    [settled] = read_records(settings).values()
    assert settled.status is NotificationStatus.SENT and "asked after a restart" in settled.detail


def test_a_text_channel_without_its_settings_refuses_to_start(
    isolated_settings: Settings, fake: FakeMessaging, tmp_path: Path
) -> None:
    settings = texting(isolated_settings, fake, tmp_path)
    for missing, named in [
        ({"aliyun_sms_sign_name": None}, "OMS_ALIYUN_SMS_SIGN_NAME"),
        ({"notify_sms_provider": None}, "OMS_NOTIFY_SMS_PROVIDER"),
        ({"wechat_notify_app_secret": None}, "OMS_WECHAT_NOTIFY_APP_SECRET"),
        ({"aliyun_sms_templates": {"confirmd": {"code": "SMS_1"}}}, "'confirmd'"),
        ({"aliyun_sms_templates": {"confirmed": {"code": "nope"}}}, "confirmed.code"),
    ]:
        with pytest.raises(NotifyNotConfigured, match=named):
            texts_of(settings.model_copy(update=missing))


def test_delivery_reports_of_sent_sms_are_asked_for_and_recorded(
    isolated_settings: Settings, fake: FakeMessaging, tmp_path: Path
) -> None:
    settings = texting(isolated_settings, fake, tmp_path).model_copy(
        update={"notify_channels": ["sms"], "wechat_notify_app_id": None}
    )
    events = pickup(1, channel="webshop", customer=Customer(id="c1", phone="13800000001"))
    events += pickup(2, channel="webshop", customer=Customer(id="c2", phone="13800000002"))
    publish(settings, [e for e in events if e.event_type != "OrderReady"])  # confirmed only
    now = [utc_now()]
    notifier = Notifier(settings, mailer=None, texts=texts_of(settings), clock=lambda: now[0])
    notifier.run(until=lambda n: n.stats.sent >= 2)
    keys = {m["values"]["order"]: m["out_id"] for m in fake.sms}
    fake.aliyun_status[keys["7002"]] = 2  # the carrier could not reach the second phone
    notifier.ask_reports()
    assert (notifier.stats.delivered, notifier.stats.undelivered) == (0, 0)  # not a minute yet
    restarted = Notifier(settings, mailer=None, texts=texts_of(settings), clock=lambda: now[0])
    restarted.run(until=lambda n: n.stats.events >= 4)
    assert set(restarted.awaiting) == set(keys.values())  # found again on the log
    now[0] += timedelta(minutes=2)
    notifier.ask_reports()
    assert (notifier.stats.delivered, notifier.stats.undelivered) == (1, 1)
    records = read_records(settings)
    assert records[keys["7001"]].status is NotificationStatus.DELIVERED
    assert records[keys["7002"]].status is NotificationStatus.UNDELIVERED
    assert records[keys["7001"]].provider_id and records[keys["7001"]].sent_at

    # A restart finds nothing left to ask: both reports are final.
    again = Notifier(settings, mailer=None, texts=texts_of(settings), clock=lambda: now[0])
    again.run(until=lambda n: n.stats.events >= 4)
    assert again.awaiting == {} and len(fake.sms) == 2
