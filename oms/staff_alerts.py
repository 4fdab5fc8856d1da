"""`oms alerts run`: the alerter that tells the staff (docs/architecture.md, "Staff alerts").

It folds the order log and the stock ledger from their beginning (`streams.staff_alerts.decide`
says which alerts each event causes, to which sinks) and sends each alert through its sink: a
WeCom group robot (`connectors.wecom_bot`), an ESC/POS printer (`connectors.escpos`), a phone
(`connectors.sms`). Exactly once per (event, sink) where the sink allows it, across a kill -9:

1. An alert's key is derived from its event's id and its sink. The staff alerts topic
   (compacted, keyed by it) holds the newest record of each alert and is read to its end
   before anything is sent; an alert whose record is settled is never sent again.
2. Before an alert is sent its `intent` is written and acknowledged by Kafka; after it, the
   outcome. A crash between the two leaves an intent without outcome: on restart an SMS
   provider that can be asked (Aliyun) is asked; a printer and a WeCom robot cannot be, so
   the alert is sent again: **at most one alert per sink may be repeated per crash** (the one
   in flight when it happened).
3. A refused or timed-out connection, an HTTP 5xx or 429, or a code the sink documents as
   temporary (WeCom 45009: over 20 messages a minute) is tried again later with bounded,
   jittered exponential backoff (`oms.outbox.backoff_s`), without holding up the other
   alerts; a permanent refusal (WeCom 93000: a wrong key), or the last failed try, is recorded
   `failed` and dead-lettered. An event that cannot be read or decided is dead-lettered and
   skipped. One bad sink never stops the others.

An event older than OMS_STAFF_ALERTS_WINDOW_S when the alerter starts alerts nobody (a
restarted alerter does not print yesterday's orders); the records of such events are
tombstoned at start, so the topic and the alerter's memory stay bounded.
"""

from __future__ import annotations

import heapq
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from confluent_kafka import Producer
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from connectors.escpos import ReceiptPrinter, kitchen_ticket
from connectors.outbound import CallFailed, PermanentFailure
from connectors.sms import (
    AliyunSms,
    AliyunTemplate,
    ProviderMisconfigured,
    TextMessage,
    TextProvider,
    TwilioSms,
)
from connectors.staff_messages import SHIPMENT_TROUBLE, line_text, markdown, text_lines
from connectors.wecom_bot import WeComRobot
from events.codec import AvroCodec
from events.models import DeadLetter, Event, utc_now
from events.staff_alerts import AlertRecord, AlertStatus, SinkKind, StaffAlert, alert_record
from infra.kafka import producer_config
from infra.poison import describe
from infra.publisher import Publisher
from infra.settings import Settings
from oms.outbox import backoff_s, from_the_beginning, read_newest, write_acknowledged
from streams.staff_alerts import AlertState, Sink, StaffAlertsConfig, decide

log = logging.getLogger(__name__)


class AlertsMisconfigured(ValueError):
    """The staff alerts file is missing or wrong; names the field (exit 78)."""


class AlertsUnavailable(RuntimeError):
    """Kafka did not take a staff alert's record."""


# ---------------------------------------------------------------- the file


_SECRETS_ELSEWHERE = {
    "access_key_id": "OMS_ALIYUN_SMS_ACCESS_KEY_ID",
    "access_key_secret": "OMS_ALIYUN_SMS_ACCESS_KEY_SECRET",
    "account_sid": "OMS_TWILIO_ACCOUNT_SID",
    "auth_token": "OMS_TWILIO_AUTH_TOKEN",
}


def _no_credentials(value: Any) -> Any:
    """The provider's credentials are the notifier's settings, not the file's: one place to
    set and rotate them (and no second copy of a secret on disk)."""
    if isinstance(value, dict):
        for key, setting in _SECRETS_ELSEWHERE.items():
            if key in value:
                raise ValueError(f"{key} is not kept in this file: set {setting}")
    return value


class AliyunProvider(BaseModel):
    """Aliyun SMS for staff alerts: the AccessKey is OMS_ALIYUN_SMS_ACCESS_KEY_ID/_SECRET."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    provider: Literal["aliyun"]
    sign_name: str | None = Field(
        default=None, description="the approved 签名; unset: OMS_ALIYUN_SMS_SIGN_NAME"
    )
    templates: dict[str, AliyunTemplate] = Field(
        description="alert kind (new_order, held, low_stock, shipment_exception) → approved "
        "template; its variables may name order, channel, store, mode, due, items, risk, sku, "
        "available, threshold, reorder, carrier, tracking, status, said, place"
    )

    _credentials_elsewhere = model_validator(mode="before")(_no_credentials)


class TwilioProvider(BaseModel):
    """Twilio for staff alerts: the account is OMS_TWILIO_ACCOUNT_SID/_AUTH_TOKEN."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    provider: Literal["twilio"]
    sender: str | None = Field(
        default=None,
        description="a From number, or a Messaging Service SID (MG…); unset: OMS_TWILIO_FROM",
    )

    _credentials_elsewhere = model_validator(mode="before")(_no_credentials)


class AlertsFile(StaffAlertsConfig):
    """OMS_STAFF_ALERTS_FILE: the sinks, and the SMS provider when any sink is a phone."""

    sms_provider: (
        Annotated[AliyunProvider | TwilioProvider, Field(discriminator="provider")] | None
    ) = None

    @model_validator(mode="after")
    def _provider_for_phones(self) -> AlertsFile:
        if self.sms_provider is None and any(s.kind is SinkKind.SMS for s in self.sinks().values()):
            raise ValueError("sms_provider: phones are configured, but no SMS provider")
        return self


def load_config(path: Path | None) -> AlertsFile:
    """The staff alerts file, validated; `AlertsMisconfigured` names what is wrong (never a
    value: the file holds secrets)."""
    if path is None:
        raise AlertsMisconfigured("OMS_STAFF_ALERTS_FILE is not set")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AlertsMisconfigured(f"{path}: cannot be read ({exc.strerror})") from exc
    except ValueError as exc:
        raise AlertsMisconfigured(f"{path}: not JSON ({exc})") from exc
    try:
        return AlertsFile.model_validate(raw)
    except ValidationError as exc:
        wrong = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(file)'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
        raise AlertsMisconfigured(f"{path}: {wrong}") from exc


def sms_provider(config: AlertsFile, settings: Settings) -> TextProvider | None:
    """The file's SMS provider with the credentials of the settings; `AlertsMisconfigured`
    names the setting that is missing (fail closed: no phone is left silently untold)."""
    chosen = config.sms_provider
    named = chosen.provider if chosen is not None else ""

    def required(name: str, value: Any) -> Any:
        if not value or (isinstance(value, SecretStr) and not value.get_secret_value()):
            raise AlertsMisconfigured(f"sms_provider {named}: set {name}")
        return value

    if isinstance(chosen, AliyunProvider):
        return AliyunSms(
            access_key_id=required(
                "OMS_ALIYUN_SMS_ACCESS_KEY_ID", settings.aliyun_sms_access_key_id
            ),
            access_key_secret=required(
                "OMS_ALIYUN_SMS_ACCESS_KEY_SECRET", settings.aliyun_sms_access_key_secret
            ),
            sign_name=required(
                "OMS_ALIYUN_SMS_SIGN_NAME", chosen.sign_name or settings.aliyun_sms_sign_name
            ),
            templates=chosen.templates,
            api_url=settings.aliyun_sms_api_url,
        )
    if isinstance(chosen, TwilioProvider):
        return TwilioSms(
            account_sid=required("OMS_TWILIO_ACCOUNT_SID", settings.twilio_account_sid),
            auth_token=required("OMS_TWILIO_AUTH_TOKEN", settings.twilio_auth_token),
            sender=required("OMS_TWILIO_FROM", chosen.sender or settings.twilio_from),
            api_url=settings.twilio_api_url,
        )
    return None


def read_records(settings: Settings, *, timeout_s: float = 30.0) -> dict[str, AlertRecord]:
    """The newest record of every alert on the staff alerts topic (read to its end)."""
    return read_newest(
        settings,
        settings.topics.staff_alerts,
        AlertRecord.decode,
        key=lambda found: found.key,
        timeout_s=timeout_s,
    )


# ---------------------------------------------------------------- the sinks


class SinkDelivery:
    """How an alert reaches each kind of sink; `send` returns the sink's answer or raises
    `CallFailed`."""

    def __init__(self, settings: Settings, *, sms: TextProvider | None) -> None:
        self.zone = ZoneInfo(settings.staff_alerts_timezone)
        self.settings, self.sms = settings, sms

    def send(self, alert: StaffAlert, sink: Sink) -> str:
        if sink.kind is SinkKind.WECOM:
            robot = WeComRobot(
                key=SecretStr(sink.target), api_url=self.settings.staff_alerts_wecom_url
            )
            if sink.mention:
                return robot.send_text(
                    "\n".join(text_lines(alert, zone=self.zone)), mention=sink.mention
                )
            return robot.send_markdown(markdown(alert, zone=self.zone))
        if sink.kind is SinkKind.PRINTER:
            printer = ReceiptPrinter(
                address=sink.target, timeout_s=self.settings.staff_alerts_printer_timeout_s
            )
            return printer.print(kitchen_ticket(alert, zone=self.zone))
        if self.sms is None:
            raise PermanentFailure("no SMS provider configured")
        try:
            return self.sms.send(self.text_message(alert, sink))
        except ProviderMisconfigured as exc:
            raise PermanentFailure(f"SMS provider refuses us: {exc}") from exc

    def already_sent(self, alert: StaffAlert, sink: Sink) -> bool | None:
        """Whether the sink has the alert already: only an SMS provider may know."""
        if sink.kind is not SinkKind.SMS or self.sms is None:
            return None
        try:
            return self.sms.already_sent(self.text_message(alert, sink), alert.caused_at)
        except (CallFailed, ProviderMisconfigured):
            return None

    def text_message(self, alert: StaffAlert, sink: Sink) -> TextMessage:
        due = alert.due_at.astimezone(self.zone) if alert.due_at else None
        params: dict[str, str | datetime | None] = {
            "order": alert.external_id,
            "channel": alert.channel,
            "store": alert.location,
            "mode": alert.mode.value if alert.mode else None,
            "due": due,
            "items": "、".join(line_text(line) for line in alert.lines) or None,
            "risk": None if alert.risk_score is None else str(alert.risk_score),
            "sku": alert.sku,
            "available": None if alert.available is None else str(alert.available),
            "threshold": None if alert.threshold is None else str(alert.threshold),
            "reorder": None if alert.reorder_quantity is None else str(alert.reorder_quantity),
            "carrier": alert.carrier,
            "tracking": alert.tracking_number,
            "status": SHIPMENT_TROUBLE.get(alert.shipment_status or "", alert.shipment_status),
            "said": " ".join(x for x in (alert.carrier_status, alert.description) if x) or None,
            "place": alert.place,
        }
        return TextMessage(
            to=sink.target,
            kind=alert.kind.value,
            text="\n".join(text_lines(alert, zone=self.zone)),
            key=alert.key,
            params=params,
        )


# ---------------------------------------------------------------- the alerter


@dataclass
class AlerterStats:
    events: int = 0
    sent: int = 0
    resent: int = 0  # intents left by a crash, sent again
    failed: int = 0
    skipped: int = 0
    poison: int = 0


@dataclass(order=True)
class _Retry:
    due: float
    attempts: int = field(compare=False)
    alert: StaffAlert = field(compare=False)


class StaffAlerter:
    """One alerter; run one per deployment (the staff alerts topic is its single writer)."""

    def __init__(
        self,
        settings: Settings,
        config: StaffAlertsConfig,
        *,
        delivery: SinkDelivery | None = None,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings, self.config = settings, config
        self.sinks = config.sinks()
        self.delivery = delivery or SinkDelivery(settings, sms=None)
        self.clock, self.monotonic = clock, monotonic
        self.codec = AvroCodec.for_registry(settings.schema_registry_url)
        self.producer = Producer(producer_config(settings.kafka_bootstrap, **{"linger.ms": 0}))
        self.publisher: Publisher | None = None  # dead letters: made on the first one
        self.records: dict[str, AlertRecord] = {}
        self.state = AlertState()
        self.retries: list[_Retry] = []  # a heap, by when the next try is due
        self.pending: set[str] = set()  # keys of the alerts waiting in it
        self.stats = AlerterStats()
        self.since = self.clock() - timedelta(seconds=settings.staff_alerts_window_s)

    def run(self, *, until: Callable[[StaffAlerter], bool] | None = None) -> AlerterStats:
        """Read the records, then the order log and the stock ledger from their beginning,
        for ever (or `until`)."""
        self.since = self.clock() - timedelta(seconds=self.settings.staff_alerts_window_s)
        self.records = read_records(self.settings)
        self.forget_old()
        topics = self.settings.topics
        chunks = from_the_beginning(
            self.settings,
            [topics.orders, topics.inventory],
            group="staff-alerts",
            label="staff alerts",
            wait_s=0.2,
        )
        try:
            while until is None or not until(self):
                for raw, where in next(chunks):
                    self.take(raw, where=where)
                self.retry_due()
        finally:
            chunks.close()
            self.producer.flush(30)
            if self.publisher is not None:
                self.publisher.flush(30)
        return self.stats

    def forget_old(self) -> int:
        """Tombstones the records of events before the window (they alert nobody again)."""
        old = [k for k, r in self.records.items() if r.alert.caused_at < self.since]
        for key in old:
            self.producer.produce(self.settings.topics.staff_alerts, key=key.encode(), value=None)
            del self.records[key]
        if old:
            self.producer.flush(30)
        return len(old)

    def take(self, raw: bytes, *, where: str) -> None:
        """One input message: decoded, decided, its alerts sent. One that cannot be read or
        decided is dead-lettered; the alerter goes on."""
        self.stats.events += 1
        try:
            event = self.codec.decode(raw, where=where)
            if not isinstance(event, Event):
                return
            alerts = decide(self.state, event, config=self.config, since=self.since)
        except Exception as exc:  # noqa: BLE001 - poison: recorded, not raised
            self.stats.poison += 1
            log.exception("staff alerts: %s could not be decided", where)
            self._dead_letter(source_ref=where, reason=f"staff alerts: {describe(exc)}", raw=raw)
            return
        for alert in alerts:
            self.deliver(alert)

    def deliver(self, alert: StaffAlert) -> None:
        """Send `alert` once: nothing when settled; else intent, then the first try."""
        known = self.records.get(alert.key)
        if (known is not None and known.status.settled) or alert.key in self.pending:
            return
        sink = self.sinks.get(alert.sink)
        if sink is None:
            self._settle(alert, AlertStatus.SKIPPED, 0, "its sink is no longer configured")
            return
        attempts = known.attempts if known is not None else 0
        if known is not None:  # an intent left by a crash between a send and its record
            if self.delivery.already_sent(alert, sink):
                self._settle(alert, AlertStatus.SENT, attempts, "found sent after a restart")
                return
            self.stats.resent += 1
        self._write(alert_record(alert, AlertStatus.INTENT, at=self.clock(), attempts=attempts))
        self._try(alert, sink, attempts)

    def retry_due(self) -> None:
        """The alerts whose next try has come (a sink that is down holds up no other)."""
        now = self.monotonic()
        while self.retries and self.retries[0].due <= now:
            due = heapq.heappop(self.retries)
            sink = self.sinks.get(due.alert.sink)
            if sink is not None:
                self._try(due.alert, sink, due.attempts)

    def _try(self, alert: StaffAlert, sink: Sink, attempts: int) -> None:
        attempts += 1
        self.pending.discard(alert.key)
        try:
            answer = self.delivery.send(alert, sink)
        except CallFailed as exc:
            self._failed(alert, attempts, exc.detail, permanent=exc.permanent)
            return
        except Exception as exc:  # noqa: BLE001 - an adapter's bug or an odd answer: tried again
            log.exception("%s to %s: unreadable answer", alert.kind.value, alert.sink)
            self._failed(alert, attempts, f"unreadable answer: {describe(exc)}", permanent=False)
            return
        self._settle(alert, AlertStatus.SENT, attempts, answer[:500])

    def _failed(self, alert: StaffAlert, attempts: int, detail: str, *, permanent: bool) -> None:
        """Tried again later, or, refused for good or out of tries, failed and dead-lettered."""
        if permanent or attempts >= self.settings.staff_alerts_attempts:
            settled = self._settle(alert, AlertStatus.FAILED, attempts, detail)
            self._dead_letter(
                source_ref=f"staff-alerts:{alert.sink}:{alert.key}",
                reason=f"{alert.kind.value} to {alert.sink} failed: {detail}",
                raw=settled.encode(),
            )
            return
        log.warning("%s to %s: %s (try %d)", alert.kind.value, alert.sink, detail, attempts)
        self.pending.add(alert.key)
        heapq.heappush(
            self.retries, _Retry(self.monotonic() + backoff_s(attempts), attempts, alert)
        )

    def _settle(
        self, alert: StaffAlert, status: AlertStatus, attempts: int, detail: str
    ) -> AlertRecord:
        settled = alert_record(alert, status, at=self.clock(), attempts=attempts, detail=detail)
        self._write(settled)
        counter = {"sent": "sent", "failed": "failed", "skipped": "skipped"}[status.value]
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        return settled

    def _write(self, alert_record: AlertRecord) -> None:
        """The record onto the staff alerts topic, once Kafka acknowledged it (an intent must
        be durable before its alert is sent)."""
        topic = self.settings.topics.staff_alerts
        why = write_acknowledged(self.producer, topic, alert_record.key, alert_record.encode())
        if why is not None:
            raise AlertsUnavailable(f"staff alert record not acknowledged: {why}")
        self.records[alert_record.key] = alert_record

    def _dead_letter(self, *, source_ref: str, reason: str, raw: bytes) -> None:
        if self.publisher is None:
            self.publisher = Publisher(self.settings)
        letter = DeadLetter.of(source="staff-alerts", source_ref=source_ref, reason=reason, raw=raw)
        self.publisher.dead_letter(letter)
        self.publisher.flush(30)


def deliveries(records: Mapping[str, AlertRecord]) -> list[AlertRecord]:
    """The records newest first (`oms alerts list`)."""
    return sorted(records.values(), key=lambda r: r.at, reverse=True)
