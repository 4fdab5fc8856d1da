"""E-mail to customers over SMTP: a rendered message as MIME, handed to the operator's relay.

`compose` builds multipart/alternative (plain text, then HTML) under `email.policy.SMTP`: a
subject in Chinese goes out RFC 2047 encoded, bodies as UTF-8, lines CRLF. Its Message-ID is
derived from the notice's idempotency key, so a message sent again after a crash (the relay
took it, the outcome was not yet recorded) carries the same Message-ID, and mail clients and
relays that deduplicate on it show one.

`SmtpMailer` sends each message in one conversation: STARTTLS (certificate verified) unless
turned off, AUTH when a user is set (never without TLS). A 4xx answer, a refused or cut
connection and a timeout are `TransientFailure` (tried again); a 5xx answer is
`PermanentFailure` (recorded failed, dead-lettered). A relay that refuses our credentials or
cannot do STARTTLS is `SmtpMisconfigured`: no message could be sent, so the notifier stops
(exit 78) rather than failing every message.
"""

from __future__ import annotations

import smtplib
import ssl
from email.errors import MessageError
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr
from typing import Protocol

from pydantic import SecretStr

from connectors.messages import Rendered
from connectors.outbound import PermanentFailure, TransientFailure
from events.models import utc_now


class SmtpMisconfigured(RuntimeError):
    """The relay cannot be used as configured (credentials, STARTTLS, no host or From)."""


class InvalidAddress(ValueError):
    """The recipient's address cannot be written in a header (the reason names no address)."""


class Mailer(Protocol):
    def send(self, message: EmailMessage) -> str:
        """Hands `message` to the relay; the relay's answer. Raises `CallFailed`."""
        ...


def message_id(idempotency_key: str, sender: str) -> str:
    """`<key@domain of the From address>`: the same for every try of one message."""
    _, at, domain = parseaddr(sender)[1].rpartition("@")
    domain = domain if at and domain else "orderstream.invalid"
    return f"<{idempotency_key}@{domain}>"


def compose(
    rendered: Rendered, *, sender: str, recipient: str, message_id: str, name: str | None = None
) -> EmailMessage:
    """The MIME message: multipart/alternative of plain text and HTML (text alone without)."""
    message = EmailMessage(policy=SMTP)
    message["From"] = sender
    try:
        message["To"] = Address(display_name=name or "", addr_spec=recipient)
    except (ValueError, IndexError, MessageError) as exc:
        raise InvalidAddress(f"not an e-mail address ({type(exc).__name__})") from None
    message["Subject"] = rendered.subject
    message["Date"] = format_datetime(utc_now())
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to it
    message.set_content(rendered.text, charset="utf-8")
    if rendered.html is not None:
        message.add_alternative(rendered.html, subtype="html", charset="utf-8")
    return message


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

    def send(self, message: EmailMessage) -> str:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.user and self.password is not None:
                    smtp.login(self.user, self.password.get_secret_value())
                refused = smtp.send_message(message)
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
