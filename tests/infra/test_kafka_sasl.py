"""The pipeline on a broker that accepts SASL/SCRAM over TLS only.

A second single-node KRaft broker, from the stack's jars and configuration (oms/stack.py),
listens on its own ports with a SASL_SSL listener (SCRAM-SHA-512, its user written at format
time, a keystore signed by a CA made here) and no PLAINTEXT client listener. Orders go from
`oms connect` through the Faust worker to ClickHouse over it; a wrong password, no TLS, and
no SASL are refused.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError as AIOKafkaError
from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import SecretStr

from connectors.samples import MALFORMED_LINES, sample_lines
from connectors.webshop import WebshopConnector
from events.codec import AvroCodec
from events.models import DeadLetter
from infra.exit_codes import ExitCode
from infra.kafka import admin_config, client_security, consumer_config
from infra.keystore import KafkaKeys
from infra.settings import Settings, get_settings
from oms.stack import BrokerTls, ClickHouseService, KafkaService
from projections.projector import Projector
from projections.queries import event_count, order_state, status_counts
from projections.reconnect import exit_code
from projections.store import connect, with_database_url
from streams.worker.app import broker_credentials
from tests.conftest import settings_env
from tests.tls import make_server_certificate

pytestmark = pytest.mark.integration
ORDERS = 30


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_tls(directory: Path, password: str) -> BrokerTls:
    """The broker's key and certificate in a PKCS12 keystore, and the CA that signed them."""
    made = make_server_certificate(directory)
    keystore = directory / "broker.p12"
    keystore.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"broker",
            made.key,
            made.certificate,
            [made.ca],
            serialization.BestAvailableEncryption(password.encode()),
        )
    )
    return BrokerTls(keystore=keystore, keystore_password=password, truststore=made.ca_file)


@pytest.fixture(scope="module")
def sasl_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings of a running SASL_SSL-only broker (and the local ClickHouse server)."""
    stack = Settings()
    home = tmp_path_factory.mktemp("sasl-broker")
    tls = make_tls(home, secrets.token_urlsafe(12))
    settings = stack.model_copy(
        update={
            "home": home,
            "kafka_bootstrap": f"localhost:{_free_port()}",
            "kafka_controller_port": _free_port(),
            "kafka_libs": stack.kafka_libs_dir,
            "kafka_partitions": 3,
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_username": "oms",
            "kafka_sasl_password": SecretStr(secrets.token_urlsafe(18)),
            "kafka_ssl_ca_file": tls.truststore,
            "clickhouse_url": with_database_url(
                ClickHouseService(stack).url, f"oms_test_{uuid.uuid4().hex[:10]}"
            ),
        }
    )
    broker = KafkaService(settings, tls=tls)
    try:
        broker.up()
        yield settings
    finally:
        KafkaKeys.close_all(settings)  # before their broker goes
        broker.down()
        store = connect(settings.resolved_clickhouse_url)
        store.execute(f"DROP DATABASE IF EXISTS {store.database}")
        store.close()


def security_env(settings: Settings) -> dict[str, str]:
    password = settings.kafka_sasl_password
    assert password is not None
    return settings_env(settings) | {
        "OMS_KAFKA_SECURITY_PROTOCOL": settings.kafka_security_protocol,
        "OMS_KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism,
        "OMS_KAFKA_SASL_USERNAME": settings.kafka_sasl_username or "",
        "OMS_KAFKA_SASL_PASSWORD": password.get_secret_value(),
        "OMS_KAFKA_SSL_CA_FILE": str(settings.kafka_ssl_ca_file),
    }


@pytest.fixture
def this_process_on(sasl_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's own clients (the projector's key store and publisher, built from its
    settings) speak to the SASL broker, as a deployed process would."""
    for name, value in security_env(sasl_settings).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def test_orders_flow_through_a_sasl_ssl_only_broker(
    sasl_settings: Settings, this_process_on: None, tmp_path: Path
) -> None:
    settings = sasl_settings
    env = security_env(settings)
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "oms.cli", "worker"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        lines, planted = sample_lines(count=ORDERS, run_id="sasl", invalid_share=0.3)
        path = tmp_path / "orders.jsonl"
        path.write_bytes(b"\n".join([*lines[:5], MALFORMED_LINES[0], *lines[5:]]) + b"\n")
        published = subprocess.run(
            [sys.executable, "-m", "oms.cli", "connect", "webshop", str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert published.returncode == 0, published.stderr
        assert f"{ORDERS} of {ORDERS + 1} lines acknowledged" in published.stdout

        (letter,) = read_all(settings, settings.topics.dlq, expect=1)
        decoded = AvroCodec().decode(letter)
        assert isinstance(decoded, DeadLetter)
        assert decoded.raw == MALFORMED_LINES[0]

        store = connect(settings.resolved_clickhouse_url)
        rejected = sum(1 for defect in planted.values() if defect)
        Projector(settings=settings, store=store, batch_seconds=0.3).run(
            until=lambda _: event_count(store) >= 2 * ORDERS + 2 * (ORDERS - rejected)
        )
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        connector = WebshopConnector()
        for external_id, defect in planted.items():
            state = order_state(store, connector.order_id(external_id))
            assert state is not None, f"order {external_id} missing from ClickHouse"
            assert state["status"] == ("rejected" if defect else "prioritised")
        assert status_counts(store) == {"prioritised": ORDERS - rejected, "rejected": rejected}
        store.close()
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()


def read_all(settings: Settings, topic: str, *, expect: int) -> list[bytes]:
    consumer = Consumer(
        consumer_config(
            settings.kafka_bootstrap,
            group_id=f"reader-{uuid.uuid4().hex}",
            **{"auto.offset.reset": "earliest"},
        )
        | client_security(settings)
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    try:
        for _ in range(60):
            values += [
                m.value() or b"" for m in consumer.consume(100, timeout=0.5) if not m.error()
            ]
            if len(values) >= expect:
                break
    finally:
        consumer.close()
    assert len(values) == expect, f"{len(values)} of {expect} messages on {topic}"
    return values


def refusal(settings: Settings, **security: Any) -> list[KafkaError]:
    """The errors a librdkafka admin client with `security` meets asking for the topics; it
    must see no broker at all."""
    errors: list[KafkaError] = []
    config = admin_config(settings.kafka_bootstrap) | client_security(settings) | security
    admin = AdminClient(config | {"error_cb": errors.append})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=8)
    admin.poll(1)  # serves the error callbacks
    return errors


def test_a_wrong_password_is_refused_as_an_authentication_failure(sasl_settings: Settings) -> None:
    errors = refusal(sasl_settings, **{"sasl.password": "not-the-password"})
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "PLAINTEXT", "SSL"])
def test_a_client_without_tls_or_without_sasl_gets_nothing(
    sasl_settings: Settings, protocol: str
) -> None:
    errors = refusal(sasl_settings, **{"security.protocol": protocol})
    # Not even as far as authentication: the broker and the client do not understand each
    # other (librdkafka only sees the connection fail).
    assert errors and all(e.code() == KafkaError._ALL_BROKERS_DOWN for e in errors), errors


def test_a_client_that_does_not_trust_the_ca_is_refused(sasl_settings: Settings) -> None:
    errors = refusal(sasl_settings, **{"ssl.ca.location": "probe"})
    assert any(
        e.code() == KafkaError._SSL and "certificate verify failed" in e.str() for e in errors
    )


def test_faust_s_aiokafka_clients_use_the_credentials(sasl_settings: Settings) -> None:
    """The worker's consumer and producer are aiokafka's, configured by Faust from
    `broker_credentials`: so configured, a producer connects and writes; with a wrong
    password it is refused."""

    async def send(settings: Settings) -> None:
        auth = credentials_to_aiokafka_auth(broker_credentials(settings))
        assert auth["security_protocol"] == "SASL_SSL"
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=8000, **auth
        )
        try:
            await producer.start()
            await producer.send_and_wait(settings.topics.notifications, b"hello")
        finally:
            await producer.stop()

    asyncio.run(send(sasl_settings))
    wrong = sasl_settings.model_copy(update={"kafka_sasl_password": SecretStr("wrong")})
    with pytest.raises(AIOKafkaError):
        asyncio.run(send(wrong))


def test_a_projector_whose_password_is_refused_stops_as_misconfigured(
    sasl_settings: Settings, this_process_on: None
) -> None:
    """It does not wait for the brokers to come back, as it would for an outage: they are up,
    and refuse its user."""
    wrong = sasl_settings.model_copy(update={"kafka_sasl_password": SecretStr("wrong")})
    store = connect(sasl_settings.resolved_clickhouse_url)
    try:
        with pytest.raises(KafkaException) as stopped:
            Projector(settings=wrong, store=store, batch_seconds=0.3).run(until=lambda _: False)
    finally:
        store.close()
    assert stopped.value.args[0].code() == KafkaError._AUTHENTICATION
    assert exit_code(stopped.value) == ExitCode.CONFIG


def test_a_worker_whose_password_is_refused_stops_as_misconfigured(
    sasl_settings: Settings,
) -> None:
    """`oms worker` against brokers that refuse its login exits 78 naming the refusal, rather
    than wait for Kafka forever as it would through an outage."""
    env = security_env(sasl_settings) | {"OMS_KAFKA_SASL_PASSWORD": "not-the-password"}
    done = subprocess.run(
        [sys.executable, "-m", "oms.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == ExitCode.CONFIG, done.stderr[-2000:]
    assert "refused the login" in done.stderr
