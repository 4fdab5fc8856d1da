"""A real SMTP server for tests (aiosmtpd on a free local port) that keeps what it is given,
and answers the way a test tells it to (a 4xx or a 5xx for the next messages)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Received:
    recipients: list[str]
    message: EmailMessage


@dataclass
class RecordingHandler:
    """Keeps each message; `answers` are given, one per message, before any is kept ("accept":
    keep that one)."""

    received: list[Received] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    delay_s: float = 0.0  # each message takes this long to be taken (a kill lands mid-run)
    peers: list[Any] = field(default_factory=list)  # the client's (host, port) per message
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        with self.lock:
            answer = self.answers.pop(0) if self.answers else "accept"
            if answer != "accept":
                return answer
            self.peers.append(session.peer)
            parsed = message_from_bytes(envelope.content, policy=policy.default)
            assert isinstance(parsed, EmailMessage)
            self.received.append(Received(list(envelope.rcpt_tos), parsed))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def smtp_server() -> Iterator[tuple[RecordingHandler, int]]:
    handler = RecordingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()
