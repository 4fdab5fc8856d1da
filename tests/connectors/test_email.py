"""E-mail over SMTP (connectors/email.py): the MIME a customer's client gets, and how a real
SMTP server's answers are taken (aiosmtpd on a local port)."""

from __future__ import annotations

from collections.abc import Iterator
from email import message_from_bytes, policy

import pytest
from pydantic import SecretStr

from connectors.email import InvalidAddress, SmtpMailer, SmtpMisconfigured, compose, message_id
from connectors.messages import Rendered
from connectors.outbound import PermanentFailure, TransientFailure
from tests.connectors.smtp_server import RecordingHandler, free_port, smtp_server

SENDER = "饺子馆 <orders@dumplings.example>"
RENDERED = Rendered(
    subject="订单 1001 已确认", text="您的订单已确认。\n", html="<p>您的订单已确认。</p>"
)


def test_a_message_is_multipart_alternative_with_plain_then_html() -> None:
    composed = compose(
        RENDERED, sender=SENDER, recipient="wang@example.com", message_id="<k@x>", name="王伟"
    )
    email = message_from_bytes(composed.wire, policy=policy.default)
    assert (composed.sender, composed.recipient) == ("orders@dumplings.example", "wang@example.com")
    assert email["To"].addresses[0].display_name == "王伟" and email["Message-ID"] == "<k@x>"
    assert email.get_content_type() == "multipart/alternative"
    parts = [part.get_content_type() for part in email.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    assert all(part.get_content_charset() == "utf-8" for part in email.iter_parts())


def test_the_utf8_subject_goes_out_rfc2047_encoded_and_reads_back() -> None:
    wire = compose(RENDERED, sender=SENDER, recipient="wang@example.com", message_id="<k@x>").wire
    assert b"=?utf-8?" in wire.lower() and "订单".encode() not in wire.split(b"\r\n\r\n")[0]
    assert b"\r\n" in wire and all(len(line) <= 998 for line in wire.split(b"\r\n"))
    back = message_from_bytes(wire, policy=policy.default)
    assert (
        back["Subject"] == "订单 1001 已确认" and back["From"].addresses[0].display_name == "饺子馆"
    )
    assert back.get_body(("plain",)).get_content().rstrip() == "您的订单已确认。"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "recipient", ["not an address", "a@b@c", "x@y.example\r\nBcc: evil@x.example", ""]
)
def test_an_address_that_cannot_be_written_is_refused_without_naming_it(recipient: str) -> None:
    with pytest.raises(InvalidAddress) as raised:
        compose(RENDERED, sender=SENDER, recipient=recipient, message_id="<k@x>")
    assert recipient not in str(raised.value) or not recipient


def test_the_message_id_is_derived_from_the_idempotency_key_and_the_senders_domain() -> None:
    assert message_id("abc-1", SENDER) == "<abc-1@dumplings.example>"
    assert message_id("abc-1", SENDER) == message_id("abc-1", SENDER)
    assert message_id("abc-1", "no domain") == "<abc-1@orderstream.invalid>"


@pytest.fixture
def server() -> Iterator[tuple[RecordingHandler, int]]:
    with smtp_server() as running:
        yield running


def _mailer(port: int) -> SmtpMailer:
    return SmtpMailer(host="127.0.0.1", port=port, starttls=False, timeout_s=5)


def _email() -> object:
    return compose(
        RENDERED, sender=SENDER, recipient="wang@example.com", message_id="<k@d.example>"
    )


def test_a_relay_that_takes_the_message_has_it_whole(server: tuple[RecordingHandler, int]) -> None:
    handler, port = server
    assert _mailer(port).send(_email()).startswith("250")  # type: ignore[arg-type]
    [got] = handler.received
    assert got.recipients == ["wang@example.com"]
    assert (
        got.message["Message-ID"] == "<k@d.example>" and got.message["Subject"] == RENDERED.subject
    )


def test_one_conversation_carries_message_after_message_and_is_opened_again_when_closed(
    server: tuple[RecordingHandler, int],
) -> None:
    handler, port = server
    mailer = _mailer(port)
    for _ in range(3):
        assert mailer.send(_email()).startswith("250")  # type: ignore[arg-type]
    mailer.close()  # (as a relay closing an idle conversation would)
    assert mailer.send(_email()).startswith("250")  # type: ignore[arg-type]
    assert len(handler.received) == 4
    assert len(set(handler.peers[:3])) == 1 and handler.peers[3] != handler.peers[0]


def test_a_4xx_answer_is_transient_and_a_5xx_answer_permanent(
    server: tuple[RecordingHandler, int],
) -> None:
    handler, port = server
    handler.answers = ["451 4.3.0 try later", "550 5.1.1 no such user"]
    with pytest.raises(TransientFailure, match="451"):
        _mailer(port).send(_email())  # type: ignore[arg-type]
    with pytest.raises(PermanentFailure, match="550"):
        _mailer(port).send(_email())  # type: ignore[arg-type]
    assert handler.received == []


def test_a_refused_connection_is_transient() -> None:
    with pytest.raises(TransientFailure, match="ConnectionRefused"):
        _mailer(free_port()).send(_email())  # type: ignore[arg-type]


def test_a_relay_without_starttls_is_a_misconfiguration(
    server: tuple[RecordingHandler, int],
) -> None:
    _, port = server
    mailer = SmtpMailer(host="127.0.0.1", port=port, starttls=True, timeout_s=5)
    with pytest.raises(SmtpMisconfigured):
        mailer.send(_email())  # type: ignore[arg-type]


def test_no_password_is_sent_without_tls() -> None:
    with pytest.raises(SmtpMisconfigured, match="STARTTLS"):
        SmtpMailer(host="h", port=25, starttls=False, user="u", password=SecretStr("p"))


def test_a_long_subject_is_folded_into_whole_encoded_words_and_reads_back_whole() -> None:
    subject = "您的订单 WX20261206-0042 已确认，" * 4 + "预计十九点零五分可取餐，谢谢光临😀"
    rendered = Rendered(subject=subject, text="x\n", html=None)
    wire = compose(rendered, sender=SENDER, recipient="wang@example.com", message_id="<k@x>").wire
    head = wire.split(b"\r\n\r\n")[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    assert head.count(b"=?utf-8?b?") > 3
    back = message_from_bytes(wire, policy=policy.default)
    assert back["Subject"] == subject and back.get_content_type() == "text/plain"
