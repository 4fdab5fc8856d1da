"""Kafka security settings (infra/kafka.py): every client gets the same protocol, SASL user and
CAs, and a protocol whose secret is missing is refused before a client is built."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import faust
import pytest
from confluent_kafka import KafkaError, KafkaException
from pydantic import SecretStr

from infra.exit_codes import ExitCode
from infra.kafka import (
    KafkaSecurityError,
    admin_config,
    client_security,
    consumer_config,
    producer_config,
)
from infra.settings import Settings, get_settings
from projections.reconnect import exit_code, transient
from streams.worker.app import broker_credentials
from tests.conftest import TEST_MASTER_KEY


def secured(**changes: object) -> Settings:
    base = {
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_username": "oms",
        "kafka_sasl_password": SecretStr("s3cret"),
    }
    return Settings(**(base | changes))  # type: ignore[arg-type]


def test_plaintext_is_the_default_and_adds_nothing_but_the_protocol() -> None:
    assert client_security(Settings()) == {"security.protocol": "PLAINTEXT"}
    assert broker_credentials(Settings()) is None


def test_sasl_ssl_gives_librdkafka_the_user_the_mechanism_and_the_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    assert client_security(secured(kafka_ssl_ca_file=ca)) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "oms",
        "sasl.password": "s3cret",
        "ssl.endpoint.identification.algorithm": "https",
        "ssl.ca.location": str(ca),
    }


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
def test_sasl_without_a_password_is_refused_naming_the_variable(protocol: str) -> None:
    for password in (None, SecretStr("")):
        settings = secured(kafka_security_protocol=protocol, kafka_sasl_password=password)
        with pytest.raises(KafkaSecurityError, match="OMS_KAFKA_SASL_PASSWORD"):
            client_security(settings)
        with pytest.raises(KafkaSecurityError, match="OMS_KAFKA_SASL_PASSWORD"):
            broker_credentials(settings)
    with pytest.raises(KafkaSecurityError, match="OMS_KAFKA_SASL_USERNAME"):
        client_security(secured(kafka_sasl_username=None))


def test_every_librdkafka_config_carries_the_process_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMS_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("OMS_KAFKA_SASL_USERNAME", "oms")
    monkeypatch.setenv("OMS_KAFKA_SASL_PASSWORD", "s3cret")
    get_settings.cache_clear()
    try:
        for config in (
            producer_config("b:1"),
            consumer_config("b:1", group_id="g"),
            admin_config("b:1"),
        ):
            assert config["security.protocol"] == "SASL_SSL"
            assert config["sasl.password"] == "s3cret"
        # An override in librdkafka's names still wins (it comes last).
        assert producer_config("b:1", **{"security.protocol": "SSL"})["security.protocol"] == "SSL"
    finally:
        get_settings.cache_clear()


def test_faust_gets_scram_over_tls_with_the_same_cas() -> None:
    credentials = broker_credentials(secured())
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password) == ("oms", "s3cret")
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.protocol.value == "SASL_SSL"
    assert isinstance(credentials.ssl_context, ssl.SSLContext)
    assert credentials.ssl_context.check_hostname
    plain_sasl = broker_credentials(secured(kafka_security_protocol="SASL_PLAINTEXT"))
    assert isinstance(plain_sasl, faust.SASLCredentials)
    assert plain_sasl.protocol.value == "SASL_PLAINTEXT"
    tls_only = broker_credentials(secured(kafka_security_protocol="SSL"))
    assert isinstance(tls_only, faust.SSLCredentials)


def test_a_worker_without_its_sasl_password_does_not_start(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "OMS_HOME": str(tmp_path),
        "OMS_MASTER_KEY": TEST_MASTER_KEY,
        "OMS_KAFKA_BOOTSTRAP": "localhost:1",
        "OMS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "OMS_KAFKA_SASL_USERNAME": "oms",
    }
    result = subprocess.run(
        [sys.executable, "-m", "oms.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "OMS_KAFKA_SASL_PASSWORD" in result.stderr


def test_missing_secrets_and_a_refused_user_are_configuration_errors() -> None:
    """`oms project` exits 78 (fix the settings; a supervisor does not restart it), not 1."""
    assert exit_code(KafkaSecurityError("needs OMS_KAFKA_SASL_PASSWORD")) == ExitCode.CONFIG
    refused = KafkaException(KafkaError(KafkaError._AUTHENTICATION, "invalid credentials"))
    assert exit_code(refused) == ExitCode.CONFIG
    assert not transient(refused)
