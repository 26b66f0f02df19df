"""Cutting a byte stream (TCP, TLS) into SIP messages.

On a stream the only message boundary is Content-Length, so it is mandatory
(RFC 3261 §18.3, §20.14). Between messages the peer may send CRLFs: RFC 3261 §7.5 says
to ignore them, and RFC 5626 §4.4.1 makes a double CRLF a keep-alive "ping" that must
be answered with a single CRLF "pong". `StreamFramer` counts pings in `.pings`; the
transport answers them.

Any framing error (missing, negative or conflicting Content-Length, a message over
`Limits.max_message`) leaves the stream position unknown: the connection must be
closed (RFC 4475 ncl, mcl01). The framer then stays failed.

The framer only looks at what framing needs (the end of the header section and the
Content-Length lines); `parse_message(data, stream=True)` does the rest.
"""

from __future__ import annotations

import re

from .errors import SIPParseError, bad_header
from .headers import parse_uint
from .message import DEFAULT_LIMITS, Limits

__all__ = ["StreamFramer"]

_FOLD_RE = re.compile(rb"\r\n[ \t]+")
# A Content-Length line, long or compact form, any case, SWS before the colon.
_CONTENT_LENGTH_RE = re.compile(rb"\r\n(?:content-length|l)[ \t]*:([^\r\n]*)", re.IGNORECASE)
_MAX_CONTENT_LENGTH = 2**32 - 1


class StreamFramer:
    """Incremental framer: `feed(data) -> list[bytes]`, one complete message per item.

    - `pings`: double-CRLF keep-alives received during the last `feed()` call; answer
      each with one CRLF (RFC 5626 §4.4.1). `total_pings` counts them all.
    - Errors: `feed()` raises `SIPParseError` when it cannot frame. If complete
      messages came before the error in the same call, they are returned first and
      the error is kept in `.error` and raised by the next `feed()`; a transport
      should check `.error` after delivering them and close the connection.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.pings = 0
        self.total_pings = 0
        self.error: SIPParseError | None = None
        self._buffer = bytearray()
        self._scan_from = 0  # where the search for CRLFCRLF resumes
        self._message_size: int | None = None  # known once the header section is seen
        self._crlf_run = 0  # CRLFs in a row between messages

    @property
    def buffered(self) -> int:
        """Octets received but not yet returned as a message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        if self.error is not None:
            raise self.error
        self.pings = 0
        self._buffer += data
        messages: list[bytes] = []
        try:
            while (message := self._next_message()) is not None:
                messages.append(message)
        except SIPParseError as err:
            if self._buffer[:4].upper() == b"SIP/":
                err = err.with_status(0)  # a response is never answered
            self.error = err
            self._buffer.clear()
            if not messages:
                raise err from None
        return messages

    def _next_message(self) -> bytes | None:
        buffer = self._buffer
        if self._message_size is None:
            if not self._skip_keepalives():
                return None
            self._message_size = self._frame()
            if self._message_size is None:
                return None
        if len(buffer) < self._message_size:
            return None
        message = bytes(buffer[: self._message_size])
        del buffer[: self._message_size]
        self._message_size = None
        self._scan_from = 0
        return message

    def _skip_keepalives(self) -> bool:
        """Drop CRLFs before a start line, counting CRLFCRLF pings; True if a message starts."""
        buffer = self._buffer
        while buffer[:2] == b"\r\n":
            del buffer[:2]
            self._crlf_run += 1
            if self._crlf_run == 2:
                self._crlf_run = 0
                self.pings += 1
                self.total_pings += 1
        if not buffer or buffer == b"\r":
            return False  # wait: a lone CR may be the start of the next CRLF
        self._crlf_run = 0
        return True

    def _frame(self) -> int | None:
        """The size of the message at the head of the buffer, None if not known yet."""
        buffer = self._buffer
        limit = self.limits.max_message
        end = buffer.find(b"\r\n\r\n", self._scan_from)
        if end < 0:
            if len(buffer) > limit:
                raise SIPParseError(f"Message too large (limit {limit} octets)", 513)
            self._scan_from = max(0, len(buffer) - 3)
            return None
        body_start = end + 4
        if body_start > limit:
            raise SIPParseError(f"Message too large (limit {limit} octets)", 513)
        size = body_start + _content_length(bytes(buffer[:end]))
        if size > limit:
            raise SIPParseError(f"Message too large (limit {limit} octets)", 513)
        return size


def _content_length(head: bytes) -> int:
    """The one Content-Length of a header section (same rules as `parse_message`)."""
    if b"\r\n " in head or b"\r\n\t" in head:
        head = _FOLD_RE.sub(b" ", head)
    values = _CONTENT_LENGTH_RE.findall(head)
    if not values:
        raise bad_header("Content-Length", "missing (mandatory on stream transports)")
    lengths = {
        parse_uint(value.decode("latin-1"), header="Content-Length", maximum=_MAX_CONTENT_LENGTH)
        for value in values
    }
    if len(lengths) > 1:
        raise bad_header("Content-Length", "conflicting values")
    return lengths.pop()
