"""One settings object for every part of OrderStream, read from `OMS_*` environment variables."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.capacity import replication_for

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Under HOME: the addresses of the brokers `oms stack up --brokers N` runs (oms/stack.py),
# what OMS_KAFKA_BOOTSTRAP defaults to while that stack exists.
LOCAL_BOOTSTRAP = Path("kafka") / "bootstrap"


def _local_bootstrap(fields: dict[str, Any]) -> str:
    """Every broker of the local stack: one, or those `oms stack up --brokers N` recorded."""
    recorded = Path(fields["home"]) / LOCAL_BOOTSTRAP
    if recorded.exists():
        return recorded.read_text().strip()
    return "localhost:9092"


class Topics(BaseSettings):
    """Kafka topic names (docs/architecture.md, "Topics"); overridable so tests can run in
    isolation."""

    model_config = SettingsConfigDict(env_prefix="OMS_TOPIC_", frozen=True)

    intake: str = "oms.intake.v1"
    orders: str = "oms.orders.v1"
    inventory: str = "oms.inventory.v1"
    notifications: str = "oms.notifications.v1"
    dlq: str = "oms.dlq.v1"
    # Internal: inputs of the order agent besides intake (reviews, cancellations, stock
    # replies), keyed by order id; commands to the inventory agent, keyed by sku@location;
    # catalogue and location registry changes, read by every worker.
    order_commands: str = "oms.order-commands.v1"
    stock_commands: str = "oms.stock-commands.v1"
    catalogue: str = "oms.catalogue.v1"
    # The data keys of personal data (infra/keystore.py): compacted, kept forever.
    privacy_keys: str = "oms.privacy-keys.v1"
    # The audit trail (infra/audit.py): one hash chain per partition, kept forever.
    audit: str = "oms.audit.v1"
    # Learned prep-time models (streams/eta.py, `oms eta learn`): compacted, newest wins.
    eta_models: str = "oms.eta-models.v1"
    # Calls to the platforms (connectors/outbox.py, `oms outbox run`): one record per call,
    # keyed by its idempotency key, the intent before the call and the outcome after; compacted.
    outbox: str = "oms.outbox.v1"
    # Outbound webhooks (oms/webhooks.py, `oms subscriptions`): the subscriptions, keyed by id,
    # compacted, kept forever; the delivery log, keyed by webhook id, compacted, 30 days.
    webhook_subscriptions: str = "oms.webhook-subscriptions.v1"
    webhook_deliveries: str = "oms.webhook-deliveries.v1"
    # Staff alerts (oms/staff_alerts.py, `oms alerts run`): one record per (event, sink), the
    # intent before the send and the outcome after; compacted.
    staff_alerts: str = "oms.staff-alerts.v1"
    # Carriers' tracking pushes, verified by `POST /carriers/{carrier}/push` (oms/tracking.py):
    # keyed by carrier:tracking number, 7 days.
    carrier_updates: str = "oms.carrier-updates.v1"
    # The agents' and views' snapshots (streams/worker/snapshots.py): compacted, chunked,
    # partition p holds the snapshots of partition p; a restart replays only what follows.
    snapshots: str = "oms.snapshots.v1"

    def all(self) -> list[str]:
        return [
            self.intake,
            self.orders,
            self.inventory,
            self.notifications,
            self.dlq,
            self.order_commands,
            self.stock_commands,
            self.catalogue,
            self.privacy_keys,
            self.audit,
            self.eta_models,
            self.outbox,
            self.webhook_subscriptions,
            self.webhook_deliveries,
            self.staff_alerts,
            self.carrier_updates,
            self.snapshots,
        ]


class Settings(BaseSettings):
    """Where everything lives. With nothing set, everything uses the local stack under `.oms/`."""

    model_config = SettingsConfigDict(env_prefix="OMS_", frozen=True)

    home: Path = Field(default=PROJECT_ROOT / ".oms", description="local stack data and pid files")
    kafka_bootstrap: str = Field(
        default_factory=_local_bootstrap,
        description="the brokers, comma-separated (list them all: a client starting while one "
        "is down asks the next); default: the local stack's",
    )
    kafka_controller_port: int = 9093
    kafka_libs: Path | None = Field(
        default=None, description="Kafka jars; defaults to HOME/kafka/libs (filled by mvn)"
    )
    kafka_partitions: int = Field(
        default=12,
        ge=1,
        description="partitions of the topics the stack creates (topics that exist keep "
        "theirs: adding partitions to a keyed topic moves keys to other partitions)",
    )
    kafka_replication_factor: int | None = Field(
        default=None,
        ge=1,
        description="copies of each partition of the topics OrderStream creates (the stack's, "
        "Faust's own); default: min(3, the brokers OMS_KAFKA_BOOTSTRAP lists)",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="how every Kafka client talks to the brokers (infra/kafka.py); SASL_SSL "
        "in production",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = Field(
        default=None, description="required with a SASL_* protocol: a missing one stops startup"
    )
    kafka_ssl_ca_file: Path | None = Field(
        default=None, description="PEM CA(s) the brokers' certificates chain to; default: system's"
    )
    clickhouse_url: str | None = Field(
        default=None,
        description="clickhouse://host:9000/db or chdb:///path; default: the local stack's",
    )
    clickhouse_port: int = Field(default=9000, description="native port of the local server")
    clickhouse_http_port: int = 8123
    clickhouse_read_url: str | None = Field(
        default=None,
        description="the URL the read API queries with (a read-only user); default: "
        "OMS_CLICKHOUSE_URL, else the local stack's reader",
    )
    schema_registry_url: str | None = None
    master_key: SecretStr | None = Field(
        default=None,
        description="32 bytes, base64: wraps the data keys of personal data; default: the "
        "local stack's HOME/master.key (infra/keystore.py)",
    )
    topics: Topics = Field(default_factory=Topics)
    consumer_group: str = "oms-worker"
    fraud_rules_file: Path | None = Field(
        default=None, description="fraud rules and threshold (JSON); default: built-in rules"
    )
    expiry_check_s: float = Field(default=30.0, description="how often reservations expire")
    orders_in_memory: int = Field(
        default=50_000,
        ge=100,
        description="orders a worker process keeps in memory, shared evenly among the order "
        "log's partitions (OMS_KAFKA_PARTITIONS): a process holding all of them keeps this many "
        "at most; the oldest settled ones beyond are spilled to a local file and read back when "
        "needed",
    )
    orders_in_flight: int = Field(
        default=6_000,
        ge=12,
        description="orders a worker process lets wait for the stock ledger's answers, shared "
        "evenly among the order log's partitions: a partition with that many stops taking new "
        "orders from intake until half of them are answered (the answers, the ledger and the "
        "orders already in go first, so a backlog drains instead of piling up in memory)",
    )
    rebuild_at_once: int = Field(
        default=3,
        ge=1,
        le=64,
        description="partition states a worker rebuilds at a time after an assignment. The "
        "work is mostly outside the GIL (fetching, AES-GCM, zstd, writing the spill file), so "
        "a few overlap; each holds its snapshot's payload in memory meanwhile (~150 MB an "
        "order partition at 1,000,000 orders on 12 partitions), so fewer bound a restart's "
        "memory, more may shorten it on more cores",
    )
    order_retention_days: int = Field(
        default=90,
        ge=1,
        description="days a worker keeps a settled order that nothing touched (no input, no "
        "event): past them it leaves the spill file, so the state and its snapshots stop "
        "growing with the history. An input for it afterwards (a refund request, a channel "
        "re-sending it) is refused like one for an order never received: keep it longer than "
        "any return, refund or re-send window",
    )
    snapshot_every: int = Field(
        default=50_000,
        ge=0,
        description="log events a partition's tail may hold before the worker writes a "
        "snapshot of its state (and at least as many as the state holds orders or levels, "
        "so a snapshot's cost per event stays constant); 0: no snapshots, full replays",
    )
    payload_retention_days: int = Field(
        default=90,
        ge=1,
        description="days ClickHouse keeps order_events.payload (statuses, amounts and times "
        "stay in their columns)",
    )
    projector_session_timeout_s: float = Field(
        default=10.0,
        ge=6.0,
        le=300.0,
        description="how long a projector may go unheard before Kafka gives its partitions to "
        "the other projectors of its database (projections/lease.py); at least the brokers' "
        "group.min.session.timeout.ms (6 s by default)",
    )
    capacity_check_s: float = Field(default=5.0, description="how often capacity is checked")
    catalogue_file: Path | None = Field(
        default=None, description="products and locations (JSON); default: the demo's"
    )
    intake_window: tuple[timedelta, timedelta] = Field(
        default=(timedelta(days=30), timedelta(days=1)),
        description="how long before and after its receipt a channel's order may be placed or "
        'changed (webhooks refuse it otherwise); JSON, e.g. ["P30D", "PT24H"] or seconds',
    )
    # -- who may call `oms api` (infra/principals.py, infra/oidc.py, oms/access.py)
    access_file: Path | None = Field(
        default=None, description="API key hashes and users; default: HOME/access.json"
    )
    session_secret: SecretStr | None = Field(
        default=None,
        description="signs browser sessions (32+ characters); default: HOME/session.key",
    )
    oidc_jwks_url: str | None = Field(
        default=None, description="the identity provider's JWKS; unset: no bearer JWTs"
    )
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_role_claim: str = "oms_role"
    oidc_stores_claim: str = "oms_stores"
    secure_cookies: bool = Field(
        default=True, description="session cookies only over HTTPS (browsers exempt localhost)"
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="proxy addresses whose X-Forwarded-For names the client (rate limits, audit)",
    )
    rate_per_ip: float = Field(
        default=100.0, gt=0, description="requests/s one client address (operators' routes)"
    )
    webhook_rate_per_ip: float = Field(
        default=2000.0,
        gt=0,
        description="webhook requests/s one address (a platform pushes from few addresses)",
    )
    sign_ins_per_ip_minute: float = Field(
        default=10.0, gt=0, description="sign-in attempts a minute one address may make"
    )
    rate_per_principal: float = Field(
        default=100.0, gt=0, description="requests/s one API key, user or token subject"
    )
    read_max_execution_s: int = Field(
        default=10, ge=1, description="ClickHouse max_execution_time of a read API query"
    )
    read_max_rows: int = Field(
        default=50_000_000, ge=1, description="ClickHouse max_rows_to_read of a read API query"
    )
    feed_max_wait_s: int = Field(
        default=30, ge=0, le=30, description="longest an empty GET /events answer is held open"
    )

    # -- metrics, health and logs (infra/metrics.py, infra/structured_logs.py)
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="the port this process serves /metrics, /livez and /readyz on (0: none); "
        "one per process: set it per unit, or pass --metrics-port (`oms api` serves them on "
        "its own port)",
    )
    metrics_host: str = Field(default="127.0.0.1", description="the address /metrics binds to")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="json: every log line one JSON object with the correlation id, order id "
        "and event id of what was being processed",
    )

    # -- the audit trail (infra/audit.py)
    audit_partition: int | None = Field(
        default=None,
        ge=0,
        description="the audit topic partition this process writes; default: the first one no "
        "other process on this host writes (one per process across hosts)",
    )
    audit_timeout_s: float = Field(
        default=5.0, gt=0, description="longest wait for an audit entry to be written"
    )

    # -- telling the platforms (connectors/outbox.py, `oms outbox run`; docs/connectors.md)
    outbox_platforms: list[str] = Field(
        default_factory=lambda: ["meituan", "eleme"],
        description="the platforms `oms outbox run` calls; each needs its credentials below",
    )
    meituan_app_id: str | None = Field(default=None, description="the open platform's app_id")
    meituan_secret: SecretStr | None = Field(
        default=None, description="the app secret: signs calls to Meituan and verifies pushes"
    )
    meituan_api_url: str = "https://waimaiopen.meituan.com/api/v1/"
    eleme_app_key: str | None = None
    eleme_secret: SecretStr | None = Field(
        default=None, description="the app secret: signs calls to Ele.me and verifies pushes"
    )
    eleme_token: SecretStr | None = Field(
        default=None, description="the shop's OAuth access token for calls to Ele.me"
    )
    eleme_api_url: str = "https://open-api.shop.ele.me/api/v1/"
    square_access_token: SecretStr | None = Field(
        default=None, description="the seller's access token for Square's Orders API (Bearer)"
    )
    square_api_url: str = "https://connect.squareup.com/"
    square_version: str = Field(
        default="2025-01-23", description="the Square-Version (API release date) calls pin"
    )
    woocommerce_url: str | None = Field(
        default=None, description="the store's address (https), e.g. https://shop.example.com"
    )
    woocommerce_consumer_key: SecretStr | None = Field(
        default=None, description="a REST API key's consumer key (ck_…), read/write"
    )
    woocommerce_consumer_secret: SecretStr | None = Field(
        default=None, description="that key's consumer secret (cs_…)"
    )
    outbox_max_age_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="a call whose cause is older than this is not made but recorded as expired "
        "(`oms outbox list --failed`, `oms outbox retry`)",
    )
    outbox_keep_s: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="a settled call's record is dropped (tombstoned) this long after it "
        "settled, and a cause older than this is passed over without a record (the outbox "
        "topic stays bounded); at least OMS_OUTBOX_MAX_AGE_S",
    )
    outbox_attempts: int = Field(
        default=6, ge=1, description="tries of one call before it is dead-lettered"
    )
    outbox_self_delivery: list[str] = Field(
        default_factory=list,
        description="locations whose own riders deliver (自配送): only their orders' "
        "departure and delivery are reported to the platforms",
    )

    # -- outbound webhooks (oms/webhooks.py, `oms subscriptions run`; docs/operations.md)
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, description="longest wait for a subscriber's answer to one attempt"
    )
    webhook_backoff_base_s: float = Field(
        default=5.0, gt=0, description="the wait after a delivery's first failed attempt"
    )
    webhook_backoff_cap_s: float = Field(
        default=3600.0, gt=0, description="the longest wait between two attempts (doubling)"
    )
    webhook_retry_for_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="a delivery still failing this long after its first attempt is failed for "
        "good: dead-lettered and passed over",
    )
    webhook_disable_failures: int = Field(
        default=10,
        ge=1,
        description="a subscription is disabled after this many failed attempts in a row ...",
    )
    webhook_disable_after_s: float = Field(
        default=24 * 3600.0,
        ge=0,
        description="... spanning at least this long, with no delivery between",
    )

    # -- telling the customers (oms/notify.py, `oms notify run`; docs/architecture.md)
    notify_email: bool = Field(
        default=True,
        description="send e-mail; `oms notify run` refuses to start without OMS_SMTP_HOST "
        "and OMS_SMTP_FROM while it is on",
    )
    smtp_host: str | None = Field(default=None, description="the SMTP relay's host")
    smtp_port: int = Field(default=587, ge=1, le=65535, description="submission port")
    smtp_starttls: bool = Field(
        default=True,
        description="STARTTLS before anything is sent (the certificate is verified); without "
        "it the relay must be on a trusted network, and no password is sent",
    )
    smtp_user: str | None = Field(default=None, description="AUTH user, with OMS_SMTP_PASSWORD")
    smtp_password: SecretStr | None = None
    smtp_from: str | None = Field(
        default=None, description="the From address, e.g. 'Dumpling House <orders@example.com>'"
    )
    smtp_timeout_s: float = Field(default=30.0, gt=0, description="one SMTP conversation")
    notify_templates_dir: Path | None = Field(
        default=None,
        description="operators' templates (<locale>/<kind>.<channel>.<txt|html>); each one "
        "present overrides the shipped one of its name",
    )
    notify_preferences_file: Path | None = Field(
        default=None,
        description="customers' opt-outs and locales (`oms notify opt-out`); default: "
        "HOME/notify-preferences.json",
    )
    notify_locale: str = Field(
        default="zh-CN", description="zh-CN or en, unless the customer chose"
    )
    notify_timezone: str = Field(
        default="Asia/Shanghai", description="the time zone of quiet hours and of times shown"
    )
    notify_quiet_hours: str = Field(
        default="22:00-08:00",
        description="local hours in which messages wait (HH:MM-HH:MM; empty: none); an order's "
        "ready-for-pickup and out-for-delivery messages are sent anyway",
    )
    notify_rate_limit: int = Field(
        default=6, ge=1, description="messages one customer gets at most per rate window"
    )
    notify_rate_window_s: float = Field(default=3600.0, gt=0)
    notify_max_age_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="a message whose event is older than this is not sent (nor recorded); "
        "below the notifications topic's retention (30 days)",
    )
    notify_attempts: int = Field(
        default=5, ge=1, description="tries of one message before it is dead-lettered"
    )
    notify_tracking_url: str = Field(
        default="https://t.17track.net/en#nums={tracking_number}",
        description="a shipment's tracking link; {carrier} and {tracking_number} are filled in",
    )
    notify_in_flight: int = Field(
        default=4,
        ge=1,
        le=100,
        description="e-mails handed to the relay before the outcome of the first is "
        "acknowledged by Kafka: after a kill -9 at most this many go out again (each with its "
        "Message-ID); 1: at most one, at about half the throughput",
    )
    notify_channels: list[Literal["email", "sms", "wechat"]] = Field(
        default=["email"],
        description="how customers are told unless they chose (`oms notify opt-in --channel`): "
        "each message goes out on every one the customer has an address for",
    )
    notify_sms_provider: Literal["aliyun", "twilio"] | None = Field(
        default=None, description="SMS to customers (connectors/sms.py); unset: no SMS"
    )
    aliyun_sms_access_key_id: str | None = None
    aliyun_sms_access_key_secret: SecretStr | None = None
    aliyun_sms_sign_name: str | None = Field(default=None, description="the approved 签名")
    aliyun_sms_templates: dict[str, dict[str, object]] = Field(
        default_factory=dict,
        description='message kind → {"code": "SMS_…", "params": {variable: notice value}}',
    )
    aliyun_sms_api_url: str = "https://dysmsapi.aliyuncs.com/"
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from: str | None = Field(
        default=None, description="the sending number (E.164) or a Messaging Service SID (MG…)"
    )
    twilio_api_url: str = "https://api.twilio.com"
    wechat_notify_app_id: str | None = Field(
        default=None, description="the mini-program's app id: WeChat subscribe messages"
    )
    wechat_notify_app_secret: SecretStr | None = None
    wechat_notify_templates: dict[str, dict[str, object]] = Field(
        default_factory=dict,
        description='message kind → {"template_id": …, "data": {key: notice value}, "page": …}',
    )
    wechat_notify_state: Literal["developer", "trial", "formal"] = "formal"
    wechat_api_url: str = "https://api.weixin.qq.com"

    # -- shipping by carrier (oms/shipping.py, `oms ship wave`; docs/carriers.md)
    shipping_file: Path | None = Field(
        default=None,
        description="ship-from addresses, product weights and temperatures, rate-shopping "
        "rules, rate cards (JSON); `oms ship wave` refuses to start without it",
    )
    carriers: list[str] = Field(
        default_factory=list,
        description="the carriers to rate-shop (sf, zto, jdl, easypost, or a plug-in's name); "
        "each needs its settings below",
    )
    sf_partner_id: str | None = Field(default=None, description="SF Express 顾客编码 (partnerID)")
    sf_check_word: SecretStr | None = Field(default=None, description="SF Express 校验码")
    sf_monthly_card: str | None = Field(default=None, description="SF Express 月结卡号")
    sf_api_url: str = "https://sfapi.sf-express.com/std/service"
    zto_app_key: str | None = None
    zto_app_secret: SecretStr | None = None
    zto_account_id: str | None = Field(default=None, description="ZTO e-waybill account")
    zto_account_password: SecretStr | None = None
    zto_api_url: str = "https://japi.zto.com"
    jdl_app_key: str | None = None
    jdl_app_secret: SecretStr | None = None
    jdl_access_token: SecretStr | None = None
    jdl_customer_code: str | None = Field(default=None, description="JD Logistics 商家编码")
    jdl_api_url: str = "https://api.jdl.com"
    easypost_api_key: SecretStr | None = None
    easypost_webhook_secret: SecretStr | None = None
    easypost_api_url: str = "https://api.easypost.com/v2"
    track_poll_s: float = Field(
        default=900.0, gt=0, description="how often `oms track run` asks a carrier about a shipment"
    )
    return_window_days: int = Field(
        default=30, ge=0, description="how long after delivery a return may be requested"
    )
    restocking_fee_bps: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="the restocking fee, in basis points of the goods refunded, for a return "
        "that is not the seller's fault (oms/returns.py)",
    )

    # -- telling the staff (oms/staff_alerts.py, `oms alerts run`; docs/architecture.md)
    staff_alerts_file: Path | None = Field(
        default=None,
        description="the stores', reviewers' and buyers' sinks (JSON; robot keys are secrets); "
        "`oms alerts run` refuses to start without it",
    )
    staff_alerts_window_s: float = Field(
        default=15 * 60.0,
        gt=0,
        description="events older than this when `oms alerts run` starts alert nobody",
    )
    staff_alerts_attempts: int = Field(
        default=8, ge=1, description="tries of one alert before it is dead-lettered"
    )
    staff_alerts_timezone: str = Field(
        default="Asia/Shanghai", description="the time zone of times on tickets and messages"
    )
    staff_alerts_printer_timeout_s: float = Field(
        default=5.0, gt=0, description="longest wait to connect to and send to a printer"
    )
    staff_alerts_wecom_url: str = Field(
        default="https://qyapi.weixin.qq.com/cgi-bin/webhook/send",
        description="the WeCom group robots' send endpoint (?key= is added)",
    )

    @property
    def kafka_libs_dir(self) -> Path:
        return self.kafka_libs or self.home / "kafka" / "libs"

    @property
    def replication_factor(self) -> int:
        """OMS_KAFKA_REPLICATION_FACTOR, else 3 copies when 3 brokers are listed (fewer with
        fewer; infra/capacity.py, `replication_for`)."""
        listed = [address for address in self.kafka_bootstrap.split(",") if address.strip()]
        return self.kafka_replication_factor or replication_for(len(listed)).factor

    @property
    def orders_in_memory_per_partition(self) -> int:
        """The bound of one partition's orders in memory (`orders_in_memory` shared)."""
        return max(100, self.orders_in_memory // max(1, self.kafka_partitions))

    @property
    def orders_in_flight_per_partition(self) -> int:
        """The bound of one partition's orders in flight (`orders_in_flight` shared)."""
        return max(1, self.orders_in_flight // max(1, self.kafka_partitions))

    @property
    def resolved_clickhouse_url(self) -> str:
        """The configured URL, else the local stack's server if it runs one, else embedded chDB."""
        if self.clickhouse_url:
            return self.clickhouse_url
        marker = self.home / "clickhouse" / "url"
        if marker.exists():
            return marker.read_text().strip()
        return f"chdb://{self.home / 'chdb'}"

    @property
    def resolved_clickhouse_read_url(self) -> str:
        """OMS_CLICKHOUSE_READ_URL, else OMS_CLICKHOUSE_URL, else the local stack's read-only
        user if it runs a server (oms/stack.py), else what `resolved_clickhouse_url` says."""
        if self.clickhouse_read_url:
            return self.clickhouse_read_url
        if self.clickhouse_url:
            return self.clickhouse_url
        marker = self.home / "clickhouse" / "read_url"
        if marker.exists():
            return marker.read_text().strip()
        return self.resolved_clickhouse_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
