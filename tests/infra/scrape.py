"""Reading a process's /metrics, /livez and /readyz as Prometheus would, for the tests."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """The status and body of a GET (an HTTP error is an answer too)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of the exposition at `url`, by name and labels."""
    status, body = get(url, headers)
    assert status == 200, (status, body[:500])
    return parse(body.decode())


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled series not moved yet (Prometheus shows none)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def first_answer(url: str, *, timeout_s: float = 60.0) -> tuple[int, Any]:
    """The first answer of a server that is starting (connection refused until it listens)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status, body = get(url)
            return status, json.loads(body)
        except (ConnectionError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def wait_for_status(url: str, status: int, *, timeout_s: float = 90.0) -> Any:
    """Poll until `url` answers `status`; its body."""
    deadline = time.monotonic() + timeout_s
    while True:
        got, body = first_answer(url, timeout_s=timeout_s)
        if got == status:
            return body
        assert time.monotonic() < deadline, f"{url} still answers {got}: {body}"
        time.sleep(0.1)
