"""`oms notify run`: the notifier that tells customers how their orders go (docs/architecture.md,
"Customer notifications").

It folds the order log from its beginning (`streams.notify.decide` says which message each
event causes), opens the customers' sealed contact fields with their data keys, renders each
message from its templates (`connectors.messages`) and sends it (`connectors.email`). One
message per event id and kind, across a kill -9, the way the outbox does it (oms/outbox.py):

1. Every message has an idempotency key derived from its event id, kind and channel. The
   notifications topic holds its records, keyed by it; it is read to its end before anything
   is sent, and a message whose record is settled (sent, failed, skipped) is never sent again.
2. Before a message is handed to the relay its `intent` is written and acknowledged by Kafka;
   after it, the outcome. E-mails go in batches (`send_batch`): the intents of a batch are
   acknowledged together, then each message is handed to the relay on one kept-open
   conversation, and before each the outcomes of all but the last OMS_NOTIFY_IN_FLIGHT - 1
   sent are acknowledged. SMTP cannot be asked whether a message was delivered, so an intent
   without an acknowledged outcome (a crash between the two) is sent again, with the same
   Message-ID (derived from the key): at most OMS_NOTIFY_IN_FLIGHT (4) duplicates per crash,
   which mail clients that deduplicate on Message-ID show once; 1 makes it at most one, at
   about half the throughput (docs/benchmarks.md).
3. A 4xx answer or a connection refused, cut or timed out is tried again with bounded, jittered
   backoff; a 5xx answer, a template that does not render, or the last failed try is recorded
   `failed` and dead-lettered. A relay that refuses our credentials stops the notifier (exit 78).

A customer who opted out, or whose personal data was forgotten (their data key is gone, so the
address does not open), gets nothing: recorded `skipped`, not an error. Messages in quiet hours
and over the rate limit wait in memory; a restart finds them again by reading the log (they have
no record yet). A message whose event is older than OMS_NOTIFY_MAX_AGE_S is neither sent nor
recorded: that bounds both the replay's work and the records it must find (the notifications
topic keeps 30 days).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from confluent_kafka import KafkaError, Producer
from pydantic import BaseModel, SecretStr, ValidationError

from connectors.email import (
    Composed,
    Mailer,
    SmtpMailer,
    SmtpMisconfigured,
    compose,
    message_id,
)
from connectors.messages import MessageTemplates, TemplateFailed
from connectors.outbound import CallFailed, TransientFailure
from connectors.sms import (
    AliyunSms,
    AliyunTemplate,
    NoTemplate,
    ProviderMisconfigured,
    TextMessage,
    TextProvider,
    TwilioSms,
    template_params,
)
from connectors.wechat_notify import WeChatSubscribe, WeChatTemplate
from events.codec import CodecError
from events.models import DeadLetter, Event, utc_now
from events.notifications import (
    MessageChannel,
    MessageKind,
    Notice,
    NotificationRecord,
    NotificationStatus,
    notification_record,
)
from events.privacy import DataKeys
from infra.kafka import producer_config
from infra.keystore import private_codec
from infra.metrics import Health
from infra.poison import describe
from infra.publisher import Publisher
from infra.settings import Settings
from oms.outbox import OutboxUnavailable, backoff_s, from_the_beginning, read_newest
from streams.notify import (
    Action,
    Addressed,
    Contact,
    NotifyState,
    Policy,
    Preferences,
    QuietHours,
    decide,
    forget,
    prune,
    schedule,
)

log = logging.getLogger(__name__)
BATCH = 500  # e-mails sent together (one wait on Kafka for their intents)
Ready = tuple[Notice, "Composed", str, str, int]  # (notice, message, recipient, id, attempts)
_A = TypeVar("_A")
# After a crash, how far before its intent a provider is asked about a message (clocks differ).
ASK_BACK = timedelta(minutes=5)
KEEP_ORDERS = timedelta(days=30)  # an order quiet this long leaves the fold (a late refund: none)
HOUSEKEEPING_S = 1.0
# Delivery reports of text messages: first asked this long after the provider took one, again
# every REPORTS_EVERY until it is final or REPORTS_FOR has passed; REPORTS_AT_ONCE per round.
REPORT_AFTER = timedelta(seconds=60)
REPORTS_EVERY = timedelta(seconds=60)
REPORTS_FOR = timedelta(hours=24)
REPORTS_AT_ONCE = 200


class NotifyNotConfigured(ValueError):
    """A setting the notifier needs is missing or wrong; names the variable (fail closed)."""


def policy_of(settings: Settings) -> Policy:
    try:
        zone = ZoneInfo(settings.notify_timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise NotifyNotConfigured(f"OMS_NOTIFY_TIMEZONE: {exc}") from None
    try:
        quiet = QuietHours.parse(settings.notify_quiet_hours)
    except ValueError as exc:
        raise NotifyNotConfigured(f"OMS_NOTIFY_QUIET_HOURS: {exc}") from None
    return Policy(
        quiet_hours=quiet,
        zone=zone,
        rate_limit=settings.notify_rate_limit,
        rate_window=timedelta(seconds=settings.notify_rate_window_s),
        max_age=timedelta(seconds=settings.notify_max_age_s),
    )


def mailer_of(settings: Settings) -> SmtpMailer | None:
    """The relay of OMS_SMTP_*; None when e-mail is off. Refuses to guess a missing setting."""
    if not settings.notify_email:
        return None
    for name, value in (
        ("OMS_SMTP_HOST", settings.smtp_host),
        ("OMS_SMTP_FROM", settings.smtp_from),
    ):
        if not value:
            raise NotifyNotConfigured(f"{name} is not set, and e-mail is on (OMS_NOTIFY_EMAIL)")
    assert settings.smtp_host is not None
    return SmtpMailer(
        host=settings.smtp_host,
        port=settings.smtp_port,
        starttls=settings.smtp_starttls,
        user=settings.smtp_user,
        password=settings.smtp_password,
        timeout_s=settings.smtp_timeout_s,
    )


def texts_of(settings: Settings) -> dict[MessageChannel, TextProvider]:
    """The SMS provider and WeChat subscribe messages of OMS_NOTIFY_SMS_PROVIDER, OMS_ALIYUN_*,
    OMS_TWILIO_* and OMS_WECHAT_NOTIFY_*; refuses to guess a missing setting (fail closed)."""
    providers: dict[MessageChannel, TextProvider] = {}

    def required(name: str, value: object) -> None:
        if not value or (isinstance(value, SecretStr) and not value.get_secret_value()):
            raise NotifyNotConfigured(f"{name} is not set")

    try:
        if settings.notify_sms_provider == "aliyun":
            required("OMS_ALIYUN_SMS_ACCESS_KEY_ID", settings.aliyun_sms_access_key_id)
            required("OMS_ALIYUN_SMS_ACCESS_KEY_SECRET", settings.aliyun_sms_access_key_secret)
            required("OMS_ALIYUN_SMS_SIGN_NAME", settings.aliyun_sms_sign_name)
            required("OMS_ALIYUN_SMS_TEMPLATES", settings.aliyun_sms_templates)
            templates = _templates(
                "OMS_ALIYUN_SMS_TEMPLATES", settings.aliyun_sms_templates, AliyunTemplate
            )
            assert settings.aliyun_sms_access_key_secret is not None
            providers[MessageChannel.SMS] = AliyunSms(
                access_key_id=settings.aliyun_sms_access_key_id or "",
                access_key_secret=settings.aliyun_sms_access_key_secret,
                sign_name=settings.aliyun_sms_sign_name or "",
                templates=templates,
                api_url=settings.aliyun_sms_api_url,
            )
        elif settings.notify_sms_provider == "twilio":
            required("OMS_TWILIO_ACCOUNT_SID", settings.twilio_account_sid)
            required("OMS_TWILIO_AUTH_TOKEN", settings.twilio_auth_token)
            required("OMS_TWILIO_FROM", settings.twilio_from)
            assert settings.twilio_auth_token is not None
            providers[MessageChannel.SMS] = TwilioSms(
                account_sid=settings.twilio_account_sid or "",
                auth_token=settings.twilio_auth_token,
                sender=settings.twilio_from or "",
                api_url=settings.twilio_api_url,
            )
        if settings.wechat_notify_app_id or "wechat" in settings.notify_channels:
            required("OMS_WECHAT_NOTIFY_APP_ID", settings.wechat_notify_app_id)
            required("OMS_WECHAT_NOTIFY_APP_SECRET", settings.wechat_notify_app_secret)
            required("OMS_WECHAT_NOTIFY_TEMPLATES", settings.wechat_notify_templates)
            assert settings.wechat_notify_app_secret is not None
            providers[MessageChannel.WECHAT] = WeChatSubscribe(
                app_id=settings.wechat_notify_app_id or "",
                app_secret=settings.wechat_notify_app_secret,
                templates=_templates(
                    "OMS_WECHAT_NOTIFY_TEMPLATES", settings.wechat_notify_templates, WeChatTemplate
                ),
                state=settings.wechat_notify_state,
                api_url=settings.wechat_api_url,
            )
    except ProviderMisconfigured as exc:
        raise NotifyNotConfigured(str(exc)) from None
    if "sms" in settings.notify_channels and MessageChannel.SMS not in providers:
        raise NotifyNotConfigured("OMS_NOTIFY_CHANNELS names sms: set OMS_NOTIFY_SMS_PROVIDER")
    return providers


_M = TypeVar("_M", bound=BaseModel)


def _templates(name: str, raw: Mapping[str, object], model: type[_M]) -> dict[str, _M]:
    """An operator's template map, each kind checked (a kind we do not send is a typo)."""
    known = {kind.value for kind in MessageKind}
    checked = {}
    for kind, entry in raw.items():
        if kind not in known:
            raise NotifyNotConfigured(f"{name}: {kind!r} is not a message kind ({sorted(known)})")
        try:
            checked[kind] = model.model_validate(entry)
        except ValidationError as exc:
            where = ".".join(str(p) for p in exc.errors()[0]["loc"])
            raise NotifyNotConfigured(f"{name}.{kind}.{where}: {exc.errors()[0]['msg']}") from None
    return checked


# ---------------------------------------------------------------- customers' preferences


class PreferenceFile:
    """Customers' choices, by customer key, in one JSON file (OMS_NOTIFY_PREFERENCES_FILE):
    written whole and renamed into place, so a reader never sees half of it; read again by the
    notifier when it changes. Keys are pseudonymous: the file holds no personal data."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: float | None = None

    @classmethod
    def of(cls, settings: Settings) -> PreferenceFile:
        return cls(settings.notify_preferences_file or settings.home / "notify-preferences.json")

    def load(self) -> dict[str, Preferences]:
        if not self.path.exists():
            return {}
        document = json.loads(self.path.read_text(encoding="utf-8"))
        return {
            key: Preferences(
                opted_out=bool(entry.get("opted_out", False)),
                locale=entry.get("locale"),
                channels=(
                    tuple(MessageChannel(c) for c in entry["channels"])
                    if entry.get("channels")
                    else None
                ),
            )
            for key, entry in document.items()
        }

    def changed(self) -> bool:
        """Whether the file changed since the last call (a first call: True)."""
        seen = self.path.stat().st_mtime_ns if self.path.exists() else None
        if seen == self._seen and self._seen is not None:
            return False
        self._seen = seen
        return True

    def set(self, customer_key: str, **changes: object) -> dict[str, object]:
        """Changes one customer's entry; their entry as it now stands."""
        document: dict[str, dict[str, object]] = (
            json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
        )
        entry = document.get(customer_key, {}) | changes
        document[customer_key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(document, indent=1, sort_keys=True), encoding="utf-8")
        temporary.replace(self.path)
        return entry


# ---------------------------------------------------------------- the records


def read_records(settings: Settings, *, timeout_s: float = 30.0) -> dict[str, NotificationRecord]:
    """The newest record of every message on the notifications topic (read to its end)."""
    return read_newest(
        settings,
        settings.topics.notifications,
        NotificationRecord.decode,
        key=lambda found: found.key,
        timeout_s=timeout_s,
    )


def failed(records: Mapping[str, NotificationRecord]) -> Iterator[NotificationRecord]:
    """The messages not sent for a failure, newest first."""
    yield from sorted(
        (r for r in records.values() if r.status is NotificationStatus.FAILED),
        key=lambda r: r.at,
        reverse=True,
    )


@dataclass
class NotifierStats:
    events: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    deferred: int = 0
    expired: int = 0
    poison: int = 0
    delivered: int = 0
    undelivered: int = 0


class Notifier:
    """One notifier; run one per deployment (the notifications topic is its single writer)."""

    def __init__(
        self,
        settings: Settings,
        *,
        mailer: Mailer | None,
        texts: Mapping[MessageChannel, TextProvider] | None = None,
        keys: DataKeys | None = None,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.mailer = mailer
        self.texts = dict(texts or {})
        self.clock, self.sleep = clock, sleep
        self.policy = policy_of(settings)
        self.codec = private_codec(settings, keys)
        self.templates = MessageTemplates(
            directory=settings.notify_templates_dir, zone=self.policy.zone
        )
        self.sender = settings.smtp_from or "orderstream@localhost"
        self.preference_file = PreferenceFile.of(settings)
        self.state = NotifyState(
            locale=settings.notify_locale,
            tracking_url=settings.notify_tracking_url,
            channels=tuple(MessageChannel(c) for c in settings.notify_channels),
        )
        self.producer = Producer(producer_config(settings.kafka_bootstrap, **{"linger.ms": 0}))
        self.publisher: Publisher | None = None  # dead letters: made on the first one
        self.records: dict[str, NotificationRecord] = {}
        self.sent_at: dict[str, list[datetime]] = defaultdict(list)  # by customer: the rate
        self.waiting: list[tuple[datetime, int, Addressed]] = []  # deferred, soonest first
        self.forgotten: set[str] = set()
        # E-mails decided to go, sent together (`send_batch`): their intents acknowledged in
        # one wait, handed to the relay on one conversation, their outcomes in one more.
        self.batch: dict[str, tuple[Addressed, NotificationRecord | None]] = {}
        self._unacknowledged: list[str] = []
        self._lock = threading.RLock()  # the records, the counters: shared with the lanes
        self._lanes: ThreadPoolExecutor | None = None
        self._lane_mailers: list[Mailer] = []
        self._serving = False  # send_batch's thread is serving Kafka's acknowledgements
        self._sending: list[Future[None]] = []  # the lanes of the last batch, still sending
        # Text messages sent whose delivery report is still to come: key → (number, when).
        self.awaiting: dict[str, tuple[str, datetime, datetime]] = {}  # (+ when to ask)
        self.stats = NotifierStats()
        self._order = itertools.count()
        self._housekept = 0.0
        # Ready (/readyz) once the records are read and the order log is being gone through.
        self.unready: str | None = "reading the notifications topic"
        self.health = Health(why_not_ready=lambda: self.unready)

    # -- the loop

    def run(self, *, until: Callable[[Notifier], bool] | None = None) -> NotifierStats:
        """Read the records, then the order log from its beginning, for ever (or `until`)."""
        self.records = read_records(self.settings)
        for found in self.records.values():
            if found.status is NotificationStatus.SENT:
                self.sent_at[_recipient(found.notice)].append(found.at)
        self.housekeeping(force=True)
        chunks = from_the_beginning(
            self.settings, [self.settings.topics.orders], group="notify", label="notify"
        )
        self.unready = None
        try:
            while until is None or not until(self):
                self.health.beat()
                for raw, where in next(chunks):
                    self.take(raw, where=where)
                    if len(self.batch) >= BATCH:
                        self.send_batch()
                self.housekeeping()
                self.send_batch()
        finally:
            self.unready = "stopped"
            chunks.close()
            for mailer in [self.mailer, *self._lane_mailers]:
                close = getattr(mailer, "close", None)
                if close is not None:
                    close()  # (the conversations kept open between messages)
            if self._lanes is not None:
                self._lanes.shutdown(wait=True)
            self.producer.flush(30)
            if self.publisher is not None:
                self.publisher.flush(30)
        return self.stats

    def housekeeping(self, *, force: bool = False) -> None:
        """Now and then: customers forgotten since, preferences changed, deferred messages due,
        quiet orders dropped from the fold."""
        if not force and time.monotonic() - self._housekept < HOUSEKEEPING_S:
            return
        self._housekept = time.monotonic()
        gone = self.codec.keys.forgotten()
        if gone:
            self.forgotten.update(gone)
            forget(self.state, gone)
        if self.preference_file.changed():
            self.state.preferences = self.preference_file.load()
        now = self.clock()
        while self.waiting and self.waiting[0][0] <= now:
            _, _, addressed = heapq.heappop(self.waiting)
            self.consider(addressed)
        prune(self.state, before=now - KEEP_ORDERS)
        if self.awaiting:
            self.ask_reports()

    def take(self, raw: bytes, *, where: str) -> None:
        """One event of the order log: decoded (opened), decided, its messages considered. One
        that cannot be read or decided is dead-lettered; the notifier goes on."""
        self.stats.events += 1
        try:
            event = self.codec.decode(raw, where=where)
            if not isinstance(event, Event) or isinstance(event, DeadLetter):
                return
            messages = decide(self.state, event)
        except (CodecError, Exception) as exc:  # noqa: BLE001 - poison: recorded, not raised
            self.stats.poison += 1
            log.exception("notify: %s could not be decided", where)
            self._dead_letter(source_ref=where, reason=f"notify: {describe(exc)}", raw=raw)
            return
        for addressed in messages:
            self.consider(addressed)

    # -- one message

    def consider(self, addressed: Addressed) -> NotificationRecord | None:
        """Send, hold, skip or pass over one message, as `schedule` says."""
        notice = addressed.notice
        known = self.records.get(notice.idempotency_key)
        if known is not None and known.status.settled:
            if (
                known.status is NotificationStatus.SENT
                and notice.channel is MessageChannel.SMS
                and addressed.contact is not None
                and (phone := addressed.contact.address(notice.channel))
                and self.clock() - (known.sent_at or known.at) < REPORTS_FOR
            ):
                sent_at = known.sent_at or known.at
                ask = max(sent_at + REPORT_AFTER, self.clock())
                self.awaiting.setdefault(notice.idempotency_key, (phone, sent_at, ask))
            return known
        preferences = self.state.preferences.get(notice.customer_key or "", Preferences())
        now = self.clock()
        verdict = schedule(
            notice,
            preferences=preferences,
            recent=self.sent_at.get(_recipient(notice), []),
            policy=self.policy,
            now=now,
        )
        if verdict.action is Action.EXPIRE:
            self.stats.expired += 1
            return None
        if verdict.action is Action.SKIP:
            return self._settle(notice, NotificationStatus.SKIPPED, 0, verdict.reason)
        if verdict.action is Action.DEFER:
            assert verdict.until is not None
            self.stats.deferred += 1
            heapq.heappush(self.waiting, (verdict.until, next(self._order), addressed))
            return None
        if (
            notice.channel is MessageChannel.EMAIL
            and self.mailer is not None
            and addressed.contact is not None
            and notice.customer_key not in self.forgotten
        ):
            if notice.idempotency_key not in self.batch:
                self.batch[notice.idempotency_key] = (addressed, known)
                self.sent_at[_recipient(notice)].append(now)  # (counted when decided)
            return None
        return self.deliver(addressed, known=known)

    def send_batch(self) -> None:
        """The e-mails decided since the last batch: composed, their intents written and
        acknowledged together, each handed to the relay (tried again as `deliver` does), and
        their outcomes acknowledged together. A kill anywhere leaves each message with no
        record (decided again on restart), an intent (sent again, same Message-ID) or its
        outcome: the guarantees of `deliver`, for one wait on Kafka per batch, not two per
        message."""
        if not self.batch:
            return
        batch, self.batch = list(self.batch.values()), {}
        assert self.mailer is not None
        ready: list[Ready] = []
        for addressed, known in batch:
            notice, contact = addressed.notice, addressed.contact
            assert contact is not None
            recipient = contact.address(notice.channel) or ""
            identifier = message_id(notice.idempotency_key, self.sender)
            try:
                email = compose(
                    self.templates.render(notice, name=contact.name),
                    sender=self.sender,
                    recipient=recipient,
                    message_id=identifier,
                    name=contact.name,
                )
            except (TemplateFailed, ValueError, TypeError) as exc:
                reason = (
                    describe(exc).replace(recipient, "<recipient>") if recipient else describe(exc)
                )
                self._fail(notice, 0, f"not composed: {reason}", identifier)
                continue
            attempts = known.attempts if known is not None else 0
            self._produce(
                notification_record(
                    notice,
                    NotificationStatus.INTENT,
                    at=self.clock(),
                    attempts=attempts,
                    message_id=identifier,
                )
            )
            ready.append((notice, email, recipient, identifier, attempts))
        self._acknowledged()
        # OMS_NOTIFY_IN_FLIGHT lanes, each on a conversation of its own, each sending its next
        # message once the outcome of its last is acknowledged: a kill finds at most one message
        # per lane sent without one. A customer's messages share a lane, in the order decided.
        count = self.settings.notify_in_flight if hasattr(self.mailer, "clone") else 1
        lanes: list[list[Ready]] = [[] for _ in range(count)]
        for item in ready:
            lanes[zlib.crc32(_recipient(item[0]).encode()) % count].append(item)
        if count == 1:
            self._send_lane(self.mailer, ready)
        else:
            while len(self._lane_mailers) < count:
                self._lane_mailers.append(self.mailer.clone())  # type: ignore[attr-defined]
            if self._lanes is None:
                self._lanes = ThreadPoolExecutor(count, thread_name_prefix="notify-lane")
            self._sending = [
                self._lanes.submit(self._send_lane, mailer, lane)
                for mailer, lane in zip(self._lane_mailers, lanes, strict=False)
                if lane
            ]
            # (Sending the next batch while this one is composed measured slower: the lanes
            # then serve their acknowledgements themselves, in turn.)
            self.drain_lanes()
        self._acknowledged()

    def drain_lanes(self) -> None:
        """Waits for the lanes still sending, serving Kafka's acknowledgements meanwhile (each
        lane waits on its own, woken the moment it comes); raises what a lane raised (a
        misconfigured relay, Kafka gone)."""
        sending, self._sending = self._sending, []
        self._serving = True
        try:
            while not all(lane_done.done() for lane_done in sending):
                self.producer.poll(0.01)
        finally:
            self._serving = False
        for lane_done in sending:
            lane_done.result()

    def _send_lane(self, mailer: Mailer, items: list[Ready]) -> None:
        """One lane's messages, one after the other, each once its predecessor's outcome is
        acknowledged (tried again as `deliver` does)."""
        previous: threading.Event | None = None
        for notice, email, recipient, identifier, attempts in items:
            if previous is not None:
                self._wait_acknowledged(previous)
            while True:
                attempts += 1
                try:
                    answer = _guarded(mailer.send, email)
                except CallFailed as exc:
                    detail = exc.detail.replace(recipient, "<recipient>")
                    if exc.permanent or attempts >= self.settings.notify_attempts:
                        with self._lock:
                            self._fail(notice, attempts, detail, identifier)
                        previous = None
                        break
                    log.warning("notify %s: %s (try %d)", notice.idempotency_key, detail, attempts)
                    self.sleep(backoff_s(attempts))
                    continue
                previous = threading.Event()
                with self._lock:
                    self._settle(
                        notice,
                        NotificationStatus.SENT,
                        attempts,
                        answer[:500],
                        message_id=identifier,
                        wait=False,
                        acked=previous,
                    )
                break
        if previous is not None:
            self._wait_acknowledged(previous)

    def _wait_acknowledged(self, acked: threading.Event, *, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not acked.is_set():
            if self._unacknowledged:
                with self._lock:
                    self._acknowledged()  # (raises with Kafka's reasons)
            if time.monotonic() > deadline:
                raise OutboxUnavailable("notification record not acknowledged: timed out")
            if self._serving:
                acked.wait(0.05)  # (send_batch's thread serves the acknowledgements)
            else:
                self.producer.poll(0.005)

    def deliver(
        self, addressed: Addressed, *, known: NotificationRecord | None = None
    ) -> NotificationRecord:
        """Intent → the relay → outcome; skipped when there is nobody or nothing to send to."""
        notice, contact = addressed.notice, addressed.contact
        if contact is None or notice.customer_key in self.forgotten:
            return self._settle(
                notice, NotificationStatus.SKIPPED, 0, "the customer's personal data was forgotten"
            )
        if notice.channel is not MessageChannel.EMAIL:
            provider = self.texts.get(notice.channel)
            if provider is None:
                return self._settle(
                    notice, NotificationStatus.SKIPPED, 0, f"no {notice.channel.value} provider"
                )
            return self.deliver_text(notice, contact, provider, known=known)
        if self.mailer is None:
            return self._settle(notice, NotificationStatus.SKIPPED, 0, "e-mail is off")
        recipient = contact.address(notice.channel) or ""
        identifier = message_id(notice.idempotency_key, self.sender)
        try:
            rendered = self.templates.render(notice, name=contact.name)
            email = compose(
                rendered,
                sender=self.sender,
                recipient=recipient,
                message_id=identifier,
                name=contact.name,
            )
        except (TemplateFailed, ValueError, TypeError) as exc:
            # (No address in the reason: the record is kept 30 days, the dead letter longer.)
            reason = describe(exc).replace(recipient, "<recipient>") if recipient else describe(exc)
            return self._fail(notice, 0, f"not composed: {reason}", identifier)
        attempts = known.attempts if known is not None else 0
        self._write(
            notification_record(
                notice,
                NotificationStatus.INTENT,
                at=self.clock(),
                attempts=attempts,
                message_id=identifier,
            )
        )
        while True:
            attempts += 1
            try:
                answer = _guarded(self.mailer.send, email)
            except CallFailed as exc:
                detail = exc.detail.replace(recipient, "<recipient>")
                if exc.permanent or attempts >= self.settings.notify_attempts:
                    return self._fail(notice, attempts, detail, identifier)
                log.warning("notify %s: %s (try %d)", notice.idempotency_key, detail, attempts)
                self.sleep(backoff_s(attempts))
                continue
            self.sent_at[_recipient(notice)].append(self.clock())
            return self._settle(
                notice, NotificationStatus.SENT, attempts, answer[:500], message_id=identifier
            )

    def deliver_text(
        self,
        notice: Notice,
        contact: Contact,
        provider: TextProvider,
        *,
        known: NotificationRecord | None = None,
    ) -> NotificationRecord:
        """Intent → the SMS or WeChat provider → outcome. After a crash between the two, a
        provider that can be asked (Aliyun) is asked first; the others send again."""
        recipient = contact.address(notice.channel) or ""
        try:
            text = self.templates.render(
                notice.model_copy(update={"channel": MessageChannel.SMS}), name=contact.name
            ).text
        except TemplateFailed as exc:
            return self._fail(notice, 0, f"not composed: {describe(exc)}", None)
        message = TextMessage(
            to=recipient,
            kind=notice.kind.value,
            text=text,
            key=notice.idempotency_key,
            params=template_params(notice, zone=self.policy.zone),
        )
        attempts = known.attempts if known is not None else 0
        if known is not None and known.status is NotificationStatus.INTENT:
            try:
                had = _guarded(provider.already_sent, message, known.at - ASK_BACK)
            except CallFailed as exc:
                log.warning(
                    "notify %s: could not ask %s: %s", notice.idempotency_key, provider.name, exc
                )
                had = None
            if had:
                return self._settle(
                    notice,
                    NotificationStatus.SENT,
                    attempts,
                    f"{provider.name} had it already (asked after a restart)",
                )
        self._write(
            notification_record(
                notice, NotificationStatus.INTENT, at=self.clock(), attempts=attempts
            )
        )
        while True:
            attempts += 1
            try:
                answer = _guarded(provider.send, message)
            except NoTemplate as exc:
                return self._settle(notice, NotificationStatus.SKIPPED, attempts, exc.detail)
            except CallFailed as exc:
                detail = exc.detail.replace(recipient, "<recipient>") if recipient else exc.detail
                if exc.permanent or attempts >= self.settings.notify_attempts:
                    return self._fail(notice, attempts, detail, None)
                log.warning("notify %s: %s (try %d)", notice.idempotency_key, detail, attempts)
                self.sleep(backoff_s(attempts))
                continue
            now = self.clock()
            self.sent_at[_recipient(notice)].append(now)
            if notice.channel is MessageChannel.SMS:  # (WeChat publishes no delivery reports)
                self.awaiting[notice.idempotency_key] = (recipient, now, now + REPORT_AFTER)
            return self._settle(
                notice,
                NotificationStatus.SENT,
                attempts,
                f"{provider.name} {answer}"[:500],
                provider_id=answer[:100] or None,
                sent_at=now,
            )

    def ask_reports(self) -> None:
        """Delivery reports of the text messages sent (SMS): each asked of its provider once a
        minute from a minute after it went, until it is final or a day has passed, and written
        as `delivered` or `undelivered` (what the provider says reached the handset)."""
        now = self.clock()
        due = sorted((at, key) for key, (_, at, ask) in self.awaiting.items() if ask <= now)
        for at, key in due[:REPORTS_AT_ONCE]:
            phone = self.awaiting[key][0]
            sent = self.records.get(key)
            provider = self.texts.get(sent.notice.channel) if sent is not None else None
            if sent is None or provider is None or sent.status is not NotificationStatus.SENT:
                del self.awaiting[key]
                continue
            message = TextMessage(to=phone, kind=sent.notice.kind.value, text="", key=key)
            try:
                report = _guarded(provider.report, message, sent.provider_id or "", at)
            except CallFailed as exc:
                log.warning("notify %s: no report from %s: %s", key, provider.name, exc.detail)
                report = "pending"
            if report in ("delivered", "undelivered"):
                del self.awaiting[key]
                status = NotificationStatus(report)
                self._settle(
                    sent.notice,
                    status,
                    sent.attempts,
                    f"{provider.name}: {report}",
                    provider_id=sent.provider_id,
                    sent_at=at,
                    wait=False,
                )
            elif report is None or now - at > REPORTS_FOR:
                del self.awaiting[key]  # nobody to ask, or asked long enough: stays `sent`
            else:
                self.awaiting[key] = (phone, at, now + REPORTS_EVERY)  # asked again later
        self._acknowledged()

    def _fail(
        self, notice: Notice, attempts: int, detail: str, identifier: str | None
    ) -> NotificationRecord:
        settled = self._settle(
            notice, NotificationStatus.FAILED, attempts, detail, message_id=identifier, wait=True
        )
        self._dead_letter(
            source_ref=f"notify:{notice.channel.value}:{notice.idempotency_key}",
            reason=f"{notice.kind.value} {notice.channel.value} failed: {detail}",
            raw=settled.encode(),
        )
        return settled

    def _settle(
        self,
        notice: Notice,
        status: NotificationStatus,
        attempts: int,
        detail: str,
        *,
        message_id: str | None = None,
        provider_id: str | None = None,
        sent_at: datetime | None = None,
        wait: bool = True,
        acked: threading.Event | None = None,
    ) -> NotificationRecord:
        """The outcome recorded (acknowledged, unless `wait` is off: a batch waits once)."""
        settled = notification_record(
            notice,
            status,
            at=self.clock(),
            attempts=attempts,
            detail=detail,
            message_id=message_id,
            provider_id=provider_id,
            sent_at=sent_at,
        )
        with self._lock:  # (the lanes settle too)
            self._produce(settled, acked=acked)
            if wait:
                self._acknowledged()
            name = status.value
            setattr(self.stats, name, getattr(self.stats, name) + 1)
        return settled

    def _write(self, found: NotificationRecord) -> None:
        """The record onto the notifications topic, once Kafka acknowledged it (an intent must
        be durable before its message is handed over)."""
        self._produce(found)
        self._acknowledged()

    def _produce(self, found: NotificationRecord, *, acked: threading.Event | None = None) -> None:
        """The record on its way to the notifications topic (`_acknowledged` waits for it;
        `acked` is set once Kafka has it)."""

        def delivered(err: KafkaError | None, _msg: object) -> None:
            # No lock here: a flush holding it would wait for this very callback, served by
            # another thread's poll (list.append and Event.set are safe without one).
            if err is not None:
                self._unacknowledged.append(str(err))
            elif acked is not None:
                acked.set()

        self.producer.produce(
            self.settings.topics.notifications,
            key=found.key.encode(),
            value=found.encode(),
            on_delivery=delivered,
        )
        self.records[found.key] = found

    def _acknowledged(self) -> None:
        """Every record produced so far acknowledged by Kafka, or OutboxUnavailable."""
        failures, self._unacknowledged = self._unacknowledged, []
        if self.producer.flush(30) or failures:
            raise OutboxUnavailable(
                f"notification record not acknowledged: {failures or 'timed out'}"
            )

    def _dead_letter(self, *, source_ref: str, reason: str, raw: bytes) -> None:
        if self.publisher is None:
            self.publisher = Publisher(self.settings)
        letter = DeadLetter.of(source="notify", source_ref=source_ref, reason=reason, raw=raw)
        self.publisher.dead_letter(letter)
        self.publisher.flush(30)


def _recipient(notice: Notice) -> str:
    """Whom the rate limit counts: the customer, else (no customer key) the order."""
    return notice.customer_key or f"order:{notice.order_id}"


def _guarded(send: Callable[..., _A], *args: object) -> _A:
    """The relay's or provider's answer; anything one raises that is neither a `CallFailed`
    nor a misconfiguration (which stops the notifier) is a transient failure: tried again,
    then failed and dead-lettered, never a crash that would resend the message forever."""
    try:
        return send(*args)
    except (CallFailed, SmtpMisconfigured, ProviderMisconfigured):
        raise
    except Exception as exc:  # noqa: BLE001 - a mailer's bug or a relay's odd answer
        log.exception("notify: unreadable answer from the mailer")
        raise TransientFailure(f"unreadable answer: {describe(exc)}") from exc
