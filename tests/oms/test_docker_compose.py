from __future__ import annotations

from typing import Any

import yaml

from infra.settings import PROJECT_ROOT


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((PROJECT_ROOT / "docker-compose.kafka.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_kafka_runs_kraft_on_the_port_oms_expects() -> None:
    kafka = compose()["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:") and kafka["image"].split(":")[1][0].isdigit()
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "PLAINTEXT://localhost:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    assert "127.0.0.1:9092:9092" in kafka["ports"]
    assert "kafka-broker-api-versions" in " ".join(kafka["healthcheck"]["test"])
    assert any(v.startswith("kafka-data:") for v in kafka["volumes"])


def test_clickhouse_serves_the_native_port_with_a_health_check() -> None:
    clickhouse = compose()["services"]["clickhouse"]
    assert clickhouse["image"].startswith("clickhouse/clickhouse-server:")
    assert clickhouse["image"].split(":")[1] != "latest"
    assert "127.0.0.1:9000:9000" in clickhouse["ports"]
    assert "SELECT 1" in " ".join(clickhouse["healthcheck"]["test"])
    assert clickhouse["environment"]["CLICKHOUSE_DB"] == "oms"
    assert any(v.startswith("clickhouse-data:") for v in clickhouse["volumes"])


def test_the_comment_says_how_oms_connects() -> None:
    text = (PROJECT_ROOT / "docker-compose.kafka.yml").read_text()
    assert "OMS_KAFKA_BOOTSTRAP=localhost:9092" in text
    assert "OMS_CLICKHOUSE_URL=clickhouse://oms:$OMS_CLICKHOUSE_PASSWORD@localhost:9000/oms" in text
    assert set(compose()["volumes"]) == {"kafka-data", "clickhouse-data"}


def test_every_port_is_published_on_this_host_only() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_clickhouse_has_a_password_from_the_environment_and_no_open_default_user() -> None:
    clickhouse = compose()["services"]["clickhouse"]
    env = clickhouse["environment"]
    assert env["CLICKHOUSE_USER"] == "oms"
    # `${VAR:?message}`: compose refuses to start without it, rather than run password-less.
    assert env["CLICKHOUSE_PASSWORD"].startswith("${OMS_CLICKHOUSE_PASSWORD:?")
    assert "CLICKHOUSE_SKIP_USER_SETUP" not in env
    assert "--password" in " ".join(clickhouse["healthcheck"]["test"])
