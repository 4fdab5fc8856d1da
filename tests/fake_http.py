"""The HTTP server the tests' fake platforms, carriers and sinks run on.

`http.server` listens with a backlog of 5 (`request_queue_size`). A wave quotes and buys
labels from 16 threads at once; past 5 waiting connections Linux answers the sixth client's
data with a reset ("Connection reset by peer"), which no real carrier's server does under
that load (measured: 76 resets in 5,000 requests from 64 threads at 5, none at 128). The
fakes listen like the real thing, so a test fails for the code under test, not the fake.
"""

from __future__ import annotations

from http.server import ThreadingHTTPServer


class FakeHttpServer(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True
