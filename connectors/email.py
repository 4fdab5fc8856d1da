"""E-mail to customers over SMTP: a rendered message as MIME, handed to the operator's relay.

`compose` writes multipart/alternative (plain text, then HTML) as wire bytes (RFC 5322 and
2045-2047): a subject or display name in Chinese goes out RFC 2047 encoded (UTF-8, base64
encoded words, folded), bodies as UTF-8 in base64, lines CRLF. It writes the bytes itself
rather than through `email.message.EmailMessage` and `email.policy.SMTP`, whose header
registry and generator cost about 3 ms a message (the notifier's whole budget at 1,000
messages/s); the tests read its output back with the standard library's parser. Its
Message-ID is derived from the notice's idempotency key, so a message sent again after a crash
(the relay took it, the outcome was not yet recorded) carries the same Message-ID, and mail
clients and relays that deduplicate on it show one.

`SmtpMailer` keeps one conversation open from message to message (reconnecting when the relay
closed it): STARTTLS (certificate verified) unless turned off, AUTH when a user is set (never
without TLS). A 4xx answer, a refused or cut
connection and a timeout are `TransientFailure` (tried again); a 5xx answer is
`PermanentFailure` (recorded failed, dead-lettered). A relay that refuses our credentials or
cannot do STARTTLS is `SmtpMisconfigured`: no message could be sent, so the notifier stops
(exit 78) rather than failing every message.
"""

from __future__ import annotations

import base64
import hashlib
import re
import smtplib
import ssl
from dataclasses import dataclass
from email.utils import format_datetime, formataddr, parseaddr
from functools import lru_cache
from typing import Protocol

from pydantic import SecretStr

from connectors.messages import Rendered
from connectors.outbound import PermanentFailure, TransientFailure
from events.models import utc_now


class SmtpMisconfigured(RuntimeError):
    """The relay cannot be used as configured (credentials, STARTTLS, no host or From)."""


class InvalidAddress(ValueError):
    """The recipient's address cannot be written in a header (the reason names no address)."""


@dataclass(frozen=True)
class Composed:
    """A message as it goes to the relay: the envelope and the bytes."""

    sender: str  # envelope MAIL FROM (the From address)
    recipient: str  # envelope RCPT TO
    message_id: str
    wire: bytes


class Mailer(Protocol):
    def send(self, message: Composed) -> str:
        """Hands `message` to the relay; the relay's answer. Raises `CallFailed`."""
        ...


def message_id(idempotency_key: str, sender: str) -> str:
    """`<key@domain of the From address>`: the same for every try of one message."""
    return f"<{idempotency_key}@{_domain(sender)}>"


@lru_cache(maxsize=64)
def _domain(sender: str) -> str:
    _, at, domain = parseaddr(sender)[1].rpartition("@")
    return domain if at and domain else "orderstream.invalid"


# An address as RFC 5321 takes it in RCPT TO, without quoted local parts or comments (what a
# shop's customer types): atoms joined by dots, @, a domain of labels. No whitespace, no CR/LF.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDRESS = re.compile(
    rf"^{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)


def _header(name: str, value: str) -> bytes:
    """`Name: value`, RFC 2047 encoded unless plain ASCII: UTF-8 in base64 encoded words of
    at most 68 characters (whole characters in each), one per folded line."""
    value = " ".join(value.split())  # one line: a template's stray newline is no header break
    if value.isascii() and len(name) + len(value) < 77:
        return f"{name}: {value}\r\n".encode()
    return f"{name}: {_encoded_words(value)}\r\n".encode()


def _encoded_words(text: str, *, per_word: int = 42) -> str:
    """`=?utf-8?b?...?=` words joined by CRLF SP (a word: at most `per_word` bytes of UTF-8,
    56 base64 characters, 68 with its markers, so a line with `Subject: ` stays within 78;
    never a character cut in two)."""
    words, chunk = [], b""
    for char in text:
        encoded = char.encode()
        if len(chunk) + len(encoded) > per_word:
            words.append(chunk)
            chunk = b""
        chunk += encoded
    words.append(chunk)
    return "\r\n ".join(f"=?utf-8?b?{base64.b64encode(w).decode()}?=" for w in words)


@lru_cache(maxsize=64)
def _from(sender: str) -> tuple[str, bytes]:
    """The envelope address and the From header of the operator's sender (parsed once)."""
    name, address = parseaddr(sender)
    if not _ADDRESS.match(address):
        raise InvalidAddress("the sender (OMS_SMTP_FROM) is not an e-mail address")
    return address, b"From: " + formataddr((name, address), charset="utf-8").encode() + b"\r\n"


def _part(content_type: str, text: str) -> bytes:
    body = base64.encodebytes(text.encode()).replace(b"\n", b"\r\n")
    return (
        f'Content-Type: {content_type}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + body


def compose(
    rendered: Rendered, *, sender: str, recipient: str, message_id: str, name: str | None = None
) -> Composed:
    """The MIME message: multipart/alternative of plain text and HTML (text alone without)."""
    if not _ADDRESS.match(recipient):
        raise InvalidAddress("not an e-mail address")
    envelope_from, from_header = _from(sender)
    display = " ".join((name or "").split())
    head = [
        from_header,
        b"To: " + formataddr((display, recipient), charset="utf-8").encode() + b"\r\n",
        _header("Subject", rendered.subject),
        f"Date: {format_datetime(utc_now())}\r\n".encode(),
        f"Message-ID: {message_id}\r\n".encode(),
        b"MIME-Version: 1.0\r\n",
        b"Auto-Submitted: auto-generated\r\n",  # RFC 3834: no auto-replies to it
    ]
    if rendered.html is None:
        wire = b"".join(head) + _part("text/plain", rendered.text)
    else:
        boundary = "=_oms_" + hashlib.sha256(message_id.encode()).hexdigest()[:32]
        head.append(f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'.encode())
        delimiter = f"--{boundary}\r\n".encode()
        wire = (
            b"".join(head)
            + b"\r\n"
            + delimiter
            + _part("text/plain", rendered.text)
            + delimiter
            + _part("text/html", rendered.html)
            + f"--{boundary}--\r\n".encode()
        )
    return Composed(envelope_from, recipient, message_id, wire)


class SmtpMailer:
    """One SMTP relay (OMS_SMTP_*)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        starttls: bool = True,
        user: str | None = None,
        password: SecretStr | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        if user and not starttls:
            raise SmtpMisconfigured("OMS_SMTP_USER is set without STARTTLS: no password in clear")
        if user and password is None:
            raise SmtpMisconfigured("OMS_SMTP_USER is set without OMS_SMTP_PASSWORD")
        self.host, self.port, self.starttls = host, port, starttls
        self.user, self.password, self.timeout_s = user, password, timeout_s
        self._smtp: smtplib.SMTP | None = None  # kept open between messages

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is None:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
            try:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.user and self.password is not None:
                    smtp.login(self.user, self.password.get_secret_value())
            except BaseException:
                smtp.close()
                raise
            self._smtp = smtp
        return self._smtp

    def clone(self) -> SmtpMailer:
        """The same relay, on a conversation of its own (for another sending thread)."""
        return SmtpMailer(
            host=self.host,
            port=self.port,
            starttls=self.starttls,
            user=self.user,
            password=self.password,
            timeout_s=self.timeout_s,
        )

    def close(self) -> None:
        """Ends the conversation kept open (QUIT); the next message opens a new one."""
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()

    def _send_once(self, message: Composed) -> dict[str, tuple[int, bytes]]:
        try:
            return self._connection().sendmail(message.sender, [message.recipient], message.wire)
        except BaseException:
            # Whatever happened, the conversation is in an unknown state: start a new one.
            smtp, self._smtp = self._smtp, None
            if smtp is not None:
                smtp.close()
            raise

    def send(self, message: Composed) -> str:
        """One message, on the conversation kept open since the last one (a relay that closed
        it while idle is reconnected to at once: nothing was sent on a closed conversation)."""
        try:
            try:
                refused = self._send_once(message)
            except smtplib.SMTPServerDisconnected:
                refused = self._send_once(message)
        except (smtplib.SMTPAuthenticationError, smtplib.SMTPNotSupportedError) as exc:
            raise SmtpMisconfigured(f"{self.host}:{self.port}: {_said(exc)}") from exc
        except ssl.SSLCertVerificationError as exc:
            raise SmtpMisconfigured(f"{self.host}:{self.port}: {exc.verify_message}") from exc
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            # (By code and answer only: the address is not for the records.)
            detail = "; ".join(
                f"recipient refused: {code} {_text(text)}" for code, text in exc.recipients.values()
            )
            raise _failure(min(codes, default=550), detail) from exc
        except smtplib.SMTPResponseException as exc:
            raise _failure(exc.smtp_code, _said(exc)) from exc
        except (smtplib.SMTPException, OSError) as exc:  # refused, cut, timed out
            raise TransientFailure(f"{self.host}:{self.port}: {type(exc).__name__}: {exc}") from exc
        if refused:  # (one recipient: refused ones raise above; kept for several)
            return f"accepted, refused for {len(refused)} recipient(s)"
        return "250 accepted"


def _said(exc: smtplib.SMTPException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {_text(exc.smtp_error)}"
    return str(exc)


def _text(answer: bytes | str) -> str:
    return answer.decode(errors="replace") if isinstance(answer, bytes) else str(answer)


def _failure(code: int, detail: str) -> TransientFailure | PermanentFailure:
    """RFC 5321: 4yz is a transient negative completion, 5yz a permanent one."""
    if 400 <= code < 500:
        return TransientFailure(detail)
    return PermanentFailure(detail)
