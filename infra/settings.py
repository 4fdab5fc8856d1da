"""One settings object for every part of OrderStream, read from `OMS_*` environment variables."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


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
        ]


class Settings(BaseSettings):
    """Where everything lives. With nothing set, everything uses the local stack under `.oms/`."""

    model_config = SettingsConfigDict(env_prefix="OMS_", frozen=True)

    home: Path = Field(default=PROJECT_ROOT / ".oms", description="local stack data and pid files")
    kafka_bootstrap: str = "localhost:9092"
    kafka_controller_port: int = 9093
    kafka_libs: Path | None = Field(
        default=None, description="Kafka jars; defaults to HOME/kafka/libs (filled by mvn)"
    )
    kafka_partitions: int = 4
    clickhouse_url: str | None = Field(
        default=None,
        description="clickhouse://host:9000/db or chdb:///path; default: the local stack's",
    )
    clickhouse_port: int = Field(default=9000, description="native port of the local server")
    clickhouse_http_port: int = 8123
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
        description="orders the order agent keeps in memory per partition; the oldest settled "
        "ones beyond are spilled to a local file and read back when needed",
    )
    payload_retention_days: int = Field(
        default=90,
        ge=1,
        description="days ClickHouse keeps order_events.payload (statuses, amounts and times "
        "stay in their columns)",
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

    @property
    def kafka_libs_dir(self) -> Path:
        return self.kafka_libs or self.home / "kafka" / "libs"

    @property
    def resolved_clickhouse_url(self) -> str:
        """The configured URL, else the local stack's server if it runs one, else embedded chDB."""
        if self.clickhouse_url:
            return self.clickhouse_url
        marker = self.home / "clickhouse" / "url"
        if marker.exists():
            return marker.read_text().strip()
        return f"chdb://{self.home / 'chdb'}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
