"""SIP messages: lazy parsing, line-level editing, byte-exact forwarding.

`parse_message()` does the least a proxy always needs (RFC 3261 §7): it finds the
start line, the header lines (unfolding continuation lines) and frames the body by
Content-Length (§18.3). Nothing else is parsed until asked for: each structured header
(`vias`, `from_`, `cseq`, …) is parsed on first access and cached on the instance.

Editing works on header *lines* (`prepend`, `append`, `set`, `remove`,
`pop_first_value`), never by re-serializing parsed structures, so a proxy forwards
every header it did not touch exactly as received (RFC 3261 §16.6; RFC 4475 wsinv).
`to_bytes()` returns the original octets while nothing was edited.

Header values are text: the header section is decoded as UTF-8 with
`surrogateescape`, so UTF-8 display names read naturally and any other octet
survives a parse/serialize round trip unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from .errors import SIPParseError, bad_header
from .headers import (
    HEADER_KEYS,
    CSeq,
    NameAddr,
    Via,
    canonical_name,
    header_key,
    is_token,
    parse_contact,
    parse_cseq,
    parse_name_addr,
    parse_route,
    parse_uint,
    parse_via,
    split_first_value,
    split_values,
)
from .uri import URI, SipURI, parse_uri

__all__ = [
    "DEFAULT_LIMITS",
    "KNOWN_METHODS",
    "REASON_PHRASES",
    "Limits",
    "Message",
    "Request",
    "Response",
    "default_reason",
    "make_response",
    "parse_message",
]

SIP_VERSION = "SIP/2.0"

# Methods of RFC 3261 and its extensions (3262, 3265/6665, 3311, 3428, 3515, 3903, 6086).
KNOWN_METHODS = frozenset(
    {
        "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE",
        "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
    }
)  # fmt: skip

# RFC 3261 §21 and later registrations (IANA "SIP Response Codes").
REASON_PHRASES: dict[int, str] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated",
    200: "OK", 202: "Accepted", 204: "No Notification",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily",
    305: "Use Proxy", 380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    412: "Conditional Request Failed", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 417: "Unknown Resource-Priority", 420: "Bad Extension",
    421: "Extension Required", 422: "Session Interval Too Small", 423: "Interval Too Brief",
    424: "Bad Location Information", 428: "Use Identity Header",
    429: "Provide Referrer Identity", 430: "Flow Failed", 433: "Anonymity Disallowed",
    436: "Bad Identity-Info", 437: "Unsupported Certificate",
    438: "Invalid Identity Header", 439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded", 469: "Bad Info Package", 470: "Consent Needed",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete",
    485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 489: "Bad Event", 491: "Request Pending",
    493: "Undecipherable", 494: "Security Agreement Required",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 555: "Push Notification Service Not Supported",
    580: "Precondition Failure",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable", 607: "Unwanted", 608: "Rejected",
}  # fmt: skip

_CLASS_PHRASES = {1: "Provisional", 2: "Success", 3: "Redirection", 4: "Client Error",
                  5: "Server Error", 6: "Global Failure"}  # fmt: skip


def default_reason(status: int) -> str:
    """The standard reason phrase of `status`, or a generic one for its class."""
    return REASON_PHRASES.get(status) or _CLASS_PHRASES.get(status // 100, "Unknown")


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one message may cost us (DESIGN.md: bounded everything)."""

    max_message: int = 65535  # octets, start line to end of body; beyond: 513
    max_headers: int = 128  # header lines (after unfolding); beyond: 400
    max_header_line: int = 8192  # characters in one unfolded line; beyond: 400 (414 start)


DEFAULT_LIMITS = Limits()
# For the octets of a message already parsed under the configured limits (`headers`).
_REPARSE_LIMITS = Limits(max_message=1 << 30, max_headers=1 << 30, max_header_line=1 << 30)

# Header fields a request or response must carry (RFC 3261 §8.1.1) and those that must
# appear once (§7.3.1: only comma-list fields may repeat; RFC 4475 multi01).
_MANDATORY = (("To", "to"), ("From", "from"), ("Call-ID", "call-id"), ("CSeq", "cseq"),
              ("Via", "via"))  # fmt: skip
_SINGLE = (("Call-ID", "call-id"), ("To", "to"), ("From", "from"), ("CSeq", "cseq"),
           ("Max-Forwards", "max-forwards"))  # fmt: skip

_FOLD_RE = re.compile(r"\r\n[ \t]+")
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE | re.ASCII)
_CALL_ID_RE = re.compile(r"[!-~]+")  # callid = word ["@" word]: visible ASCII, no LWS
_TAG_PARAM_RE = re.compile(r";[ \t]*tag[ \t]*=", re.IGNORECASE | re.ASCII)

_M = TypeVar("_M", bound="Message")

# Which parsed views each header feeds (the rest survive an edit of that header).
_VIEWS: dict[str, tuple[str, ...]] = {
    "call-id": ("call_id",),
    "cseq": ("cseq",),
    "via": ("vias", "top_via"),
    "from": ("from_",),
    "to": ("to",),
    "max-forwards": ("max_forwards",),
    "contact": ("contacts",),
    "route": ("routes",),
    "record-route": ("record_routes",),
    "content-length": ("content_length",),
    "content-type": ("content_type",),
    "require": ("require",),
    "proxy-require": ("proxy_require",),
    "supported": ("supported",),
}


def _check_line(name: str, value: str) -> None:
    """Refuse edits that would corrupt the framing (header injection)."""
    if not is_token(name):
        raise ValueError(f"invalid header name {name!r}")
    if "\r" in value or "\n" in value:
        raise ValueError(f"{name} header value must not contain CR or LF")


def _build_index(headers: list[tuple[str, str]]) -> dict[str, list[int]]:
    index: dict[str, list[int]] = {}
    for position, (name, _) in enumerate(headers):
        key = HEADER_KEYS.get(name) or header_key(name)
        positions = index.get(key)
        if positions is None:
            index[key] = [position]
        else:
            positions.append(position)
    return index


def _content_length(values: list[str]) -> int:
    """One non-negative Content-Length; repeated identical values are tolerated."""
    lengths = {parse_uint(value, header="Content-Length", maximum=2**32 - 1) for value in values}
    if len(lengths) > 1:
        raise bad_header("Content-Length", "conflicting values")  # RFC 4475 mcl01
    return lengths.pop()


class Message:
    """What requests and responses share: header lines, body, lazy structured views.

    `headers` is readable as a list of (name as received, value) pairs; change it only
    through the editing methods, which keep the name index, the cached views and the
    serialized form in step.
    """

    __slots__ = ("_body", "_headers", "_index", "_raw", "_views")
    is_request: ClassVar[bool]

    # (name as received, value after unfolding); None once `drop_parsed` let it go, to be
    # parsed again from `_raw` by whatever reads it next
    _headers: list[tuple[str, str]] | None
    _body: bytes
    _raw: bytes | None  # the serialized form, while it is current
    _index: dict[str, list[int]] | None  # header key → positions in `headers`
    # The structured views parsed so far, by name (`_VIEWS`). A dict rather than one
    # slot each: a copy or an edit touches only the views that exist, and a view's
    # first read is a look-up in the same dict in pure Python and compiled (mypyc).
    _views: dict[str, Any]

    def __init__(self, headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> None:
        lines = []
        for name, value in headers:
            _check_line(name, value)
            lines.append((name, value))
        self._headers = lines
        self._body = bytes(body)
        self._raw = None
        self._index = None
        self._views = {}

    # --- start line (subclasses) ---------------------------------------------------
    @property
    def start_line(self) -> str:
        raise NotImplementedError

    # --- header access ---------------------------------------------------------------
    @property
    def headers(self) -> list[tuple[str, str]]:
        headers = self._headers
        if headers is None:
            # Dropped by `drop_parsed` while `_raw` was current: the octets say the same.
            raw = self._raw
            assert raw is not None
            headers = self._headers = _parse(raw, _REPARSE_LIMITS, False).headers
        return headers

    @headers.setter
    def headers(self, headers: list[tuple[str, str]]) -> None:
        self._headers = headers

    def _keys(self) -> dict[str, list[int]]:
        index = self._index
        if index is None:
            index = self._index = _build_index(self.headers)
        return index

    def _positions(self, name: str) -> Sequence[int]:
        # Called for every header read (~90 times a proxied call): inlined look-ups.
        index = self._index
        if index is None:
            index = self._index = _build_index(self.headers)
        key = HEADER_KEYS.get(name)
        if key is None:
            key = header_key(name)
        return index.get(key, ())

    def get(self, name: str) -> str | None:
        """The first line's value of a header (any spelling, compact forms included)."""
        positions = self._positions(name)
        return self.headers[positions[0]][1] if positions else None

    def get_all(self, name: str) -> list[str]:
        """The value of every line of a header, in order."""
        headers = self.headers
        return [headers[position][1] for position in self._positions(name)]

    def values(self, name: str) -> list[str]:
        """Every comma-separated value of every line (empty list elements skipped)."""
        header = canonical_name(name)
        return [
            item
            for value in self.get_all(name)
            for item in split_values(value, header=header)
            if item
        ]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self._positions(name))

    def _first(self, name: str) -> str:
        positions = self._positions(name)
        if not positions:
            raise SIPParseError(f"Missing {name} header", header=name)
        return self.headers[positions[0]][1]

    # --- structured headers (parsed on first access) ---------------------------------
    @property
    def call_id(self) -> str:
        value: str | None = self._views.get("call_id")
        if value is None:
            value = self._views["call_id"] = self._parse_call_id()
        return value

    def _parse_call_id(self) -> str:
        value = self._first("Call-ID")
        if not _CALL_ID_RE.fullmatch(value):
            raise bad_header("Call-ID", "empty or malformed")
        return value

    @property
    def cseq(self) -> CSeq:
        value: CSeq | None = self._views.get("cseq")
        if value is None:
            value = self._views["cseq"] = self._parse_cseq()
        return value

    def _parse_cseq(self) -> CSeq:
        return parse_cseq(self._first("CSeq"))

    @property
    def vias(self) -> list[Via]:
        value: list[Via] | None = self._views.get("vias")
        if value is None:
            value = self._views["vias"] = self._parse_vias()
        return value

    def _parse_vias(self) -> list[Via]:
        return [via for value in self.get_all("Via") for via in parse_via(value)]

    @property
    def top_via(self) -> Via:
        value: Via | None = self._views.get("top_via")
        if value is None:
            value = self._views["top_via"] = self._parse_top_via()
        return value

    def _parse_top_via(self) -> Via:
        vias: list[Via] | None = self._views.get("vias")  # already parsed: reuse
        if vias:
            return vias[0]
        return parse_via(self._first("Via"))[0]

    @property
    def from_(self) -> NameAddr:
        value: NameAddr | None = self._views.get("from_")
        if value is None:
            value = self._views["from_"] = self._parse_from()
        return value

    def _parse_from(self) -> NameAddr:
        return parse_name_addr(self._first("From"), header="From")

    @property
    def to(self) -> NameAddr:
        value: NameAddr | None = self._views.get("to")
        if value is None:
            value = self._views["to"] = self._parse_to()
        return value

    def _parse_to(self) -> NameAddr:
        return parse_name_addr(self._first("To"), header="To")

    @property
    def max_forwards(self) -> int | None:
        views = self._views
        if "max_forwards" in views:
            value: int | None = views["max_forwards"]
            return value
        value = views["max_forwards"] = self._parse_max_forwards()
        return value

    def _parse_max_forwards(self) -> int | None:
        value = self.get("Max-Forwards")
        if value is None:
            return None
        return parse_uint(value, header="Max-Forwards", maximum=255)

    @property
    def contacts(self) -> list[NameAddr] | Literal["*"]:
        """All Contact addresses, or "*" (RFC 3261 §10.2.2), [] when absent."""
        value: list[NameAddr] | Literal["*"] | None = self._views.get("contacts")
        if value is None:
            value = self._views["contacts"] = self._parse_contacts()
        return value

    def _parse_contacts(self) -> list[NameAddr] | Literal["*"]:
        lines = self.get_all("Contact")
        addresses: list[NameAddr] = []
        for value in lines:
            parsed = parse_contact(value)
            if parsed == "*":
                if len(lines) > 1:
                    raise bad_header("Contact", "'*' mixed with addresses")
                return "*"
            addresses.extend(parsed)
        return addresses

    @property
    def routes(self) -> list[NameAddr]:
        value: list[NameAddr] | None = self._views.get("routes")
        if value is None:
            value = self._views["routes"] = self._parse_routes()
        return value

    def _parse_routes(self) -> list[NameAddr]:
        return [route for value in self.get_all("Route") for route in parse_route(value)]

    @property
    def record_routes(self) -> list[NameAddr]:
        value: list[NameAddr] | None = self._views.get("record_routes")
        if value is None:
            value = self._views["record_routes"] = self._parse_record_routes()
        return value

    def _parse_record_routes(self) -> list[NameAddr]:
        return [
            route
            for value in self.get_all("Record-Route")
            for route in parse_route(value, header="Record-Route")
        ]

    @property
    def content_length(self) -> int | None:
        views = self._views
        if "content_length" in views:
            value: int | None = views["content_length"]
            return value
        value = views["content_length"] = self._parse_content_length()
        return value

    def _parse_content_length(self) -> int | None:
        values = self.get_all("Content-Length")
        return _content_length(values) if values else None

    @property
    def content_type(self) -> str | None:
        views = self._views
        if "content_type" in views:
            value: str | None = views["content_type"]
            return value
        value = views["content_type"] = self._parse_content_type()
        return value

    def _parse_content_type(self) -> str | None:
        return self.get("Content-Type")

    @property
    def require(self) -> list[str]:
        value: list[str] | None = self._views.get("require")
        if value is None:
            value = self._views["require"] = self._parse_require()
        return value

    def _parse_require(self) -> list[str]:
        return self.values("Require")

    @property
    def proxy_require(self) -> list[str]:
        value: list[str] | None = self._views.get("proxy_require")
        if value is None:
            value = self._views["proxy_require"] = self._parse_proxy_require()
        return value

    def _parse_proxy_require(self) -> list[str]:
        return self.values("Proxy-Require")

    @property
    def supported(self) -> list[str]:
        value: list[str] | None = self._views.get("supported")
        if value is None:
            value = self._views["supported"] = self._parse_supported()
        return value

    def _parse_supported(self) -> list[str]:
        return self.values("Supported")

    # --- body --------------------------------------------------------------------------
    @property
    def body(self) -> bytes:
        return self._body

    @body.setter
    def body(self, body: bytes) -> None:
        self.set_body(body)

    def set_body(self, body: bytes, content_type: str | None = None) -> None:
        """Replace the body and set Content-Length (and Content-Type, if given)."""
        self._body = bytes(body)
        self.set("Content-Length", str(len(self._body)))
        positions = self._positions("Content-Length")
        for position in reversed(positions[1:]):
            del self.headers[position]
        if content_type is not None:
            self.set("Content-Type", content_type)
        self._edited()

    # --- validation ------------------------------------------------------------------
    def validate(self) -> None:
        """Check what a proxy relies on (RFC 3261 §8.1.1, §16.3); raise SIPParseError."""
        self._check_framing_headers()
        # Parse everything a proxy reads; each raises a named 400 on malformed input.
        self.call_id  # noqa: B018
        self.cseq  # noqa: B018
        self.from_  # noqa: B018
        self.to  # noqa: B018
        self.vias  # noqa: B018
        self.max_forwards  # noqa: B018
        self.contacts  # noqa: B018
        self.routes  # noqa: B018
        self.record_routes  # noqa: B018
        self.content_length  # noqa: B018

    def _check_framing_headers(self) -> None:
        """The mandatory headers are there, and those allowed once are there once."""
        keys = self._keys()
        missing = [name for name, key in _MANDATORY if key not in keys]
        if missing:
            noun = "header" if len(missing) == 1 else "headers"
            raise SIPParseError(f"Missing {', '.join(missing)} {noun}")
        for name, key in _SINGLE:
            if len(keys.get(key, ())) > 1:
                raise SIPParseError(f"Multiple {name} headers", header=name)

    # --- editing (by header line) --------------------------------------------------------
    def _edited(self, name: str | None = None, *, moved: bool = True) -> None:
        """Forget what the edit made stale: the serialized form, the name index when
        lines ``moved``, and the parsed views of header ``name`` (all of them when None).
        A proxy edits Via, Route, Record-Route and Max-Forwards on every hop; keeping
        the other views (From, To, Call-ID, CSeq…) spares re-parsing them."""
        self._raw = None
        if moved:
            self._index = None
        views = self._views
        if name is None:
            views.clear()
            return
        for view in _VIEWS.get(header_key(name), ()):
            views.pop(view, None)

    def prepend(self, name: str, value: str) -> None:
        """Insert a line before the first line of this header (or first of all headers)."""
        _check_line(name, value)
        positions = self._positions(name)
        self.headers.insert(positions[0] if positions else 0, (name, value))
        self._edited(name)

    def append(self, name: str, value: str) -> None:
        """Insert a line after the last line of this header (or after all headers)."""
        _check_line(name, value)
        positions = self._positions(name)
        self.headers.insert(positions[-1] + 1 if positions else len(self.headers), (name, value))
        self._edited(name)

    def set(self, name: str, value: str) -> None:
        """Replace the first line of this header, or append one if there is none."""
        _check_line(name, value)
        positions = self._positions(name)
        if positions:
            self.headers[positions[0]] = (name, value)
        else:
            self.headers.append((name, value))
        self._edited(name, moved=not positions)

    def remove(self, name: str) -> int:
        """Remove every line of this header; returns how many there were."""
        positions = self._positions(name)
        for position in reversed(positions):
            del self.headers[position]
        if positions:
            self._edited(name)
        return len(positions)

    def pop_first_value(self, name: str) -> str | None:
        """Drop the first comma value of the first line (the line, if it was the only one).

        This is how a proxy consumes a Route entry (RFC 3261 §16.4) or a UA strips its
        own Via from a response (§18.1.2) without re-writing the other values.
        """
        positions = self._positions(name)
        if not positions:
            return None
        position = positions[0]
        line_name, value = self.headers[position]
        first, rest = split_first_value(value, header=canonical_name(name))
        if rest:
            self.headers[position] = (line_name, rest)
        else:
            del self.headers[position]
        self._edited(name, moved=not rest)
        return first

    def drop_parsed(self) -> None:
        """Forget the name index and the parsed views, and the header lines too while the
        serialized form is current; whatever reads them again parses again. A message
        kept to the end of its transaction (up to 32 s) then holds its octets and a
        handful of objects instead of tens (a tuple and two strings per header line, an
        index list per header name, a view per header read): about 2 KiB less for each
        INVITE a call keeps, and less for every young garbage collection to walk."""
        self._index = None
        self._views = {}  # a new empty dict is not tracked by the collector
        if self._raw is not None:
            self._headers = None

    def _copy_into(self, new: _M) -> _M:
        """Make `new` (a fresh message of the same kind) an independent copy: the header
        list copied, the parsed views shared (they are never changed in place; an edit
        of either message drops its own)."""
        new.headers = list(self.headers)
        new._body = self._body
        new._raw = self._raw
        new._index = None  # rebuilt on first use: a copy is usually edited at once
        new._views = self._views.copy()
        return new

    def to_bytes(self) -> bytes:
        """The message on the wire: the original octets if nothing was edited."""
        raw = self._raw
        if raw is None:
            lines = [self.start_line]
            lines.extend(f"{name}: {value}" for name, value in self.headers)
            lines.extend(("", ""))
            raw = "\r\n".join(lines).encode("utf-8", "surrogateescape") + self._body
            self._raw = raw
        return raw


class Request(Message):
    __slots__ = ("_method", "_uri_raw")
    is_request = True

    _method: str
    _uri_raw: str

    def __init__(
        self,
        method: str,
        uri_raw: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        if not is_token(method):
            raise ValueError(f"invalid method {method!r}")
        _check_uri_text(uri_raw)
        self._method = method
        self._uri_raw = uri_raw

    @property
    def method(self) -> str:
        return self._method

    @property
    def uri_raw(self) -> str:
        """The Request-URI exactly as received."""
        return self._uri_raw

    @property
    def start_line(self) -> str:
        return f"{self._method} {self._uri_raw} {SIP_VERSION}"

    @property
    def uri(self) -> URI:
        value: URI | None = self._views.get("uri")
        if value is None:
            value = self._views["uri"] = self._parse_uri()
        return value

    def _parse_uri(self) -> URI:
        try:
            return parse_uri(self._uri_raw)
        except SIPParseError as err:
            raise SIPParseError(f"Bad Request-URI: {err.detail}", detail=err.detail) from None

    def copy(self) -> Request:
        """An independent copy (see `_copy_into`)."""
        return self._copy_into(Request(self._method, self._uri_raw))

    def set_uri(self, uri: str | URI) -> None:
        """Rewrite the Request-URI (RFC 3261 §16.6 step 2 / §16.12 strict routing)."""
        text = str(uri)
        _check_uri_text(text)
        self._uri_raw = text
        self._raw = None
        self._views.pop("uri", None)  # the only view of the start line

    def validate(self) -> None:
        super().validate()
        uri = self.uri
        # RFC 3261 §19.1.1 table: headers are not allowed in a Request-URI (RFC 4475
        # escruri); a proxy must never forward them nor turn them into header fields.
        if isinstance(uri, SipURI) and uri.headers:
            raise SIPParseError("Bad Request-URI: headers not allowed")
        if self.cseq.method != self._method:
            # RFC 4475 §3.1.2.18: an unknown method with a mismatch is better a 501.
            status = 400 if self._method in KNOWN_METHODS else 501
            raise SIPParseError("CSeq method does not match the request method", status,
                                header="CSeq")  # fmt: skip

    def __repr__(self) -> str:
        return f"<Request {self._method} {self._uri_raw}>"


class Response(Message):
    __slots__ = ("_reason", "_status")
    is_request = False

    _status: int
    _reason: str

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self._status, self._reason = _checked_status(status, reason)

    @property
    def status(self) -> int:
        return self._status

    @property
    def reason(self) -> str:
        return self._reason

    def copy(self) -> Response:
        """An independent copy (see `_copy_into`)."""
        return self._copy_into(Response(self._status, self._reason))

    def set_status(self, status: int, reason: str | None = None) -> None:
        self._status, self._reason = _checked_status(status, reason)
        self._raw = None

    @property
    def start_line(self) -> str:
        return f"{SIP_VERSION} {self._status} {self._reason}"

    def validate(self) -> None:
        """As for requests, but a bad response can only be dropped: status is 0."""
        try:
            super().validate()
        except SIPParseError as err:
            raise err.with_status(0) from None

    def validate_for_relay(self) -> None:
        """What a proxy relaying this response reads (RFC 3261 §16.7): the framing
        headers, its identity (Call-ID, CSeq, From, To) and the top Via (its own, which
        names the transaction). The Vias below it, Contact and Record-Route are the
        UAC's business: the response goes back where the request came from (the server
        transaction's target), so a proxy that only relays them does not parse them
        (§16.3: other components are ignored and forwarded unchanged). Their parsers
        are still the ones `validate` and the readers use, so a malformed value is
        refused by whoever reads it."""
        try:
            self._check_framing_headers()
            self.call_id  # noqa: B018
            self.cseq  # noqa: B018
            self.from_  # noqa: B018
            self.to  # noqa: B018
            self.top_via  # noqa: B018
        except SIPParseError as err:
            raise err.with_status(0) from None

    def __repr__(self) -> str:
        return f"<Response {self._status} {self._reason}>"


def _check_uri_text(text: str) -> None:
    if not text or any(ch in text for ch in " \t\r\n"):
        raise ValueError(f"invalid Request-URI {text!r}")


def _checked_status(status: int, reason: str | None) -> tuple[int, str]:
    if not 100 <= status <= 699:
        raise ValueError(f"status code must be 100-699, not {status}")
    if reason is None:
        reason = default_reason(status)
    elif "\r" in reason or "\n" in reason:
        raise ValueError("reason phrase must not contain CR or LF")
    return status, reason


# --- parsing ---------------------------------------------------------------------------


def parse_message(
    data: bytes, limits: Limits = DEFAULT_LIMITS, *, stream: bool = False
) -> Request | Response:
    """Parse one SIP message; raise `SIPParseError` (status 0 for any bad response).

    Datagram (`stream=False`, RFC 3261 §18.3): octets after Content-Length are ignored
    (RFC 4475 dblreq), a missing Content-Length means the body runs to the end
    (inv2543), a Content-Length beyond the end is a 400 (clerr). Stream: `data` is one
    message cut by `StreamFramer`; Content-Length is mandatory.
    """
    try:
        return _parse(data, limits, stream)
    except SIPParseError as err:
        if data.lstrip(b"\r\n")[:4].upper() == b"SIP/":
            raise err.with_status(0) from None  # a bad response is never answered
        raise


def _parse(data: bytes, limits: Limits, stream: bool) -> Request | Response:
    if len(data) > limits.max_message:
        raise SIPParseError(f"Message too large (limit {limits.max_message} octets)", 513)
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")  # RFC 3261 §7.5: ignore CRLFs before the start-line
        if not data:
            raise SIPParseError("Empty message", 0)
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        body_start = end + 4
    elif not stream and data.endswith(b"\r\n"):
        # A datagram whose header section lacks its closing empty line (RFC 4475
        # baddn as archived): the datagram boundary ends it, and the body is empty.
        end = len(data) - 2
        body_start = len(data)
    else:
        raise SIPParseError("Incomplete header section")

    head = data[:end].decode("utf-8", "surrogateescape")
    if "\r\n " in head or "\r\n\t" in head:
        head = _FOLD_RE.sub(" ", head)  # RFC 3261 §7.3.1: unfold LWS continuation lines
    line_breaks = head.count("\r\n")
    if head.count("\r") != line_breaks or head.count("\n") != line_breaks:
        raise SIPParseError("Bare CR or LF in header section")
    lines = head.split("\r\n")
    if len(lines) - 1 > limits.max_headers:
        raise SIPParseError(f"Too many header lines (limit {limits.max_headers})")
    check_length = len(head) > limits.max_header_line

    start = lines[0]
    if check_length and len(start) > limits.max_header_line:
        raise SIPParseError(f"Start line too long (limit {limits.max_header_line})", 414)
    headers: list[tuple[str, str]] = []
    index: dict[str, list[int]] = {}
    keys = HEADER_KEYS
    for position, line in enumerate(lines[1:]):
        name, colon, value = line.partition(":")
        if not colon:
            raise SIPParseError("Malformed header line (no colon)")
        key = keys.get(name)
        if key is None:
            name = name.rstrip(" \t")  # HCOLON = *( SP / HTAB ) ":" SWS
            key = keys.get(name)
            if key is None:
                if not is_token(name):
                    raise SIPParseError("Malformed header name")
                key = header_key(name)
        if check_length and len(line) > limits.max_header_line:
            raise SIPParseError(f"Header line too long (limit {limits.max_header_line})")
        headers.append((name, value.strip(" \t")))
        positions = index.get(key)
        if positions is None:
            index[key] = [position]
        else:
            positions.append(position)

    is_response = start[:4].isascii() and start[:4].upper() == "SIP/"
    message: Request | Response = _new_response(start) if is_response else _new_request(start)
    message.headers = headers
    message._index = index

    # Body framing (RFC 3261 §18.3, §20.14).
    available = len(data) - body_start
    cl_positions = index.get("content-length")
    if cl_positions is None:
        if stream:
            raise bad_header("Content-Length", "missing (mandatory on stream transports)")
        length = available
    else:
        length = _content_length([headers[p][1] for p in cl_positions])
        if length > available:
            raise bad_header("Content-Length", "larger than the message body")
    message_end = body_start + length
    message._body = data[body_start:message_end]
    message._raw = data if message_end == len(data) else data[:message_end]
    return message


def _check_version(version: str, where: str) -> None:
    # "SIP" is case-insensitive (RFC 3261 §25.1); isascii() keeps out look-alikes
    # such as U+017F, which upper-cases to "S".
    if version == SIP_VERSION or (version.isascii() and version.upper() == SIP_VERSION):
        return
    if _VERSION_RE.fullmatch(version):
        raise SIPParseError("SIP version not supported", 505)
    raise SIPParseError(f"Bad {where}: malformed SIP-Version")


def _new_request(line: str) -> Request:
    # Request-Line = Method SP Request-URI SP SIP-Version: exactly one SP between the
    # elements (RFC 4475 lwsstart, trws), no LWS inside the URI (lwsruri).
    parts = line.split(" ")
    if len(parts) != 3 or "" in parts:
        if "" in parts:
            raise SIPParseError("Bad Request-Line: extra whitespace")
        if len(parts) > 3:
            raise SIPParseError("Bad Request-Line: whitespace in Request-URI")
        raise SIPParseError("Bad Request-Line")
    if "\t" in line:
        raise SIPParseError("Bad Request-Line: HTAB not allowed")
    method, uri_raw, version = parts
    if not is_token(method):
        raise SIPParseError("Bad Request-Line: invalid method")
    _check_version(version, "Request-Line")
    if uri_raw[0] == "<":
        raise SIPParseError("Bad Request-Line: Request-URI enclosed in <>")  # ltgtruri
    return Request(method, uri_raw)


def _new_response(line: str) -> Response:
    # Status-Line = SIP-Version SP Status-Code SP Reason-Phrase; the phrase may be
    # empty (RFC 4475 noreason) or UTF-8 (unreason).
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    _check_version(version, "Status-Line")
    if not (len(code) == 3 and code.isascii() and code.isdigit() and "1" <= code[0] <= "6"):
        raise SIPParseError("Bad Status-Line: invalid status code", 0)  # bigcode
    return Response(int(code), reason)


# --- building responses ----------------------------------------------------------------


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """A response to `request` per RFC 3261 §8.2.6: Via lines (all, in order), From, To
    (with `to_tag` added unless it has a tag), Call-ID and CSeq copied as text, then
    `headers`, then `Content-Length: 0` (unless `headers` sets one).

    Works on requests that failed `validate()` too (to answer them with a 4xx): what
    is missing is not copied, what is malformed is copied as is.
    """
    lines: list[tuple[str, str]] = [("Via", value) for value in request.get_all("Via")]
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = request.get(name)
        if value is None:
            continue
        if name == "To" and to_tag is not None and not _has_tag(request, value):
            value = f"{value};tag={to_tag}"
        lines.append((name, value))
    if status == 100:
        timestamp = request.get("Timestamp")  # §8.2.6.1: copied into 100 (Trying)
        if timestamp is not None:
            lines.append(("Timestamp", timestamp))
    extra = list(headers)
    lines.extend(extra)
    if not any(header_key(name) == "content-length" for name, _ in extra):
        lines.append(("Content-Length", "0"))
    return Response(status, reason, lines)


def _has_tag(request: Request, to_value: str) -> bool:
    try:
        return request.to.tag is not None
    except SIPParseError:
        return _TAG_PARAM_RE.search(to_value) is not None
