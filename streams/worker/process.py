"""`oms worker` as a process: it checks what it needs before it starts (failing closed), runs
the Faust worker, and ends with an exit code a supervisor can act on (docs/operations.md)."""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from typing import Any, NoReturn

from pydantic import ValidationError

from infra.exit_codes import ExitCode
from infra.kafka import KafkaSecurityError, admin_config
from infra.metrics import ConsumerLag, serve_metrics
from infra.settings import Settings, get_settings
from infra.structured_logs import configure_logging
from streams.worker.app import create_app

log = logging.getLogger(__name__)


def run_workers(
    count: int, argv: list[str] | None = None, *, metrics_port: int | None = None
) -> None:
    """`oms worker --processes N`: N workers of one consumer group on this host, so the
    partitions (4 by default: at most that many workers get any) are spread over several cores.
    Each is a whole worker — its own views, its own states — so this is the same as starting N
    `oms worker`s (the Nth serving its metrics on the metrics port + N - 1). SIGTERM / SIGINT
    go to all of them; when one exits, the others are stopped and its exit code is returned,
    so whatever supervises this restarts them together."""
    import signal
    import subprocess

    profile = os.environ.get("OMS_PROFILE")
    if metrics_port is None:
        metrics_port = get_settings().metrics_port
    children: list[subprocess.Popen[bytes]] = []
    for n in range(count):
        env = dict(os.environ)
        if profile and n:
            env["OMS_PROFILE"] = f"{profile}.{n}"  # the first writes where it was asked to
        if metrics_port:
            env["OMS_METRICS_PORT"] = str(metrics_port + n)
        children.append(
            subprocess.Popen([sys.executable, "-m", "oms.cli", "worker", *(argv or [])], env=env)
        )

    def stop(signum: int, frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not any(child.poll() is not None for child in children):
        time.sleep(0.2)
    first = next(child for child in children if child.poll() is not None)
    code = first.returncode
    stop(signal.SIGTERM, None)
    for child in children:
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    sys.exit(code)


class KafkaRefusedCredentials(Exception):
    """The broker refused the worker's SASL user or password."""


def missing_topics(settings: Settings) -> list[str]:
    """The topics the worker needs that the cluster does not have, asked once the broker
    answers (waiting for it as long as it takes, backing off to 10 s)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    refused: list[str] = []

    def on_error(error: KafkaError) -> None:
        # A broker that refuses our credentials will refuse them again: not worth waiting for.
        if error.code() == KafkaError._AUTHENTICATION:
            refused.append(error.str())

    admin = AdminClient(admin_config(settings.kafka_bootstrap) | {"error_cb": on_error})
    delay = 0.5
    while True:
        try:
            existing = admin.list_topics(timeout=10).topics
            break
        except KafkaException as exc:
            admin.poll(1)  # error callbacks are served by poll
            if refused:
                raise KafkaRefusedCredentials(refused[-1]) from exc
            log.warning("waiting for Kafka at %s: %s", settings.kafka_bootstrap, exc)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    topics = settings.topics
    needed = [
        topics.intake,
        topics.order_commands,
        topics.stock_commands,
        topics.orders,
        topics.inventory,
        topics.catalogue,
        topics.dlq,
    ]
    return [topic for topic in needed if topic not in existing]


def run_worker(argv: list[str] | None = None, *, metrics_port: int | None = None) -> None:
    """`oms worker`: run the Faust worker with its own command line (e.g. `-l info`).

    Fails closed before it starts: a setting that is not valid, or a topic the cluster does
    not have (a worker must not create topics with the broker's defaults), exits 78. Serves
    its metrics and health from the moment its app is made (not ready until it is)."""
    try:
        settings = get_settings()
    except ValidationError as exc:
        _exit(ExitCode.CONFIG, f"a setting is not valid: {exc}")
    configure_logging(settings, process="worker")
    try:
        missing = missing_topics(settings)
    except KafkaSecurityError as exc:  # a SASL protocol without its user or password
        _exit(ExitCode.CONFIG, str(exc))
    except KafkaRefusedCredentials as exc:
        _exit(ExitCode.CONFIG, f"Kafka at {settings.kafka_bootstrap} refused the login: {exc}")
    if missing:
        _exit(
            ExitCode.CONFIG,
            f"topics missing on {settings.kafka_bootstrap}: "
            f"{', '.join(missing)} (create them, e.g. with `oms stack up`)",
        )
    app = create_app(settings)
    worker = app.worker  # type: ignore[attr-defined]
    serve_metrics(
        settings,
        port=metrics_port,
        health=worker.health,
        collectors=[
            ConsumerLag(
                settings,
                group=settings.consumer_group,
                # Committed offsets of the partitions this worker holds (None: the group's).
                positions=lambda: dict.fromkeys(worker.assigned or ()),
            )
        ],
    )
    gc.freeze()  # everything imported and built so far lives as long as the worker
    # Faust's own web server is off (the worker command would turn it on whatever the app
    # says, and two workers on one host would fight over its port 6066).
    sys.argv = ["oms worker", "worker", "--without-web", *(argv or ["--loglevel", "warn"])]
    profile = os.environ.get("OMS_PROFILE")  # `oms bench pipeline`: where the time goes
    if not profile:
        app.main()
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        app.main()
    finally:
        profiler.disable()
        profiler.dump_stats(profile)


def _exit(code: ExitCode, reason: str) -> NoReturn:
    print(
        f"oms worker: configuration error (exit {int(code)}, restarting will not help): {reason}",
        file=sys.stderr,
    )
    sys.exit(code)
