"""The bounds of what a channel may send, judged at the edge before anything is converted, so
that no input makes parsing slow, deep or fail with anything but `PayloadRejected`:

- a body of at most `MAX_BODY_BYTES`: the broker's message size (`infra.kafka`) less
  `DEAD_LETTER_ROOM`, so a refused body always fits on the dead-letter topic. A larger body is
  dead-lettered cut to that size, its full size and SHA-256 digest in the reason
  (`dead_letter`), so what was refused can still be identified and asked for again;
- JSON nested at most `MAX_DEPTH` deep, with no number of more than `MAX_DIGITS` digits in a
  row: judged by one linear scan of the bytes before the parser sees them (`check_json`);
- a text field of at most `MAX_TEXT_CHARS` characters (the payload models' `str_max_length`),
  the refusal naming the field;
- an order placed or changed within a window around its receipt (`check_times`, the setting
  `OMS_INTAKE_WINDOW`): a channel's clock may be off, not its calendar.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from itertools import accumulate

from confluent_kafka import KafkaError, KafkaException

from connectors.rejections import PayloadRejected
from events.models import DeadLetter, OrderModified, OrderReceived
from infra.kafka import MAX_MESSAGE_BYTES

# The dead letter around a body: its id, source, source_ref (also the message key), reason,
# time and the Avro and Kafka record framing take a few hundred bytes; the reason and the
# request id are cut to the sizes below, which keeps the whole well under this.
DEAD_LETTER_ROOM = 16_384
MAX_BODY_BYTES = MAX_MESSAGE_BYTES - DEAD_LETTER_ROOM
MAX_REASON_CHARS = 2_000  # at most 4 bytes each in UTF-8: 8,000 bytes
MAX_SOURCE_REF_CHARS = 200
# A kept header (a signature: 684 characters for RSA-4096 in base64, a timestamp), kept as
# ASCII (what is not becomes "?"); at most four are kept (Connector.kept_headers): 2,800 bytes.
MAX_HEADER_CHARS = 700
MAX_DEPTH = 32
MAX_DIGITS = 40  # a 64-bit amount has 19; a double printed in full 17 significant digits
MAX_TEXT_CHARS = 1_000

# A JSON string, or, unterminated, the rest of the input: it always matches once it starts at
# a quote, and consumes what it matched, so removing strings is one pass over the bytes.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_LONG_NUMBER = re.compile(rb"\d{%d,}" % (MAX_DIGITS + 1))
# Digits to "0", the rest to " ": a run of too many digits is then one substring search
# (a tenth of the regular expression's time on a 600-byte order).
_DIGITS_ONLY = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_DIGIT_RUN = b"0" * (MAX_DIGITS + 1)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = [0] * 256
_DEPTH_STEP[ord("[")] = _DEPTH_STEP[ord("{")] = 1
_DEPTH_STEP[ord("]")] = _DEPTH_STEP[ord("}")] = -1


def check_json(raw: bytes) -> None:
    """Refuse JSON nested deeper than `MAX_DEPTH` or holding a number of more than
    `MAX_DIGITS` digits, in time linear in its size and before it is parsed."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH and _DIGIT_RUN not in raw.translate(
        _DIGITS_ONLY
    ):
        return  # fewer with the strings counted, fewer without them: most payloads stop here
    bare = _STRING.sub(b'""', raw)  # brackets and digits inside strings are text
    if long_number := _LONG_NUMBER.search(bare):
        size = len(long_number.group())
        raise PayloadRejected(f"a number of {size} digits: at most {MAX_DIGITS} are read")
    if bare.count(b"[") + bare.count(b"{") <= MAX_DEPTH:
        return  # too few brackets to nest that deep
    brackets = bare.translate(None, _NOT_BRACKETS)
    if max(accumulate(map(_DEPTH_STEP.__getitem__, brackets))) > MAX_DEPTH:
        raise PayloadRejected(f"nested more than {MAX_DEPTH} deep")


def check_times(
    event: OrderReceived | OrderModified,
    *,
    received_at: datetime,
    window: tuple[timedelta, timedelta],
) -> None:
    """Refuse an order placed or changed more than `window[0]` before its receipt or more than
    `window[1]` after it, naming the field. A requested time (a booking) is ahead by design: it
    may be as far ahead of the receipt as the window reaches back."""
    before, after = window
    earliest, latest = received_at - before, received_at + after
    for field, moment, last in (
        ("placed_at", event.placed_at, latest),
        ("occurred_at", event.occurred_at, latest),
        ("requested_at", event.requested_at, received_at + before),
    ):
        if moment is not None and not earliest <= moment <= last:
            raise PayloadRejected(
                f"{moment.isoformat()} is not between {earliest.isoformat(timespec='seconds')} "
                f"and {last.isoformat(timespec='seconds')} (received at "
                f"{received_at.isoformat(timespec='seconds')}; OMS_INTAKE_WINDOW)",
                field=field,
            )


def dead_letter(
    *,
    source: str,
    source_ref: str,
    reason: str,
    raw: bytes,
    size: int | None = None,
    sha256: str | None = None,
    headers: Mapping[str, str] | None = None,
    replayable: bool = True,
) -> DeadLetter:
    """A dead letter that fits on the dead-letter topic whatever it was given. A body over
    `MAX_BODY_BYTES` is cut to that size, its full size and SHA-256 digest in the reason; a
    caller that did not keep all of a body (an HTTP request read in chunks) gives the `size`
    and `sha256` of all of it. The reason, the source reference and each kept header are cut to
    their bounds."""
    note = ""
    if size is not None and size > len(raw) or len(raw) > MAX_BODY_BYTES:
        size = len(raw) if size is None else size
        sha256 = sha256 or hashlib.sha256(raw).hexdigest()
        raw = raw[:MAX_BODY_BYTES]
        note = f" [body of {size:,} bytes, sha256 {sha256}; its first {len(raw):,} kept]"
    return DeadLetter.of(
        source=source,
        source_ref=shorten(source_ref, MAX_SOURCE_REF_CHARS),
        reason=shorten(reason, MAX_REASON_CHARS - len(note)) + note,
        raw=raw,
        headers={name: _ascii(value, MAX_HEADER_CHARS) for name, value in (headers or {}).items()},
        replayable=replayable,
    )


def _ascii(text: str, most: int) -> str:
    """A header value as kept: ASCII, what is not (aiohttp's surrogates for bytes that are not
    UTF-8, too) as "?", cut to `most` characters."""
    return shorten(text.encode("ascii", "replace").decode(), most)


def too_large_for_kafka(exc: KafkaException) -> bool:
    """Whether a `produce` was refused because the message is over `MAX_MESSAGE_BYTES`: the
    event a connector made of a body within the limit can still be larger than the body."""
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and error.code() == KafkaError.MSG_SIZE_TOO_LARGE


def check_size(raw: bytes, *, what: str = "body") -> None:
    """Refuse a payload over `MAX_BODY_BYTES` (a file's line, a polled page's order), which
    could not be kept on the dead-letter topic whole."""
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadRejected(
            f"a {what} of {len(raw):,} bytes: at most {MAX_BODY_BYTES:,} are taken"
        )


def shorten(text: str, size: int) -> str:
    """`text` in at most `size` characters, encodable as UTF-8 whatever it holds (a header's
    bytes that were not UTF-8 come as surrogates)."""
    text = text.encode("utf-8", "replace").decode()
    return text if len(text) <= size else f"{text[: size - 1]}…"
