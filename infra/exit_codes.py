"""How a long-running `oms` process ends, for whatever supervises it (systemd, supervisord,
Kubernetes): one exit code per thing the supervisor should do next (docs/operations.md has the
table and a systemd unit). Where BSD's sysexits.h has a number for the case, it is that one, so
a supervisor set up for other daemons reads them the same way.
"""

from __future__ import annotations

import signal
import sys
import traceback
from collections.abc import Callable
from enum import IntEnum
from typing import NoReturn


class ExitCode(IntEnum):
    STOPPED = 0  # stopped on request (SIGTERM, SIGINT), or its job is done: leave it stopped
    BUG = 1  # an error nobody planned for: restart it, and read the traceback it printed
    USAGE = 2  # the command line is wrong (click's own code): fix the command
    TEMPFAIL = 75  # EX_TEMPFAIL: Kafka or ClickHouse stayed unavailable too long: restart it
    CONFIG = 78  # EX_CONFIG: settings, credentials or the database's tables are wrong: don't


def run_until_stopped(
    name: str, main: Callable[[], None], *, exit_code: Callable[[Exception], ExitCode]
) -> NoReturn:
    """Run `main` and exit with the code for how it ended: SIGTERM is taken as SIGINT (both
    stop it, and clean-up runs as the exception unwinds), an exception as `exit_code` says.
    The reason goes to stderr in one line; a bug's traceback with it."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(ExitCode.STOPPED)
    except Exception as exc:
        code = exit_code(exc)
        if code == ExitCode.BUG:
            traceback.print_exc()
        print(f"{name}: {_kind(code)}: {exc}", file=sys.stderr)
        sys.exit(code)
    sys.exit(ExitCode.STOPPED)


def _kind(code: ExitCode) -> str:
    return {
        ExitCode.TEMPFAIL: "gave up for now (exit 75, try again later)",
        ExitCode.CONFIG: "configuration error (exit 78, restarting will not help)",
    }.get(code, f"failed (exit {int(code)})")
