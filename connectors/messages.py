"""Customer messages rendered from templates: one per message kind, channel and locale.

The shipped templates are package data (`connectors/message_templates/<locale>/`):
`<kind>.email.txt` (blocks `subject` and `body`, on `_layout.email.txt`), `<kind>.email.html`
(on `_layout.email.html`) and `<kind>.sms.txt`. An operator's directory
(OMS_NOTIFY_TEMPLATES_DIR) laid out the same way overrides any of them, file by file.

Templates are operators' text, not code: they render in Jinja's sandbox (no attribute that
starts with `_`, no unsafe calls: `{{ ''.__class__ }}` raises `SecurityError`), with HTML
autoescaped (a courier's name or a cancellation reason is the platform's text) and undefined
names an error, so a mistyped template fails its message instead of sending a blank.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    TemplateError,
    pass_context,
)
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from events.notifications import MessageChannel, Notice

# Minor units per major unit where it is not 100 (ISO 4217 exponents).
_EXPONENTS = {"JPY": 0, "KRW": 0, "VND": 0, "BHD": 3, "KWD": 3, "OMR": 3}
_TIME_FORMAT = {"zh-CN": "%m月%d日 %H:%M", "en": "%d %b %H:%M"}


class TemplateFailed(ValueError):
    """A template is missing or does not render (its name and why)."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str | None = None  # e-mail only


def money(amount: int | None, currency: str | None) -> str:
    """Minor units as the customer reads them: `¥12.50`, `12.50 USD`."""
    if amount is None:
        return ""
    code = (currency or "").upper()
    exponent = _EXPONENTS.get(code, 2)
    sign = "-" if amount < 0 else ""
    whole, part = divmod(abs(amount), 10**exponent)
    number = f"{whole}.{part:0{exponent}d}" if exponent else str(whole)
    return f"{sign}¥{number}" if code == "CNY" else f"{sign}{number} {code}".strip()


class MessageTemplates:
    """The templates of every kind, channel and locale (an operator's first, then shipped)."""

    def __init__(self, *, directory: Path | None = None, zone: tzinfo) -> None:
        loaders: list[BaseLoader] = [FileSystemLoader(directory)] if directory else []
        loaders.append(PackageLoader("connectors", "message_templates"))
        self.env = SandboxedEnvironment(
            loader=ChoiceLoader(loaders),
            autoescape=lambda name: bool(name and name.endswith(".html")),
            undefined=StrictUndefined,
            trim_blocks=True,
            # Templates are read once: no stat of each file at every message (an operator's
            # change takes effect when the notifier restarts).
            auto_reload=False,
        )
        self.env.filters["money"] = money

        @pass_context
        def when(context: Context, value: datetime | None) -> str:
            """A time in the operator's zone, written the way the message's locale writes it."""
            if value is None:
                return ""
            layout = _TIME_FORMAT.get(context.get("locale", ""), "%Y-%m-%d %H:%M")
            return value.astimezone(zone).strftime(layout)

        self.env.filters["when"] = when

    def render(self, notice: Notice, *, name: str | None = None) -> Rendered:
        """The message `notice` stands for in its locale, greeting `name` when known."""
        context = notice.model_dump() | {"name": name}
        base = f"{notice.locale}/{notice.kind.value}"
        try:
            if notice.channel is MessageChannel.SMS:
                text = self.env.get_template(f"{base}.sms.txt").render(context)
                return Rendered(subject="", text=text.strip())
            plain = self.env.get_template(f"{base}.email.txt")
            subject = "".join(plain.blocks["subject"](plain.new_context(context)))
            text = plain.render(context)
            html = self.env.get_template(f"{base}.email.html").render(context)
        except (TemplateError, KeyError) as exc:
            raise TemplateFailed(f"{base} ({notice.channel.value}): {exc}") from exc
        # A subject is one line: a template's stray newline must not become a header break.
        return Rendered(subject=" ".join(subject.split()), text=text.strip() + "\n", html=html)
