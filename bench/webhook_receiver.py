"""The bench's webhook receiver, in a process of its own (as a subscriber is on a machine of
its own): `python -m bench.webhook_receiver PORT SECRET OUT`. It checks each delivery's
Standard Webhooks signature, answers 204 (401 when it does not verify), and appends one line
per delivery to OUT: the webhook id, when it arrived (Unix seconds), when its event was
recorded (the body's `timestamp`) and whether the signature verified."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from streams.webhook_delivery import verify


def serve(port: int, secret: str, out: str) -> None:
    log = open(out, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - for the process's life

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # (keep-alive, as a subscriber's server would)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            arrived = time.time()
            body = self.rfile.read(int(self.headers["content-length"]))
            webhook_id = self.headers.get("webhook-id", "")
            try:
                good = verify(
                    secret,
                    webhook_id=webhook_id,
                    timestamp=int(self.headers.get("webhook-timestamp", "0")),
                    body=body,
                    header=self.headers.get("webhook-signature", ""),
                )
                recorded = datetime.fromisoformat(json.loads(body)["timestamp"]).timestamp()
            except (ValueError, KeyError):
                good, recorded = False, 0.0
            log.write(f"{webhook_id} {arrived:.6f} {recorded:.6f} {int(good)}\n")
            self.send_response(204 if good else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # (http.server listens with 5; a burst past it is reset)

    Server(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2], sys.argv[3])
