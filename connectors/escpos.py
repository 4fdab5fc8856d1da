"""A kitchen ticket for an ESC/POS receipt printer, sent raw over TCP (port 9100, "JetDirect").

The ticket: ESC @ (initialise), FS & (Chinese character mode, for printers sold in China), the
title centred at double size (ESC a 1, GS ! 0x11), then the order's details and lines left
aligned at normal size, fed (ESC d n) and partly cut (GS V 66 0). Text is GB18030, the
encoding of Chinese printers' character mode (ASCII is itself in it).

A raw printer port takes bytes and answers nothing (many keep the connection open after the
ticket, so waiting for it to close would time out): a ticket counts as printed once every
byte was handed to the connection and its sending side was shut without error. A refused or
timed-out connection is a `TransientFailure` (tried again); a printer cannot be asked whether
it printed, so after a crash between a send and its record, one ticket may be printed twice.
"""

from __future__ import annotations

import socket
from datetime import tzinfo

from connectors.outbound import TransientFailure
from connectors.staff_messages import TITLES, line_text, mode_text, shipment_lines
from events.staff_alerts import AlertKind, StaffAlert

ESC, GS, FS = b"\x1b", b"\x1d", b"\x1c"
INIT = ESC + b"@"
CHINESE = FS + b"&"
CUT = GS + b"V" + bytes([66, 0])  # feed to the cutter, partial cut
ENCODING = "gb18030"


def align(n: int) -> bytes:
    """ESC a n: 0 left, 1 centre, 2 right."""
    return ESC + b"a" + bytes([n])


def size(n: int) -> bytes:
    """GS ! n: width multiplier - 1 in the high nibble, height's in the low (0x11: double)."""
    return GS + b"!" + bytes([n])


def feed(lines: int) -> bytes:
    return ESC + b"d" + bytes([lines])


def text(line: str) -> bytes:
    return line.encode(ENCODING) + b"\n"


def kitchen_ticket(alert: StaffAlert, *, zone: tzinfo) -> bytes:
    """The bytes of one ticket: a new order, or a parcel of the store's in trouble."""
    if alert.kind is AlertKind.SHIPMENT_EXCEPTION:
        details = shipment_lines(alert, zone=zone)[1:]
    else:
        details = [f"{alert.channel} #{alert.external_id}"]
        if alert.mode is not None:
            details.append(mode_text(alert))
        if alert.due_at is not None:
            details.append(f"取餐时间 {alert.due_at.astimezone(zone):%m-%d %H:%M}")
    ticket = [
        INIT,
        CHINESE,
        align(1),
        size(0x11),
        text(f"{TITLES[alert.kind]} #{alert.external_id}"),
    ]
    ticket += [size(0), align(0), *(text(d) for d in details), text("-" * 32)]
    ticket += [size(0x01), *(text(line_text(line)) for line in alert.lines), size(0)]
    ticket += [text("-" * 32), feed(4), CUT]
    return b"".join(ticket)


class ReceiptPrinter:
    """One printer's raw port (`host:port`)."""

    name = "printer"

    def __init__(self, *, address: str, timeout_s: float = 5.0) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port, self.timeout_s = host.strip("[]"), int(port), timeout_s

    def print(self, ticket: bytes) -> str:
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout_s) as conn:
                conn.sendall(ticket)
                conn.shutdown(socket.SHUT_WR)
        except (TimeoutError, OSError) as exc:
            raise TransientFailure(f"printer {self.host}:{self.port}: {exc}") from exc
        return f"{len(ticket)} bytes to {self.host}:{self.port}"
