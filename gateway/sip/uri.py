"""SIP, SIPS and tel URIs; any other scheme is kept opaque.

Grammar: RFC 3261 §19.1 and §25.1 (SIP-URI, SIPS-URI), RFC 3966 (tel). A URI is checked
against the grammar with a few precompiled regular expressions (C speed, no Python loop
per character) and split with `str.partition`/`str.split`.

Escaping (RFC 3261 §19.1.2): `%HH` is decoded exactly once, and only in the parts whose
grammar admits `escaped` (user, password, parameter names and values, header names and
values). A `%` that does not start a valid escape is an error inside those parts
(RFC 4475 §3.1.1.5 shows `%` used legally where the grammar is a *token*, e.g. in a
method or a Via branch; those never reach this module). `str(uri)` escapes again
whatever its part does not allow, so `sip:%75se%72@h` prints as `sip:user@h`, which is
equivalent (§19.1.4).

Leniency, on purpose and only here: `#` is accepted unescaped in the user part because
telephone keypad strings (`*21#`) are sent that way by many phones; it is escaped on
output. Underscores are accepted in host names (container and SRV-style names).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import unquote_to_bytes

from .errors import SIPParseError

__all__ = ["URI", "AbsoluteURI", "SipURI", "TelURI", "parse_host", "parse_uri"]

# --- character classes (RFC 3261 §25.1) -------------------------------------------
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_ESCAPED = r"%[0-9A-Fa-f]{2}"
_USER_CHARS = _UNRESERVED + r"&=+$,;?/"  # user-unreserved
_PASSWORD_CHARS = _UNRESERVED + r"&=+$,"
_PARAM_CHARS = _UNRESERVED + r"\[\]/:&+$"  # param-unreserved
_HEADER_CHARS = _UNRESERVED + r"\[\]/?:+$"  # hnv-unreserved

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_USER_RE = re.compile(rf"(?:[{_USER_CHARS}#]|{_ESCAPED})+")
_PASSWORD_RE = re.compile(rf"(?:[{_PASSWORD_CHARS}]|{_ESCAPED})*")
_PARAM_RE = re.compile(rf"(?:[{_PARAM_CHARS}]|{_ESCAPED})+")
_HNAME_RE = re.compile(rf"(?:[{_HEADER_CHARS}]|{_ESCAPED})+")
_HVALUE_RE = re.compile(rf"(?:[{_HEADER_CHARS}]|{_ESCAPED})*")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*\.?")
_IPV6_REF_RE = re.compile(r"\[[0-9A-Fa-f:.]+\]")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_WHITESPACE_RE = re.compile(r"\s")
# RFC 3966 §3: global numbers are "+" digits with visual separators; local numbers may
# also hold hex digits, "*" and "#".
_TEL_NUMBER_RE = re.compile(
    r"\+[0-9\-.()]*[0-9][0-9\-.()]*"  # global-number-digits
    r"|[0-9A-Fa-f*#\-.()]*[0-9A-Fa-f*#][0-9A-Fa-f*#\-.()]*"  # local-number-digits
)
_TEL_VISUAL_RE = re.compile(r"[\-.()]")
# absoluteURI (RFC 3261 §25.1 / RFC 2396): printable ASCII without SP, '"', '<', '>'.
_OPAQUE_RE = re.compile(r"[!#-;=?-~]+")

# RFC 3261 §19.1.4: these URI parameters must match when present in either URI.
_SIGNIFICANT_PARAMS = ("user", "ttl", "method", "maddr", "transport")


def _escaper(safe: str) -> Callable[[str], str]:
    """Build a function that %-escapes every character outside `safe` (UTF-8 octets)."""
    unsafe = re.compile(f"[^{safe}]+")

    def encode(match: re.Match[str]) -> str:
        octets = match.group().encode("utf-8", "surrogateescape")
        return "".join(f"%{octet:02X}" for octet in octets)

    def escape(text: str) -> str:
        if unsafe.search(text) is None:
            return text
        return unsafe.sub(encode, text)

    return escape


_escape_user = _escaper(_USER_CHARS)
_escape_password = _escaper(_PASSWORD_CHARS)
_escape_param = _escaper(_PARAM_CHARS)
_escape_header = _escaper(_HEADER_CHARS)


def _unescape(text: str) -> str:
    """Decode `%HH` once (the caller has already checked every `%` is a valid escape)."""
    if "%" not in text:
        return text
    return unquote_to_bytes(text).decode("utf-8", "surrogateescape")


def _bad(text: str, detail: str) -> SIPParseError:
    # Whitespace is the most common cause (RFC 4475 badaspec, lwsruri): say so.
    if _WHITESPACE_RE.search(text):
        detail = "URI contains whitespace"
    return SIPParseError(f"Bad URI: {detail}", detail=detail)


# Parsed forms of the hosts and URIs seen lately are memoized: the same few recur on
# every message (our own address, a trunk's, each phone's Contact), and parsed values
# are never changed in place (frozen), so a hit can be handed out as it is.
_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=_CACHE_SIZE)
def parse_host(text: str) -> tuple[str, int | None]:
    """Split `host[:port]` (RFC 3261 hostport); host lower-cased, IPv6 kept in brackets."""
    if text.startswith("["):
        end = text.find("]") + 1
        host, rest = text[:end], text[end:]
        if not end or not _IPV6_REF_RE.fullmatch(host):
            raise _bad(text, "invalid IPv6 reference")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise _bad(text, "invalid IPv6 reference") from None
    else:
        host, colon, port_text = text.partition(":")
        rest = colon + port_text
        if not _HOSTNAME_RE.fullmatch(host):
            raise _bad(text, "invalid host")
    if not rest:
        return host.lower(), None
    if rest[0] != ":" or not _PORT_RE.fullmatch(rest, 1):
        raise _bad(text, "invalid port")
    port = int(rest[1:])
    if port > 65535:
        raise _bad(text, "port out of range")
    return host.lower(), port


def _parse_uri_params(text: str, parts: list[str]) -> dict[str, str | None]:
    """uri-parameters: `;name[=value]`, names lower-cased, both unescaped (§19.1.1)."""
    params: dict[str, str | None] = {}
    for part in parts:
        name, eq, value = part.partition("=")
        if not _PARAM_RE.fullmatch(name):
            raise _bad(text, "invalid parameter" if name else "empty parameter")
        if eq and not _PARAM_RE.fullmatch(value):
            raise _bad(text, "invalid parameter value")
        params.setdefault(_unescape(name).lower(), _unescape(value) if eq else None)
    return params


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(
        f";{_escape_param(name)}"
        if value is None
        else f";{_escape_param(name)}={_escape_param(value)}"
        for name, value in params.items()
    )


@dataclass(frozen=True, slots=True)
class SipURI:
    """A sip: or sips: URI (RFC 3261 §19.1). Parts are stored unescaped."""

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    # dicts are not hashable; hash what identifies the resource (equal URIs agree on it).
    def __hash__(self) -> int:
        return hash((self.scheme, self.user, self.host, self.port))

    @property
    def transport(self) -> str:
        """The `transport=` parameter, lower case; RFC 3263 defaults otherwise."""
        transport = self.params.get("transport")
        if transport:
            return transport.lower()
        return "tls" if self.scheme == "sips" else "udp"

    @property
    def host_port(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def aor(self) -> str:
        """The address of record: `scheme:user@host`, no password, port, params (§10.3)."""
        if self.user is None:
            return f"{self.scheme}:{self.host}"
        return f"{self.scheme}:{_escape_user(self.user)}@{self.host}"

    @property
    def lr(self) -> bool:
        """True if this is a loose-routing URI (RFC 3261 §19.1.1, §16.12)."""
        return "lr" in self.params

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    def __str__(self) -> str:
        text = f"{self.scheme}:"
        if self.user is not None:
            text += _escape_user(self.user)
            if self.password is not None:
                text += ":" + _escape_password(self.password)
            text += "@"
        text += self.host_port
        if self.params:
            text += _format_params(self.params)
        if self.headers:
            text += "?" + "&".join(
                f"{_escape_header(name)}={_escape_header(value)}"
                for name, value in self.headers.items()
            )
        return text

    def equivalent(self, other: object) -> bool:
        """URI comparison of RFC 3261 §19.1.4 (not string equality)."""
        if not isinstance(other, SipURI):
            return False
        if (
            self.scheme != other.scheme
            or self.user != other.user  # userinfo is case-sensitive
            or self.password != other.password
            or self.host != other.host  # both lower-cased at parse time
            or self.port != other.port  # an explicit 5060 differs from no port
        ):
            return False
        mine = {k: v.lower() if v is not None else None for k, v in self.params.items()}
        theirs = {k: v.lower() if v is not None else None for k, v in other.params.items()}
        for name in _SIGNIFICANT_PARAMS:
            if (name in mine or name in theirs) and mine.get(name, "") != theirs.get(name, ""):
                return False
        for name in mine.keys() & theirs.keys():
            if mine[name] != theirs[name]:
                return False
        my_headers = {k.lower(): v for k, v in self.headers.items()}
        their_headers = {k.lower(): v for k, v in other.headers.items()}
        return my_headers == their_headers

    def replace(self, **changes: Any) -> SipURI:
        """A copy with some fields changed (`uri.replace(port=5070, params={})`)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class TelURI:
    """A tel: URI (RFC 3966): the number as written (visual separators kept)."""

    number: str
    params: dict[str, str | None] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash(self.digits)

    @property
    def global_(self) -> bool:
        """True for a global number (`+` and an E.164 number)."""
        return self.number.startswith("+")

    @property
    def digits(self) -> str:
        """The number without visual separators (`+1-201-555` → `+1201555`)."""
        return _TEL_VISUAL_RE.sub("", self.number)

    def __str__(self) -> str:
        return f"tel:{self.number}{_format_params(self.params)}"

    def equivalent(self, other: object) -> bool:
        """RFC 3966 §4: numbers compared without visual separators, params by value."""
        if not isinstance(other, TelURI):
            return False
        mine = {k: v.lower() if v else v for k, v in self.params.items()}
        theirs = {k: v.lower() if v else v for k, v in other.params.items()}
        return self.digits.lower() == other.digits.lower() and mine == theirs

    def replace(self, **changes: Any) -> TelURI:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class AbsoluteURI:
    """A URI of any other scheme (RFC 3261 absoluteURI), kept exactly as received."""

    scheme: str
    raw: str

    def __str__(self) -> str:
        return self.raw

    def equivalent(self, other: object) -> bool:
        if not isinstance(other, AbsoluteURI):
            return False
        return (
            self.scheme == other.scheme
            and self.raw.partition(":")[2] == other.raw.partition(":")[2]
        )

    def replace(self, **changes: Any) -> AbsoluteURI:
        return dataclasses.replace(self, **changes)


URI: TypeAlias = SipURI | TelURI | AbsoluteURI


@functools.lru_cache(maxsize=_CACHE_SIZE)
def parse_uri(text: str) -> URI:
    """Parse a URI; raises `SIPParseError` (status 400) if it breaks the grammar."""
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME_RE.fullmatch(scheme):
        raise _bad(text, "missing or invalid scheme")
    scheme = scheme.lower()
    if scheme == "sip" or scheme == "sips":
        return _parse_sip(text, scheme, rest)
    if scheme == "tel":
        return _parse_tel(text, rest)
    if not _OPAQUE_RE.fullmatch(rest):
        raise _bad(text, f"invalid {scheme} URI")
    return AbsoluteURI(scheme, text)


def _parse_sip(text: str, scheme: str, rest: str) -> SipURI:
    # The user part may hold ';', '?' and '/' (user-unreserved) but never '@', so the
    # first '@' ends the userinfo. Only then can ';' and '?' be split on.
    user = password = None
    at = rest.find("@")
    if at >= 0:
        user, colon, password_text = rest[:at].partition(":")
        if not _USER_RE.fullmatch(user):
            raise _bad(text, "empty or invalid user part")
        user = _unescape(user)
        if colon:
            if not _PASSWORD_RE.fullmatch(password_text):
                raise _bad(text, "invalid password")
            password = _unescape(password_text)
        rest = rest[at + 1 :]
    rest, question, header_text = rest.partition("?")
    hostport, *param_parts = rest.split(";")
    host, port = parse_host(hostport)
    params = _parse_uri_params(text, param_parts) if param_parts else {}
    headers = _parse_uri_headers(text, header_text) if question else {}
    return SipURI(scheme, user, password, host, port, params, headers)


def _parse_uri_headers(text: str, header_text: str) -> dict[str, str]:
    """`?name=value&...` (§19.1.1): names and values unescaped, names kept as written."""
    headers: dict[str, str] = {}
    for item in header_text.split("&"):
        name, eq, value = item.partition("=")
        if not eq or not _HNAME_RE.fullmatch(name) or not _HVALUE_RE.fullmatch(value):
            raise _bad(text, "invalid header in URI")
        headers[_unescape(name)] = _unescape(value)
    return headers


def _parse_tel(text: str, rest: str) -> TelURI:
    number, *param_parts = rest.split(";")
    if not _TEL_NUMBER_RE.fullmatch(number):
        raise _bad(text, "invalid telephone number")
    params = _parse_uri_params(text, param_parts) if param_parts else {}
    return TelURI(number, params)
