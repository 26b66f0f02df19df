"""Header names and the structured header values a proxy needs.

Names (RFC 3261 §7.3): field names are case-insensitive and many have a compact form
(§7.3.3, Table at §20). `canonical_name()` maps every spelling to one canonical name;
`header_key()` is the lower-case form used to index a message's headers.

Values (RFC 3261 §7.3.1, §25.1): a comma separates list elements only outside quoted
strings and outside `<...>`; parameters are `;name[=value]` with case-insensitive
names. Each parser here takes one header *value* (already unfolded, as `Message`
keeps it) and raises `SIPParseError` naming the header.

Fast paths: splitting uses `str.split` unless the text holds a `"` (or `<`, for
commas); only then does a regex tokenizer walk the quoted strings.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Literal

from .errors import SIPParseError, bad_header
from .uri import URI, parse_host, parse_uri

# A call's messages repeat the same header values (its From and Call-ID on every
# message, its Vias and Record-Route on every response, "1 INVITE" on every call), so
# the parsed forms of the values seen lately are memoized, like URIs (uri.py). A hit is
# handed out as it is: parsed values are frozen and their lists and params are never
# changed in place (an edit makes a new value). Malformed values are not cached.
_CACHE_SIZE = 4096

__all__ = [
    "COMPACT_FORMS",
    "HEADER_KEYS",
    "CSeq",
    "NameAddr",
    "Via",
    "canonical_name",
    "header_key",
    "is_token",
    "parse_contact",
    "parse_cseq",
    "parse_name_addr",
    "parse_params",
    "parse_route",
    "parse_uint",
    "parse_via",
    "split_first_value",
    "split_values",
    "unquote",
]

# --- names -------------------------------------------------------------------------

# RFC 3261 §7.3.3 and the compact forms registered by later RFCs.
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",  # RFC 3841
    "b": "Referred-By",  # RFC 3892
    "c": "Content-Type",
    "d": "Request-Disposition",  # RFC 3841
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",  # RFC 3841
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",  # RFC 4474
    "o": "Event",  # RFC 3265
    "r": "Refer-To",  # RFC 3515
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",  # RFC 3265
    "v": "Via",
    "x": "Session-Expires",  # RFC 4028
    "y": "Identity",  # RFC 4474
}

# The spelling used when we know the header (RFC 3261 §20 and common extensions).
_CANONICAL_NAMES = (
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language",
    "Accept-Resource-Priority", "Alert-Info", "Allow", "Allow-Events", "Answer-Mode",
    "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
    "Content-Type", "CSeq", "Date", "Diversion", "Error-Info", "Event", "Expires",
    "Flow-Timer", "From", "Geolocation", "History-Info", "Identity", "Identity-Info",
    "In-Reply-To", "Join", "Max-Breadth", "Max-Forwards", "MIME-Version", "Min-Expires",
    "Min-SE", "Organization", "P-Access-Network-Info", "P-Asserted-Identity",
    "P-Associated-URI", "P-Called-Party-ID", "P-Charging-Vector", "P-Early-Media",
    "P-Preferred-Identity", "P-Visited-Network-ID", "Path", "Priority", "Privacy",
    "Priv-Answer-Mode", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require",
    "RAck", "Reason", "Record-Route", "Refer-Sub", "Refer-To", "Referred-By",
    "Reject-Contact", "Remote-Party-ID", "Replaces", "Reply-To", "Request-Disposition",
    "Require", "Resource-Priority", "Retry-After", "Route", "RSeq", "Security-Client",
    "Security-Server", "Security-Verify", "Server", "Service-Route", "Session-Expires",
    "Session-ID", "SIP-ETag", "SIP-If-Match", "Subject", "Subscription-State",
    "Supported", "Target-Dialog", "Timestamp", "To", "Unsupported", "User-Agent",
    "User-to-User", "Via", "Warning", "WWW-Authenticate",
)  # fmt: skip

_CANONICAL: dict[str, str] = {name.lower(): name for name in _CANONICAL_NAMES}
_CANONICAL.update(COMPACT_FORMS)
_CANONICAL.update({letter.upper(): name for letter, name in COMPACT_FORMS.items()})

# Exact spellings seen on the wire → index key; saves a .lower() per header line.
HEADER_KEYS: dict[str, str] = {}
for _name in _CANONICAL_NAMES:
    for _spelling in (_name, _name.lower(), _name.upper()):
        HEADER_KEYS[_spelling] = _name.lower()
for _letter, _name in COMPACT_FORMS.items():
    HEADER_KEYS[_letter] = HEADER_KEYS[_letter.upper()] = _name.lower()
del _name, _spelling, _letter

_TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_TOKEN_RE = re.compile(f"[{_TOKEN_CHARS}]+")


def is_token(text: str) -> bool:
    """RFC 3261 §25.1 token (header names, methods, param names)."""
    return _TOKEN_RE.fullmatch(text) is not None


def canonical_name(name: str) -> str:
    """`v` → `Via`, `call-id` → `Call-ID`; unknown names come back as given (stripped)."""
    name = name.strip(" \t")
    return _CANONICAL.get(name) or _CANONICAL.get(name.lower()) or name


def header_key(name: str) -> str:
    """The case-insensitive key of a header name, compact forms folded (`i` → `call-id`)."""
    key = HEADER_KEYS.get(name)
    if key is not None:
        return key
    lower = name.strip(" \t").lower()
    return HEADER_KEYS.get(lower, lower)


# --- lists and parameters ----------------------------------------------------------

_QUOTED = r'"(?:[^"\\]|\\.)*"'
# Tokenizers: a run of ordinary text, a whole quoted string, a whole <...>, a separator,
# or a lone opener (which means it was never closed).
_COMMA_SCAN = re.compile(rf'[^",<]+|{_QUOTED}|<[^>]*>|,|["<]', re.S)
_SEMI_SCAN = re.compile(rf'[^";]+|{_QUOTED}|;|"', re.S)
_QUOTED_RE = re.compile(_QUOTED, re.S)
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.S)
# gen-value = token / host / quoted-string (RFC 3261 §25.1)
_GEN_VALUE_RE = re.compile(rf"[{_TOKEN_CHARS}\[\]:]+|{_QUOTED}", re.S)


def _cut(text: str, scanner: re.Pattern[str], sep: str, header: str | None) -> list[str]:
    """Split `text` on `sep` outside quoted strings (and `<...>` for the comma scanner)."""
    parts: list[str] = []
    start = 0
    for match in scanner.finditer(text):
        token = match.group()
        if token == sep:
            parts.append(text[start : match.start()])
            start = match.end()
        elif token == '"':
            raise bad_header(header, "unterminated quoted string")
        elif token == "<":
            raise bad_header(header, "missing '>'")
    parts.append(text[start:])
    return parts


def split_values(value: str, *, header: str | None = None) -> list[str]:
    """Split a comma-separated header value (RFC 3261 §7.3.1), respecting quotes and <>.

    Items are stripped of SP/HTAB. Empty items are kept (a parser decides whether they
    are an error); an entirely empty value gives `[]`.
    """
    if '"' in value or "<" in value:
        items = _cut(value, _COMMA_SCAN, ",", header)
    else:
        items = value.split(",")
    items = [item.strip(" \t") for item in items]
    return [] if items == [""] else items


def split_first_value(value: str, *, header: str | None = None) -> tuple[str, str]:
    """(first comma value, the rest of the text after its comma, or "")."""
    if '"' in value or "<" in value:
        first, *others = _cut(value, _COMMA_SCAN, ",", header)
        if not others:
            return first.strip(" \t"), ""
        rest = value[len(first) + 1 :]
    else:
        first, _, rest = value.partition(",")
    return first.strip(" \t"), rest.strip(" \t")


def parse_params(text: str, *, header: str | None = None) -> dict[str, str | None]:
    """`;name=value;flag` → `{"name": "value", "flag": None}` (RFC 3261 §7.3.1).

    A leading `;` is optional. Names are lower-cased; values are kept as written
    (a quoted-string keeps its quotes: see `unquote`). SWS around `;` and `=` is
    allowed (`SEMI`, `EQUAL`); an empty parameter or value is an error (RFC 4475
    badinv01). The first of duplicated names wins.
    """
    text = text.strip(" \t")
    if not text:
        return {}
    if text[0] == ";":
        text = text[1:]
    if '"' not in text and _PLAIN_PARAMS_RE.fullmatch(text):
        # The common case, checked in one pass in C: unquoted tokens and values.
        params: dict[str, str | None] = {}
        for part in text.split(";"):
            name, eq, value = part.partition("=")
            params.setdefault(name.strip(" \t").lower(), value.strip(" \t") if eq else None)
        return params
    return _checked_params(text, header)


def _checked_params(text: str, header: str | None) -> dict[str, str | None]:
    """parse_params one parameter at a time, naming what is wrong (``text`` stripped,
    without its leading ``;``)."""
    parts = _cut(text, _SEMI_SCAN, ";", header) if '"' in text else text.split(";")
    params: dict[str, str | None] = {}
    for part in parts:
        name, eq, value = part.partition("=")
        name = name.strip(" \t")
        if not name:
            raise bad_header(header, "empty parameter")
        if not _TOKEN_RE.fullmatch(name):
            raise bad_header(header, "invalid parameter name")
        if eq:
            value = value.strip(" \t")
            if not value:
                raise bad_header(header, "empty parameter value")
            if not _GEN_VALUE_RE.fullmatch(value):
                raise bad_header(header, "invalid parameter value")
            params.setdefault(name.lower(), value)
        else:
            params.setdefault(name.lower(), None)
    return params


# Parameters without quoted strings, each well-formed (what the loop in parse_params
# checks one by one): token [ "=" token/host ], separated by ";" with SWS around both.
_PARAM = rf"[ \t]*[{_TOKEN_CHARS}]+(?:[ \t]*=[ \t]*[{_TOKEN_CHARS}\[\]:]+)?[ \t]*"
_PLAIN_PARAMS_RE = re.compile(rf"{_PARAM}(?:;{_PARAM})*")


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def unquote(text: str) -> str:
    """`"a \\"b\\""` → `a "b"`: strip the quotes and undo quoted-pairs (RFC 3261 §25.1)."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
        if "\\" in text:
            text = _QUOTED_PAIR_RE.sub(r"\1", text)
    return text


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_uint(value: str, *, header: str, maximum: int) -> int:
    """A decimal integer 0..maximum (leading zeros allowed, as in RFC 4475 wsinv)."""
    text = value.strip(" \t")
    if not (text.isascii() and text.isdigit()):
        detail = "negative value" if text[:1] == "-" and text[1:].isdigit() else "not a number"
        raise bad_header(header, detail)
    # Bound the length before int(): a 5000-digit value must not cost or raise ValueError.
    if len(text.lstrip("0")) > len(str(maximum)) or int(text) > maximum:
        raise bad_header(header, "value out of range")
    return int(text)


# --- Via -----------------------------------------------------------------------------

# via-parm = sent-protocol LWS sent-by *( SEMI via-params )   (RFC 3261 §25.1)
# sent-protocol = protocol-name SLASH protocol-version SLASH transport, SLASH = SWS "/" SWS
_VIA_RE = re.compile(
    rf"([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*([{_TOKEN_CHARS}]+)"
    r"[ \t]+(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_\-.]+)"  # host
    r"(?:[ \t]*:[ \t]*([0-9]+))?"  # port (COLON = SWS ":" SWS)
    r"[ \t]*(;.*)?",  # via-params
    re.S,
)


@dataclass(slots=True, frozen=True)
class Via:
    """One via-parm (RFC 3261 §20.42). `str(via)` formats it for a new header line."""

    protocol: str  # "SIP/2.0"
    transport: str  # upper case: "UDP", "TCP", "TLS", "SCTP", "WS", anything else
    host: str  # lower case; IPv6 in brackets
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> str | None:
        """RFC 3581: `None` absent, `""` present without value, else the value."""
        if "rport" not in self.params:
            return None
        return self.params["rport"] or ""

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{_format_params(self.params)}"


def _parse_via_parm(text: str) -> Via:
    if not text:
        raise bad_header("Via", "empty value")
    match = _VIA_RE.fullmatch(text)
    if match is None:
        raise bad_header("Via", "malformed sent-protocol or sent-by")
    name, version, transport, host_text, port_text, param_text = match.groups()
    try:
        host, _ = parse_host(host_text)
    except SIPParseError as err:
        raise bad_header("Via", err.detail) from None
    port = None
    if port_text is not None:
        port = parse_uint(port_text, header="Via", maximum=65535)
    params = parse_params(param_text, header="Via") if param_text else {}
    return Via(f"{name.upper()}/{version}", transport.upper(), host, port, params)


def parse_via(value: str) -> tuple[Via, ...]:
    """All via-parms of one Via header line (RFC 3261 §7.3.1 allows several)."""
    return _parse_via(value)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parse_via(value: str) -> tuple[Via, ...]:
    items = split_values(value, header="Via")
    if not items:
        raise bad_header("Via", "empty value")
    return tuple(_parse_via_parm(item) for item in items)


# --- name-addr / addr-spec -----------------------------------------------------------

# display-name = *(token LWS) / quoted-string  (RFC 3261 §25.1). RFC 4475 lwsdisp: the
# LWS before "<" may be missing, which the grammar's LAQUOT already allows.
_DISPLAY_TOKENS_RE = re.compile(f"[{_TOKEN_CHARS}]+(?:[ \t]+[{_TOKEN_CHARS}]+)*")


@dataclass(slots=True, frozen=True)
class NameAddr:
    """A name-addr or addr-spec with its header parameters (From, To, Contact, Route …).

    `display` is unquoted (quoted-pairs undone), `None` when absent. `params` are the
    *header* parameters (after `>`, or after the URI in addr-spec form).
    """

    display: str | None
    uri: URI
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        display = f"{_quote(self.display)} " if self.display is not None else ""
        return f"{display}<{self.uri}>{_format_params(self.params)}"


def _uri_in_header(text: str, header: str | None) -> URI:
    try:
        return parse_uri(text)
    except SIPParseError as err:
        raise bad_header(header, err.detail) from None


def _parse_angle(display: str | None, text: str, header: str | None) -> NameAddr:
    """`<uri> *(SEMI param)`; `text` starts at `<`."""
    end = text.find(">")
    if end < 0:
        raise bad_header(header, "missing '>'")
    # No SWS inside the brackets: LAQUOT = SWS "<", RAQUOT = ">" SWS (RFC 4475 badaspec).
    uri = _uri_in_header(text[1:end], header)
    rest = text[end + 1 :].strip(" \t")
    if rest and rest[0] != ";":
        raise bad_header(header, "unexpected text after '>'")
    return NameAddr(display, uri, parse_params(rest, header=header) if rest else {})


def parse_name_addr(value: str, *, header: str | None = None) -> NameAddr:
    """A name-addr or addr-spec (see `_parse_name_addr`), memoized."""
    return _parse_name_addr(value, header)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parse_name_addr(value: str, header: str | None) -> NameAddr:
    """Parse `"Display" <uri>;params`, `token <uri>`, `<uri>` or addr-spec `uri;params`.

    In the addr-spec form everything after the first `;` is a header parameter, and a
    URI holding `,`, `?` (or `;`) must have been enclosed in `<>` (RFC 3261 §20.10,
    RFC 4475 regbadct).
    """
    text = value.strip(" \t")
    if not text:
        raise bad_header(header, "empty value")
    if text[0] == '"':
        match = _QUOTED_RE.match(text)
        if match is None:
            raise bad_header(header, "unterminated quoted string")
        display = unquote(match.group())
        rest = text[match.end() :].lstrip(" \t")
        if not rest.startswith("<"):
            raise bad_header(header, "display name without <URI>")
        return _parse_angle(display, rest, header)
    lt = text.find("<")
    if lt >= 0:
        display_text = text[:lt].rstrip(" \t")
        if display_text and not _DISPLAY_TOKENS_RE.fullmatch(display_text):
            raise bad_header(header, "display name must be tokens or quoted")
        return _parse_angle(display_text or None, text[lt:], header)
    uri_text, semi, param_text = text.partition(";")
    uri_text = uri_text.rstrip(" \t")
    if "?" in uri_text or "," in uri_text:
        raise bad_header(header, "URI with '?' or ',' must be enclosed in <>")
    uri = _uri_in_header(uri_text, header)
    return NameAddr(None, uri, parse_params(param_text, header=header) if semi else {})


def parse_contact(value: str, *, header: str = "Contact") -> tuple[NameAddr, ...] | Literal["*"]:
    """One Contact header line: `*` (RFC 3261 §10.2.2) or its addresses."""
    return _parse_contact(value, header)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parse_contact(value: str, header: str) -> tuple[NameAddr, ...] | Literal["*"]:
    if value.strip(" \t") == "*":
        return "*"
    items = split_values(value, header=header)
    if not items:
        raise bad_header(header, "empty value")
    contacts = []
    for item in items:
        if not item:
            raise bad_header(header, "empty value")
        if item == "*":
            raise bad_header(header, "'*' mixed with addresses")
        contacts.append(_parse_name_addr(item, header))
    return tuple(contacts)


def parse_route(value: str, *, header: str = "Route") -> tuple[NameAddr, ...]:
    """One Route/Record-Route/Path line: name-addrs only (RFC 3261 §20.30, §20.34).

    The brackets are required: in addr-spec form `;lr` would silently become a header
    parameter instead of the URI parameter the sender meant.
    """
    return _parse_route(value, header)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parse_route(value: str, header: str) -> tuple[NameAddr, ...]:
    items = split_values(value, header=header)
    if not items:
        raise bad_header(header, "empty value")
    routes = []
    for item in items:
        if not item:
            raise bad_header(header, "empty value")
        route = _parse_name_addr(item, header)
        if "<" not in item:
            raise bad_header(header, "URI must be enclosed in <>")
        routes.append(route)
    return tuple(routes)


# --- CSeq --------------------------------------------------------------------------

_CSEQ_RE = re.compile(rf"([0-9]+)[ \t]+([{_TOKEN_CHARS}]+)")
MAX_CSEQ = 2**32 - 1  # RFC 3261 §8.1.1.5: "MUST be expressible as a 32-bit unsigned integer"


@dataclass(slots=True, frozen=True)
class CSeq:
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


@functools.lru_cache(maxsize=_CACHE_SIZE)
def parse_cseq(value: str) -> CSeq:
    match = _CSEQ_RE.fullmatch(value.strip(" \t"))
    if match is None:
        raise bad_header("CSeq", "malformed")
    number = parse_uint(match.group(1), header="CSeq", maximum=MAX_CSEQ)
    return CSeq(number, match.group(2))
