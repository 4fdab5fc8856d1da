"""`oms bench notify`: customer e-mails rendered and delivered per second to a real local SMTP
server (Postfix's smtp-sink, else aiosmtpd), and outbound webhooks delivered per second to a
local receiver that checks their Standard Webhooks signatures, with the latency from an
event's write to the order log to its receipt (issue 14, item 7; target ≥ 1,000 messages/s).

E-mail: `orders` orders (received with a sealed customer, then accepted with an estimate) are
written to scratch topics first; the clock runs from the notifier's start (it reads its records
and the log from the beginning) to the last message taken by the SMTP server. Every message is
the whole path: open the sealed customer, decide, render both templates, compose MIME, write
the intent (acknowledged), hand it to the server, write the outcome.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.kafka_tools import scratch_topics
from events.models import (
    Actor,
    ActorKind,
    Customer,
    Event,
    OrderAcceptedByStore,
    OrderLine,
    OrderMode,
    OrderReceived,
    utc_now,
)
from infra.publisher import Publisher
from infra.settings import Settings, get_settings

TARGET_PER_S = 1000.0
COOK = Actor(kind=ActorKind.USER, id="bench")


def order_events(count: int, *, run: str) -> list[Event]:
    """`count` pickup orders, each received (a customer with an e-mail) and accepted."""
    now = utc_now()
    events: list[Event] = []
    for n in range(count):
        order_id, external = f"{run}-{n}", f"{run}{n:06d}"
        envelope = dict(
            order_id=order_id,
            occurred_at=now,
            recorded_at=now,
            correlation_id=order_id,
            channel="webshop",
            external_id=external,
        )
        events.append(
            OrderReceived(
                **envelope,
                event_id=f"r-{order_id}",
                sequence=1,
                actor=Actor(kind=ActorKind.CHANNEL, id="webshop"),
                mode=OrderMode.PICKUP,
                currency="CNY",
                lines=[OrderLine(sku="DUMPLING-12", name="水饺", quantity=2, unit_price=2800)],
                total=5600,
                payment_status="paid",
                placed_at=now,
                customer=Customer(
                    id=f"c{n}", name=f"客户{n}", email=f"c{n}@example.com", phone=f"+86138{n:08d}"
                ),
            )
        )
        events.append(
            OrderAcceptedByStore(
                **envelope,
                event_id=f"a-{order_id}",
                sequence=2,
                actor=COOK,
                location="S01",
                estimated_ready_at=now + timedelta(minutes=20),
            )
        )
    return events


def postfix_smtp_sink(home: Path) -> Path | None:
    """Postfix's `smtp-sink` (Debian's postfix package, unpacked under `home`, not installed:
    no mail system is configured or started), or None where it cannot be had."""
    import shutil
    import subprocess
    import tempfile

    unpacked = home / "tools" / "postfix"
    binary = unpacked / "usr" / "sbin" / "smtp-sink"
    if binary.exists():
        return binary
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return None
    with tempfile.TemporaryDirectory() as download:
        fetched = subprocess.run(
            ["apt-get", "download", "postfix"], cwd=download, capture_output=True, check=False
        )
        debs = list(Path(download).glob("postfix_*.deb"))
        if fetched.returncode != 0 or not debs:
            return None
        unpacked.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True)
    return binary if binary.exists() else None


@contextmanager
def smtp_server(relay: str, home: Path) -> Iterator[tuple[int, str]]:
    """A real SMTP server answering 250 to every message, in a process of its own (as a
    relay is on a machine of its own): its port and what it is. `relay` "postfix" is Postfix's
    smtp-sink (C, built to test mail senders: little of the two cores goes to it), falling
    back to "aiosmtpd" (Python, which takes about half a millisecond a message here)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    sink = postfix_smtp_sink(home) if relay == "postfix" else None
    if sink is not None:
        env = {**os.environ, "LD_LIBRARY_PATH": str(sink.parents[2] / "usr" / "lib" / "postfix")}
        as_user = ["-u", "nobody"] if os.geteuid() == 0 else []
        command = [str(sink), *as_user, f"127.0.0.1:{port}", "256"]
        what = "postfix smtp-sink"
    else:
        env = dict(os.environ)
        command = [
            sys.executable,
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            f"127.0.0.1:{port}",
            "-c",
            "aiosmtpd.handlers.Sink",
        ]
        what = "aiosmtpd"
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for_port(port, server)
        yield port, what
    finally:
        server.terminate()
        server.wait(10)


def email(settings: Settings, *, orders: int, relay: str = "postfix") -> dict[str, Any]:
    from connectors.email import SmtpMailer
    from oms.notify import Notifier

    with (
        scratch_topics(settings, "bench-notify") as scratch,
        smtp_server(relay, settings.home) as (port, server),
    ):
        scratch = scratch.model_copy(
            update={
                "notify_quiet_hours": "",
                "notify_rate_limit": 1000,
                "smtp_from": "bench <bench@orders.example>",
                "notify_preferences_file": scratch.home / "bench-preferences.json",
            }
        )
        publisher = Publisher(scratch)
        for event in order_events(orders, run=f"n{int(time.time())}"):
            publisher.publish(scratch.topics.orders, event)
        publisher.flush()
        mailer = SmtpMailer(host="127.0.0.1", port=port, starttls=False, timeout_s=30)
        notifier = Notifier(scratch, mailer=mailer)
        started = time.perf_counter()
        stats = notifier.run(until=lambda n: n.stats.sent + n.stats.failed >= orders)
        elapsed = time.perf_counter() - started
    return {
        "orders": orders,
        "emails_sent": stats.sent,
        "emails_failed": stats.failed,
        "in_flight": scratch.notify_in_flight,
        "smtp_server": server,
        "seconds": round(elapsed, 2),
        "emails_per_s": round(stats.sent / elapsed, 1),
        "target_per_s": TARGET_PER_S,
    }


@contextmanager
def webhook_receiver(secret: str, out: Path) -> Iterator[int]:
    """bench/webhook_receiver.py in a process of its own; its port."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.webhook_receiver", str(port), secret, str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, server)
        yield port
    finally:
        server.terminate()
        server.wait(10)


def _wait_for_port(port: int, server: Any) -> None:
    import socket

    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"the bench's server on port {port} did not start") from None
            time.sleep(0.05)


def _received(out: Path) -> list[tuple[str, float, float, bool]]:
    """The receiver's lines: (webhook id, arrived, recorded, verified)."""
    if not out.exists():
        return []
    rows = []
    for line in out.read_text(encoding="utf-8").splitlines():
        webhook_id, arrived, recorded, good = line.split(" ")
        rows.append((webhook_id, float(arrived), float(recorded), good == "1"))
    return rows


def _accepted(n: int, *, run: str) -> Event:
    """One order's OrderAcceptedByStore, recorded now (its order id spreads the partitions)."""
    now = utc_now()
    order_id = f"{run}-{n}"
    return OrderAcceptedByStore(
        event_id=f"a-{order_id}",
        sequence=2,
        occurred_at=now,
        recorded_at=now,
        correlation_id=order_id,
        actor=COOK,
        order_id=order_id,
        channel="webshop",
        external_id=f"{run}{n:06d}",
        location="S01",
        estimated_ready_at=now + timedelta(minutes=20),
    )


def webhooks(settings: Settings, *, events: int, rate: float, seconds: float) -> dict[str, Any]:
    """Deliveries per second of a backlog of `events`, then the latency from the log to the
    receiver of events written at `rate` a second for `seconds`."""
    import secrets
    import tempfile
    import threading
    import uuid
    from datetime import UTC, datetime

    from bench.pipeline import percentile
    from events.webhook_subscriptions import Subscription
    from infra.keystore import MasterKey
    from oms.webhooks import WebhookSender, save, seal_secret, start_at
    from streams.webhook_delivery import new_secret

    secret = new_secret(secrets.token_bytes(32))
    with (
        scratch_topics(settings, "bench-webhooks") as scratch,
        tempfile.TemporaryDirectory() as scratch_dir,
    ):
        out = Path(scratch_dir) / "received.txt"
        with webhook_receiver(secret, out) as port:
            master = MasterKey.from_settings(scratch)
            save(
                scratch,
                Subscription(
                    id="bench",
                    url=f"http://127.0.0.1:{port}/hooks",
                    sealed_secret=seal_secret(master, "bench", secret),
                    start=start_at(scratch, mark=uuid.uuid4().hex, offset=0),
                    changed_at=datetime.now(UTC),
                ),
            )
            run = f"w{int(time.time())}"
            publisher = Publisher(scratch)
            for n in range(events):
                publisher.publish(scratch.topics.orders, _accepted(n, run=run))
            publisher.flush()

            stop = threading.Event()
            sender = WebhookSender(scratch)
            thread = threading.Thread(target=sender.run, kwargs={"until": lambda _: stop.is_set()})
            started = time.perf_counter()
            started_wall = time.time()
            thread.start()
            try:
                deadline = time.monotonic() + max(60.0, events / 50)
                while len(backlog := _received(out)) < events and time.monotonic() < deadline:
                    time.sleep(0.05)
                drained = time.perf_counter() - started
                first_at = {}
                for webhook_id, arrived, _, _ in backlog:
                    first_at.setdefault(webhook_id, arrived)
                last = max(first_at.values(), default=started_wall)

                # Then a steady rate: each event's time from its write to its receipt.
                live = f"{run}l"
                interval, sent = 1.0 / rate, 0
                begin = time.monotonic()
                while time.monotonic() - begin < seconds:
                    publisher.publish(scratch.topics.orders, _accepted(sent, run=live))
                    publisher.poll(0)
                    sent += 1
                    time.sleep(max(0.0, begin + sent * interval - time.monotonic()))
                publisher.flush()
                deadline = time.monotonic() + 30
                while len(_received(out)) < events + sent and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                stop.set()
                thread.join(30)
            rows = _received(out)
    unique = {webhook_id for webhook_id, *_ in rows}
    verified = all(good for *_, good in rows)
    latencies = sorted(
        (arrived - recorded) * 1000 for _, arrived, recorded, _ in rows[len(backlog) :]
    )
    return {
        "backlog_events": events,
        "backlog_delivered": len(first_at),
        "backlog_seconds": round(last - started_wall, 2),
        "backlog_seconds_to_count": round(drained, 2),
        "deliveries_per_s": round(len(first_at) / max(last - started_wall, 1e-9), 1),
        "live_rate_per_s": rate,
        "live_events": sent,
        "live_delivered": len(latencies),
        "latency_p50_ms": round(percentile(latencies, 50), 1) if latencies else None,
        "latency_p99_ms": round(percentile(latencies, 99), 1) if latencies else None,
        "all_signatures_verified": verified,
        "distinct_webhook_ids": len(unique),
        "target_per_s": TARGET_PER_S,
    }


def run(
    *,
    orders: int = 5000,
    events: int = 5000,
    rate: float = 200.0,
    seconds: float = 10.0,
    relay: str = "postfix",
) -> dict[str, Any]:
    settings = get_settings()
    return {
        "email": email(settings, orders=orders, relay=relay),
        "webhooks": webhooks(settings, events=events, rate=rate, seconds=seconds),
    }


def report(figures: dict[str, Any]) -> list[str]:
    mail = figures["email"]
    verdict = "met" if mail["emails_per_s"] >= mail["target_per_s"] else "BELOW target"
    lines = [
        f"e-mail: {mail['emails_sent']:,} of {mail['orders']:,} sent in {mail['seconds']} s: "
        f"{mail['emails_per_s']:,.0f} messages/s (target >= {mail['target_per_s']:,.0f}/s: "
        f"{verdict}); every one answered 250 by the SMTP server ({mail['smtp_server']}; "
        f"OMS_NOTIFY_IN_FLIGHT={mail['in_flight']})",
    ]
    hooks = figures["webhooks"]
    verdict = "met" if hooks["deliveries_per_s"] >= hooks["target_per_s"] else "BELOW target"
    lines += [
        f"webhooks: {hooks['backlog_delivered']:,} of {hooks['backlog_events']:,} delivered in "
        f"{hooks['backlog_seconds']} s: {hooks['deliveries_per_s']:,.0f}/s (target >= "
        f"{hooks['target_per_s']:,.0f}/s: {verdict}); signatures verified: "
        f"{hooks['all_signatures_verified']}",
        f"webhooks at {hooks['live_rate_per_s']:,.0f} events/s: {hooks['live_delivered']:,} of "
        f"{hooks['live_events']:,} received, from the log to the receiver p50 "
        f"{hooks['latency_p50_ms']} ms, p99 {hooks['latency_p99_ms']} ms",
    ]
    return lines
