"""Customer messages from templates (connectors/messages.py): both locales, the sandbox, HTML
escaping and an operator's override."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from jinja2.exceptions import SecurityError

from connectors.messages import MessageTemplates, TemplateFailed, money
from events.notifications import MessageChannel, MessageKind, Notice

SHANGHAI = ZoneInfo("Asia/Shanghai")
AT = datetime(2026, 11, 25, 4, 30, tzinfo=UTC)  # 12:30 in Shanghai


def _notice(kind: MessageKind, locale: str, **fields: Any) -> Notice:
    return Notice.model_validate(
        dict(
            idempotency_key="k-1", kind=kind, channel=MessageChannel.EMAIL, locale=locale,
            cause_event_id="e-1", cause_type="X", caused_at=AT, order_id="o-1",
            order_channel="webshop", external_id="1001",
        ) | fields
    )  # fmt: skip


@pytest.mark.parametrize("locale", ["en", "zh-CN"])
@pytest.mark.parametrize("kind", list(MessageKind))
def test_every_kind_renders_in_both_locales_on_both_channels(
    kind: MessageKind, locale: str
) -> None:
    templates = MessageTemplates(zone=SHANGHAI)
    notice = _notice(
        kind, locale, eta=AT, previous_eta=AT, courier="李师傅", carrier="SF",
        tracking_number="SF123", tracking_url="https://t.example/SF123", amount=1250,
        currency="CNY", reason="太忙", location="S01",
    )  # fmt: skip
    email = templates.render(notice, name="王伟")
    assert "1001" in email.subject and "\n" not in email.subject
    assert "1001" in email.text and "王伟" in email.text
    assert email.html is not None and "<html" in email.html and "1001" in email.html
    sms = templates.render(notice.model_copy(update={"channel": MessageChannel.SMS}))
    assert "1001" in sms.text and sms.html is None


def test_english_and_chinese_say_the_eta_in_the_operators_zone() -> None:
    templates = MessageTemplates(zone=SHANGHAI)
    english = templates.render(_notice(MessageKind.CONFIRMED, "en", eta=AT), name="Ann")
    assert english.subject == "Order 1001 confirmed"
    assert "Hello Ann," in english.text and "ready at 25 Nov 12:30" in english.text
    chinese = templates.render(_notice(MessageKind.CONFIRMED, "zh-CN", eta=AT))
    assert chinese.subject == "订单 1001 已确认"
    assert "预计 11月25日 12:30 出餐" in chinese.text and chinese.text.startswith("您好：")


def test_refunds_show_money_in_major_units() -> None:
    assert (money(1250, "CNY"), money(500, "JPY"), money(199, "USD")) == (
        "¥12.50", "500 JPY", "1.99 USD",
    )  # fmt: skip
    refund = MessageTemplates(zone=SHANGHAI).render(
        _notice(MessageKind.REFUNDED, "zh-CN", amount=1250, currency="CNY")
    )
    assert "已退款 ¥12.50" in refund.text


def test_html_is_escaped_and_plain_text_is_not() -> None:
    reason = '<script>alert("x")</script> & co'
    rendered = MessageTemplates(zone=SHANGHAI).render(
        _notice(MessageKind.CANCELLED, "en", reason=reason)
    )
    assert rendered.html is not None and "<script>" not in rendered.html
    assert "&lt;script&gt;" in rendered.html and "&amp; co" in rendered.html
    assert reason in rendered.text


def _operator_dir(tmp_path: Path, body: str) -> Path:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "delivered.email.txt").write_text(
        '{% extends "en/_layout.email.txt" %}{% block subject %}Here: {{ external_id }}'
        "{% endblock %}{% block body %}" + body + "{% endblock %}"
    )
    return tmp_path


def test_an_operators_template_overrides_the_shipped_one_file_by_file(tmp_path: Path) -> None:
    templates = MessageTemplates(
        directory=_operator_dir(tmp_path, "Arrived, {{ name }}."), zone=SHANGHAI
    )
    rendered = templates.render(_notice(MessageKind.DELIVERED, "en"), name="Ann")
    assert rendered.subject == "Here: 1001" and "Arrived, Ann." in rendered.text
    assert rendered.html is not None and "has been delivered" in rendered.html  # shipped one


@pytest.mark.parametrize(
    "body",
    ["{{ ''.__class__ }}", "{{ ''.__class__.__mro__[1].__subclasses__() }}",
     "{{ external_id.__class__ }}"],
)  # fmt: skip
def test_a_template_reaching_for_python_internals_raises_security_error(
    tmp_path: Path, body: str
) -> None:
    templates = MessageTemplates(directory=_operator_dir(tmp_path, body), zone=SHANGHAI)
    with pytest.raises(TemplateFailed) as raised:
        templates.render(_notice(MessageKind.DELIVERED, "en"))
    assert isinstance(raised.value.__cause__, SecurityError)


def test_a_template_naming_an_unknown_value_fails_instead_of_sending_a_blank(
    tmp_path: Path,
) -> None:
    templates = MessageTemplates(directory=_operator_dir(tmp_path, "{{ nmae }}"), zone=SHANGHAI)
    with pytest.raises(TemplateFailed, match="nmae"):
        templates.render(_notice(MessageKind.DELIVERED, "en"))
