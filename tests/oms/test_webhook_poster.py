"""The webhook sender's HTTP client (oms.webhooks.Poster) against a real local HTTP server:
connections kept alive between deliveries, a connection the receiver closed while idle
replaced without losing the delivery, a 3xx answered rather than followed, and every way of
not answering a failed attempt rather than an exception."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from oms.webhooks import Poster
from tests.fake_http import FakeHttpServer


class Receiver:
    def __init__(self) -> None:
        self.clients: list[tuple[str, int]] = []  # per request, the client's address
        self.paths: list[str] = []
        self.close_after_answer = False  # drop the connection, without saying so
        self.body_size = 0


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    seen = Receiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["content-length"]))
            seen.clients.append(self.client_address)
            seen.paths.append(self.path)
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "/elsewhere")
                body = b""
            else:
                self.send_response(204 if seen.body_size == 0 else 200)
                body = b"x" * seen.body_size
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            if seen.close_after_answer:
                self.close_connection = True

        def log_message(self, *_args: object) -> None:
            pass

    server = FakeHttpServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield seen, int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def poster() -> Iterator[Poster]:
    kept = Poster()
    yield kept
    kept.close()


def post(poster: Poster, port: int, path: str = "/hooks") -> tuple[int | None, str]:
    return poster(
        f"http://127.0.0.1:{port}{path}",
        b'{"type":"order.accepted"}',
        {"content-type": "application/json", "webhook-id": "msg_1"},
        timeout_s=5,
    )


def test_deliveries_to_one_origin_share_one_kept_alive_connection(
    receiver: tuple[Receiver, int], poster: Poster
) -> None:
    seen, port = receiver
    answers = [post(poster, port) for _ in range(20)]
    assert answers == [(204, "")] * 20
    assert len(seen.clients) == 20
    assert len(set(seen.clients)) == 1


def test_a_connection_the_receiver_closed_while_idle_is_replaced_and_the_delivery_made(
    receiver: tuple[Receiver, int], poster: Poster
) -> None:
    seen, port = receiver
    seen.close_after_answer = True
    assert post(poster, port) == (204, "")
    assert post(poster, port) == (204, "")
    assert len(seen.clients) == 2  # each delivered once
    assert len(set(seen.clients)) == 2  # the second on a new connection


def test_a_redirect_is_an_answer_and_is_not_followed(
    receiver: tuple[Receiver, int], poster: Poster
) -> None:
    seen, port = receiver
    status, _ = post(poster, port, "/moved")
    assert status == 302
    assert seen.paths == ["/moved"]


def test_a_long_answer_is_cut_short_and_its_connection_not_kept(
    receiver: tuple[Receiver, int], poster: Poster
) -> None:
    seen, port = receiver
    seen.body_size = Poster.READ_AT_MOST + 10
    status, said = post(poster, port)
    assert (status, len(said)) == (200, 500)
    seen.body_size = 0
    assert post(poster, port) == (204, "")
    assert len(set(seen.clients)) == 2


def test_no_answer_is_a_failed_attempt_with_the_reason(poster: Poster) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])  # nobody listens once it is closed
    status, said = post(poster, port)
    assert status is None
    assert "refused" in said.lower()
    status, said = poster("ftp://example.com/x", b"{}", {}, timeout_s=1)
    assert status is None
    assert "not an http(s) URL" in said
