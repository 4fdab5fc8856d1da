"""The local fakes of SF Express and JD Logistics (tests/connectors/carriers) in a process of
their own, as carriers are on machines of their own: `python -m bench.carrier_fakes` prints
their two URLs on one line and serves until it is terminated."""

from __future__ import annotations

import signal
import sys
import threading

from tests.connectors.carriers.fake_jdl import fake_jdl
from tests.connectors.carriers.fake_sf import fake_sf


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with fake_sf() as sf, fake_jdl() as jd:
        print(sf.url, jd.url, flush=True)
        stop.wait()
    sys.exit(0)


if __name__ == "__main__":
    main()
