"""Fakes of the staff alerts' sinks for tests: a WeCom group robot (one local HTTP server that
checks the key, the message type and its size as WeCom documents them, and answers in WeCom's
format) and a receipt printer (a real TCP server on a free port that keeps the bytes of each
connection: one connection, one ticket)."""

from __future__ import annotations

import contextlib
import json
import socketserver
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from connectors.wecom_bot import MARKDOWN_MAX, TEXT_MAX
from tests.fake_http import FakeHttpServer

ROBOT_KEY = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"


@dataclass
class FakeRobot:
    url: str = ""
    keys: set[str] = field(default_factory=lambda: {ROBOT_KEY})
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (key, body)
    answer_next: list[int] = field(default_factory=list)  # errcodes to answer, in turn
    refused: list[str] = field(default_factory=list)  # why each refused request was refused
    delay_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str, body: bytes) -> dict[str, Any]:
        parsed = urllib.parse.urlsplit(path)
        key = urllib.parse.parse_qs(parsed.query).get("key", [""])[0]
        if parsed.path != "/cgi-bin/webhook/send":
            return self._refuse(404, f"path {parsed.path}")
        if key not in self.keys:
            return self._refuse(93000, "invalid webhook url")
        try:
            message = json.loads(body)
            kind = message["msgtype"]
            content = message[kind]["content"]
        except (ValueError, KeyError, TypeError):
            return self._refuse(40008, "invalid message type")
        limit = {"markdown": MARKDOWN_MAX, "text": TEXT_MAX}.get(kind)
        if limit is None:
            return self._refuse(40008, f"invalid message type {kind}")
        if len(content.encode()) > limit:
            return self._refuse(40058, f"content exceed max length {limit}")
        with self.lock:
            if self.answer_next:
                code = self.answer_next.pop(0)
                return {"errcode": code, "errmsg": f"fake error {code}, key {key}"}
            self.messages.append((key, message))
        time.sleep(self.delay_s)
        return {"errcode": 0, "errmsg": "ok"}

    def _refuse(self, code: int, why: str) -> dict[str, Any]:
        self.refused.append(why)
        return {"errcode": code, "errmsg": why}


@contextmanager
def fake_robot() -> Iterator[FakeRobot]:
    robot = FakeRobot()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            raw = json.dumps(robot.answer(self.path, body)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a killed client
                self.wfile.write(raw)

        def log_message(self, *args: object) -> None:
            pass

    server = FakeHttpServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    robot.url = f"http://127.0.0.1:{server.server_address[1]}/cgi-bin/webhook/send"
    try:
        yield robot
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class FakePrinter:
    address: str = ""
    tickets: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def fake_printer() -> Iterator[FakePrinter]:
    """A raw printing port (as port 9100) on a free local port."""
    printer = FakePrinter()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            chunks = []
            while chunk := self.request.recv(65536):
                chunks.append(chunk)
            with printer.lock:
                printer.tickets.append(b"".join(chunks))

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    printer.address = f"127.0.0.1:{server.server_address[1]}"
    try:
        yield printer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
