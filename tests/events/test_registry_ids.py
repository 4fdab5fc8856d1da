"""Schema ids from a Confluent-compatible registry (a fake registry over HTTP on loopback)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from events.codec import AvroCodec, UnknownSchemaId
from tests.factories import received
from tests.fake_http import FakeHttpServer


class FakeRegistry(BaseHTTPRequestHandler):
    """The two calls the codec makes: register a subject version, fetch a schema by id."""

    schemas: dict[int, str] = {}
    subjects: dict[str, int] = {}

    def _reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        match = re.match(r"/subjects/([^/]+)/versions", self.path)
        length = int(self.headers["Content-Length"])
        body = json.loads(self.rfile.read(length))
        assert match, self.path
        subject = match.group(1)
        if subject not in self.subjects:
            schema_id = 100 + len(self.schemas)
            self.schemas[schema_id] = body["schema"]
            self.subjects[subject] = schema_id
        self._reply(200, {"id": self.subjects[subject]})

    def do_GET(self) -> None:  # noqa: N802
        match = re.match(r"/schemas/ids/(\d+)", self.path)
        schema_id = int(match.group(1)) if match else -1
        if schema_id not in self.schemas:
            self._reply(404, {"error_code": 40403, "message": "Schema not found"})
        else:
            self._reply(200, {"schema": self.schemas[schema_id], "schemaType": "AVRO"})

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def registry_url() -> Iterator[str]:
    FakeRegistry.schemas, FakeRegistry.subjects = {}, {}
    server = FakeHttpServer(("127.0.0.1", 0), FakeRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_ids_come_from_the_registry_and_messages_round_trip(registry_url: str) -> None:
    codec = AvroCodec.for_registry(registry_url)
    order = received()
    data = codec.encode(order)
    assert int.from_bytes(data[1:5], "big") == 100
    assert FakeRegistry.subjects == {"io.orderstream.events.OrderReceived": 100}
    assert AvroCodec.for_registry(registry_url).decode(data) == order  # a fresh codec fetches it


def test_an_id_the_registry_does_not_know_is_a_typed_error(registry_url: str) -> None:
    with pytest.raises(UnknownSchemaId, match="unknown schema id 555"):
        AvroCodec.for_registry(registry_url).decode(b"\x00\x00\x00\x02\x2bxx", where="t/0/1")
