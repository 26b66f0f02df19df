"""HTTP Digest authentication for SIP: RFC 2617, RFC 7616, RFC 8760.

SIP (RFC 3261 §22.4) reuses HTTP Digest; RFC 8760 adds SHA-256 and SHA-512/256 to it.
This module supports ``qop=auth`` with the algorithms "MD5", "SHA-256" and (when the
OpenSSL build provides it) "SHA-512-256". The "-sess" variants and ``qop=auth-int`` are
not supported: SIP phones rarely use them and they add state without adding security.

Server side (``DigestServer``): nonces are ``base64url(timestamp | random | HMAC)``, so
issuing them needs no storage, and authenticity and age are checked with the secret
alone. Replay protection (RFC 7616 §3.4 nonce-count, §5 on replay attacks) keeps, per
nonce, the highest nonce-count seen in a bounded LRU; a nonce that fell out of it is
answered as stale, so eviction never reopens a replay window.

Client side (``DigestClient``): answers a WWW-Authenticate / Proxy-Authenticate value.

Nothing here raises on bad input in ``DigestServer.verify``: every failure is an
``AuthResult`` with a short ASCII reason, safe for a log line or a reason phrase.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "AuthResult",
    "DigestClient",
    "DigestServer",
    "compute_ha1",
    "compute_response",
    "parse_challenge",
    "parse_credentials",
]

# ----------------------------------------------------------------------- algorithms

# RFC 7616 §3.2 / RFC 8760 §2.2 algorithm names → hashlib names. SHA-512-256 is FIPS
# 180-4 SHA-512/256 (its own IV), not a truncated SHA-512 (RFC 7616 §3.9.2).
_HASHLIB_NAMES: Final = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}

# Strongest first: the order in which challenges are offered (RFC 8760 §2) and in which
# a client prefers them.
_STRENGTH: Final = ("SHA-512-256", "SHA-256", "MD5")


def _available(hashlib_name: str) -> bool:
    # sha512_256 is missing from some OpenSSL builds, and MD5 may be refused in FIPS mode
    # unless flagged as not used for security (Digest uses it as a protocol requirement).
    try:
        hashlib.new(hashlib_name, b"", usedforsecurity=False)
    except ValueError:
        return False
    return True


SUPPORTED_ALGORITHMS: Final[tuple[str, ...]] = tuple(
    name for name in _STRENGTH if _available(_HASHLIB_NAMES[name])
)


def _canonical_algorithm(name: str) -> str | None:
    """The canonical spelling of a supported algorithm; tokens are case-insensitive."""
    upper = name.strip().upper()
    return upper if upper in SUPPORTED_ALGORITHMS else None


def _hash(algorithm: str, text: str) -> str:
    digest = hashlib.new(_HASHLIB_NAMES[algorithm], usedforsecurity=False)
    digest.update(text.encode("utf-8"))
    return digest.hexdigest()


def _require_algorithm(algorithm: str) -> str:
    canonical = _canonical_algorithm(algorithm)
    if canonical is None:
        raise ValueError(
            f"unsupported digest algorithm {algorithm!r}; supported: "
            + ", ".join(SUPPORTED_ALGORITHMS)
        )
    return canonical


def compute_ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """H(username ":" realm ":" password) in lower-case hex (RFC 7616 §3.4.2)."""
    return _hash(_require_algorithm(algorithm), f"{username}:{realm}:{password}")


def compute_response(
    ha1: str,
    *,
    nonce: str,
    method: str,
    uri: str,
    algorithm: str = "MD5",
    qop: str | None = "auth",
    nc: str = "",
    cnonce: str = "",
) -> str:
    """The request-digest (RFC 7616 §3.4.1, RFC 2617 §3.2.2.1).

    With ``qop="auth"``: KD(HA1, nonce:nc:cnonce:qop:HA2); with ``qop=None`` the RFC 2069
    form KD(HA1, nonce:HA2). HA2 = H(method:uri).
    """
    algorithm = _require_algorithm(algorithm)
    ha2 = _hash(algorithm, f"{method}:{uri}")
    if qop is None:
        return _hash(algorithm, f"{ha1}:{nonce}:{ha2}")
    return _hash(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# ------------------------------------------------------------------------- parsing

# Bounds on what the parser looks at: an Authorization value is a few hundred octets.
_MAX_VALUE_LENGTH: Final = 4096
_MAX_PARAMS: Final = 32

# RFC 7230 §3.2.6 tchar (SIP's token, RFC 3261 §25.1, is the same set minus a few
# characters that never matter here).
_TOKEN_CHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_WHITESPACE: Final = " \t"


def _is_token(text: str) -> bool:
    return bool(text) and all(char in _TOKEN_CHARS for char in text)


def _has_control(text: str) -> bool:
    # CR/LF would allow header injection if a value were echoed; NUL and other C0
    # controls are never legitimate in these headers. HTAB is whitespace.
    return any((ord(char) < 0x20 and char != "\t") or char == "\x7f" for char in text)


class _Cursor:
    """A tiny scanner over one header value."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    @property
    def done(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip(self, chars: str) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1

    def token(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _TOKEN_CHARS:
            self.pos += 1
        return self.text[start : self.pos]

    def quoted(self) -> str:
        # RFC 7230 §3.2.6: quoted-string with quoted-pair; the opening quote is current.
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == '"':
                return "".join(out)
            if char == "\\":
                if self.pos >= len(self.text):
                    break
                char = self.text[self.pos]
                self.pos += 1
            out.append(char)
        raise ValueError("unterminated quoted string")

    def bare(self) -> str:
        # Lenient unquoted value: RFC 7616 wants tokens (algorithm, qop, nc), but some
        # clients leave other values unquoted; stop at the list separator or whitespace.
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ',"\\ \t':
            self.pos += 1
        return self.text[start : self.pos]


def _parse_auth_value(value: str) -> tuple[str, dict[str, str]]:
    """Split ``scheme param=value, …`` (RFC 7235 §2.1) into the scheme and its params.

    Parameter names are lower-cased; values are unquoted. Raises ValueError on anything
    that is not a well-formed, bounded auth-param list.
    """
    if not isinstance(value, str):
        raise ValueError("not a string")
    if len(value) > _MAX_VALUE_LENGTH:
        raise ValueError("value too long")
    if _has_control(value):
        raise ValueError("control character in value")
    cursor = _Cursor(value)
    cursor.skip(_WHITESPACE)
    scheme = cursor.token()
    if not scheme:
        raise ValueError("missing auth scheme")
    if not cursor.done and cursor.peek() not in _WHITESPACE:
        raise ValueError("malformed auth scheme")
    params: dict[str, str] = {}
    while True:
        cursor.skip(_WHITESPACE + ",")  # #rule: empty list elements are allowed
        if cursor.done:
            break
        name = cursor.token()
        if not name:
            raise ValueError(f"expected a parameter name at offset {cursor.pos}")
        cursor.skip(_WHITESPACE)
        if cursor.peek() != "=":
            raise ValueError(f"expected '=' after parameter {name.lower()!r}")
        cursor.pos += 1
        cursor.skip(_WHITESPACE)
        if cursor.peek() == '"':
            text = cursor.quoted()  # may be empty: realm="" is well-formed
        else:
            text = cursor.bare()
            if not text:
                raise ValueError(f"empty value for parameter {name.lower()!r}")
        cursor.skip(_WHITESPACE)
        if not cursor.done and cursor.peek() != ",":
            raise ValueError(f"expected ',' at offset {cursor.pos}")
        key = name.lower()
        if key in params:
            raise ValueError(f"duplicate parameter {key!r}")
        params[key] = text
        if len(params) > _MAX_PARAMS:
            raise ValueError("too many parameters")
    if not params:
        raise ValueError("no parameters")
    return scheme, params


def _parse_digest(value: str) -> dict[str, str]:
    scheme, params = _parse_auth_value(value)
    if scheme.lower() != "digest":
        raise ValueError(f"unsupported scheme {scheme!r}")
    return params


def parse_credentials(value: str) -> dict[str, str]:
    """Parse an Authorization / Proxy-Authorization value (``Digest k=v, …``).

    Returns the parameters with lower-case names and unquoted values (escaped quotes and
    commas inside quoted strings are handled). Raises ValueError on garbage or on a
    scheme other than Digest.
    """
    return _parse_digest(value)


def parse_challenge(value: str) -> dict[str, str]:
    """Parse one WWW-Authenticate / Proxy-Authenticate Digest value, like
    ``parse_credentials``. One challenge per value (SIP puts each on its own line)."""
    return _parse_digest(value)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -------------------------------------------------------------------------- server


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Outcome of ``DigestServer.verify``.

    ``username`` is set only when the digest proved knowledge of the password (``ok``,
    or ``stale``: right password, outdated nonce). ``claimed_username`` is whatever the
    client claimed, for audit logs and rate limiting: never trust it.
    """

    ok: bool
    username: str | None
    stale: bool
    reason: str
    claimed_username: str | None = None


_NONCE_ISSUER_BYTES: Final = 4
_NONCE_RANDOM_BYTES: Final = 8
_NONCE_MAC_BYTES: Final = 16
# timestamp | issuer | random | MAC: 36 bytes → 48 base64 characters
_NONCE_BYTES: Final = 8 + _NONCE_ISSUER_BYTES + _NONCE_RANDOM_BYTES + _NONCE_MAC_BYTES
# Strict alphabet and length: base64 decoding would otherwise skip foreign characters,
# and two spellings of one nonce would get two nonce-count histories.
_NONCE_RE: Final = re.compile(r"[A-Za-z0-9_-]{48}")
_NC_RE: Final = re.compile(r"[0-9a-fA-F]{8}")

_REQUIRED: Final = ("username", "realm", "nonce", "uri", "response")


class DigestServer:
    """Issues Digest challenges and verifies credentials for one realm.

    ``secret`` keys the nonce HMAC: share it between the nodes that must accept each
    other's nonces, keep it out of logs. ``clock`` returns seconds (wall clock by
    default; nonces carry a millisecond timestamp).

    ``issuer`` (4 bytes) names this server among those sharing the secret (a worker
    of a node). Nonce-count memory is per server, so a nonce is only ever *used* where
    it was issued: presented to another server, a correct digest is answered as stale
    and the client simply retries with a fresh nonce (RFC 7616 §3.3). A captured
    Authorization therefore cannot be replayed on a sibling that never saw its
    nonce-counts, and no shared store sits on the path of every request.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        *,
        nonce_ttl: float = 300.0,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        clock: Callable[[], float] = time.time,
        max_tracked_nonces: int = 100_000,
        issuer: bytes = bytes(_NONCE_ISSUER_BYTES),
    ) -> None:
        if len(issuer) != _NONCE_ISSUER_BYTES:
            raise ValueError(f"issuer must be {_NONCE_ISSUER_BYTES} bytes")
        if not realm or _has_control(realm):
            raise ValueError("realm must be non-empty and free of control characters")
        if len(secret) < 16:
            raise ValueError("secret must be at least 16 bytes")
        if not nonce_ttl > 0:
            raise ValueError("nonce_ttl must be > 0")
        if max_tracked_nonces < 1:
            raise ValueError("max_tracked_nonces must be >= 1")
        offered = {_require_algorithm(name) for name in algorithms}
        if not offered:
            raise ValueError("at least one algorithm is needed")
        self.realm: Final = realm
        self.nonce_ttl: Final = nonce_ttl
        self.algorithms: Final[tuple[str, ...]] = tuple(
            name for name in _STRENGTH if name in offered
        )
        self._secret = secret
        self._issuer = issuer
        self._clock = clock
        self._max_tracked = max_tracked_nonces
        # nonce → (issue time in ms, highest nonce-count accepted), least recent first
        self._counts: OrderedDict[str, tuple[int, int]] = OrderedDict()
        # Issue time of the newest nonce evicted from _counts: an untracked nonce at or
        # before it may have been used already, so it is only accepted as stale.
        self._evicted_up_to = -1
        self._opaque = self._b64(self._mac(b"opaque", realm.encode("utf-8"))[:12])
        # Unknown users are checked against a random HA1 so that they cost the same work
        # as known ones: response timing must not reveal which usernames exist.
        self._dummy_ha1 = {name: _hash(name, secrets.token_hex(16)) for name in self.algorithms}

    # -- challenges

    def challenge(self, *, stale: bool = False) -> list[str]:
        """WWW-Authenticate / Proxy-Authenticate values, one per algorithm, strongest
        first (RFC 8760 §2). All share one fresh nonce."""
        nonce = self._new_nonce()
        tail = ", stale=true" if stale else ""
        return [
            f"Digest realm={_quote(self.realm)}, nonce={_quote(nonce)}, "
            f'opaque={_quote(self._opaque)}, algorithm={name}, qop="auth"{tail}'
            for name in self.algorithms
        ]

    # -- verification

    def verify(
        self,
        header_value: str,
        method: str,
        ha1_lookup: Callable[[str, str], str | None],
        *,
        request_uri: str | None = None,
    ) -> AuthResult:
        """Check an Authorization / Proxy-Authorization value for a request ``method``.

        ``ha1_lookup(username, algorithm)`` returns the stored hex HA1 for this realm or
        None; its exceptions propagate (a store failure is not a wrong password). With
        ``request_uri`` the digest's ``uri`` must equal it exactly (RFC 7616 §3.4.6).
        """
        try:
            params = _parse_auth_value(header_value)
        except ValueError as exc:
            return _fail(f"malformed credentials: {exc}")
        scheme, fields = params
        if scheme.lower() != "digest":
            return _fail("unsupported scheme")
        return self.verify_fields(fields, method, ha1_lookup, request_uri=request_uri)

    def verify_fields(
        self,
        fields: dict[str, str],
        method: str,
        ha1_lookup: Callable[[str, str], str | None],
        *,
        request_uri: str | None = None,
    ) -> AuthResult:
        """``verify`` for credentials already parsed by ``parse_credentials`` (a caller
        that read them to find the realm need not parse them twice)."""
        claimed = fields.get("username")
        for name in _REQUIRED:
            if name not in fields:
                return _fail(f"missing {name}", claimed)
        if fields["realm"] != self.realm:
            return _fail("realm mismatch", claimed)
        algorithm = _canonical_algorithm(fields.get("algorithm", "MD5"))  # RFC 2617 default
        if algorithm is None:
            return _fail("unsupported algorithm", claimed)
        if algorithm not in self.algorithms:
            return _fail("algorithm not offered", claimed)
        qop = fields.get("qop")
        if qop is None:
            return _fail("qop required", claimed)  # we always offer qop (no RFC 2069)
        if qop.lower() != "auth":
            return _fail("unsupported qop", claimed)
        if "cnonce" not in fields or not fields["cnonce"]:
            return _fail("missing cnonce", claimed)
        if "nc" not in fields:
            return _fail("missing nc", claimed)
        if not _NC_RE.fullmatch(fields["nc"]):
            return _fail("malformed nc", claimed)
        if "opaque" in fields and not hmac.compare_digest(
            fields["opaque"].encode("utf-8"), self._opaque.encode("ascii")
        ):
            return _fail("opaque mismatch", claimed)
        if request_uri is not None and fields["uri"] != request_uri:
            return _fail("uri mismatch", claimed)
        checked = self._check_nonce(fields["nonce"])
        if checked is None:
            return _fail("invalid nonce", claimed)
        issued_ms, issuer = checked
        username = fields["username"]
        if not self._digest_matches(fields, username, method, algorithm, ha1_lookup):
            # Same reason for an unknown user and a wrong password: no user enumeration.
            return _fail("bad credentials", username)
        if not hmac.compare_digest(issuer, self._issuer):
            # Another server's nonce: its nonce-counts are not ours to check.
            return AuthResult(False, username, True, "stale nonce", username)
        return self._accept_fresh(fields["nonce"], issued_ms, int(fields["nc"], 16), username)

    # -- internals

    def _digest_matches(
        self,
        fields: dict[str, str],
        username: str,
        method: str,
        algorithm: str,
        ha1_lookup: Callable[[str, str], str | None],
    ) -> bool:
        stored = ha1_lookup(username, algorithm)
        ha1 = (stored if stored is not None else self._dummy_ha1[algorithm]).lower()
        expected = compute_response(
            ha1,
            nonce=fields["nonce"],
            method=method,
            uri=fields["uri"],
            algorithm=algorithm,
            qop="auth",
            nc=fields["nc"],
            cnonce=fields["cnonce"],
        )
        # Constant time, and on bytes so non-ASCII input cannot raise TypeError.
        given = fields["response"].lower().encode("utf-8")
        matches = hmac.compare_digest(expected.encode("ascii"), given)
        return matches and stored is not None

    def _accept_fresh(self, nonce: str, issued_ms: int, nc: int, username: str) -> AuthResult:
        # Only reached with a correct digest: stale=True tells the client to retry with a
        # new nonce without asking the user again (RFC 7616 §3.3 "stale").
        age = self._now_ms() - issued_ms
        if age > self.nonce_ttl * 1000 or age < -self.nonce_ttl * 1000:
            return AuthResult(False, username, True, "stale nonce", username)
        tracked = self._counts.get(nonce)
        if tracked is None and issued_ms <= self._evicted_up_to:
            return AuthResult(False, username, True, "stale nonce", username)
        last = 0 if tracked is None else tracked[1]
        if nc <= last:
            return AuthResult(False, None, False, "replayed nonce count", username)
        self._counts[nonce] = (issued_ms, nc)
        self._counts.move_to_end(nonce)
        while len(self._counts) > self._max_tracked:
            _, (evicted_ms, _) = self._counts.popitem(last=False)
            self._evicted_up_to = max(self._evicted_up_to, evicted_ms)
        return AuthResult(True, username, False, "ok", username)

    def _new_nonce(self) -> str:
        issued = self._now_ms().to_bytes(8, "big")
        body = issued + self._issuer + secrets.token_bytes(_NONCE_RANDOM_BYTES)
        return self._b64(body + self._mac(b"nonce", body)[:_NONCE_MAC_BYTES])

    def _check_nonce(self, nonce: str) -> tuple[int, bytes] | None:
        """The nonce's issue time in ms and its issuer if a server sharing our secret
        issued it, else None."""
        if not _NONCE_RE.fullmatch(nonce):
            return None
        raw = base64.urlsafe_b64decode(nonce)
        if len(raw) != _NONCE_BYTES:
            return None
        body, mac = raw[:-_NONCE_MAC_BYTES], raw[-_NONCE_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(b"nonce", body)[:_NONCE_MAC_BYTES]):
            return None
        return int.from_bytes(body[:8], "big"), body[8 : 8 + _NONCE_ISSUER_BYTES]

    def _mac(self, purpose: bytes, data: bytes) -> bytes:
        # The realm is bound in so a nonce of another realm sharing the secret fails.
        message = purpose + b"\x00" + self.realm.encode("utf-8") + b"\x00" + data
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def _now_ms(self) -> int:
        return max(0, int(self._clock() * 1000))

    @staticmethod
    def _b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _fail(reason: str, claimed: str | None = None) -> AuthResult:
    return AuthResult(False, None, False, reason, claimed)


# -------------------------------------------------------------------------- client

_MAX_CLIENT_NONCES: Final = 64


class DigestClient:
    """Answers Digest challenges for one set of credentials (tests, click-to-dial).

    Counts nonce uses itself (``nc``), so reusing a challenge for the next request yields
    nc=00000002 and so on, as RFC 7616 §3.4 requires.
    """

    def __init__(self, username: str, password: str) -> None:
        self.username: Final = username
        self._password = password
        self._nc: OrderedDict[str, int] = OrderedDict()

    def authorization(
        self, challenge_value: str, method: str, uri: str, *, cnonce: str | None = None
    ) -> str:
        """An Authorization / Proxy-Authorization value answering ``challenge_value``.

        Raises ValueError when the challenge is malformed or asks for something this
        module does not do (another scheme, a "-sess" algorithm, only auth-int).
        """
        fields = parse_challenge(challenge_value)
        if "realm" not in fields or "nonce" not in fields:
            raise ValueError("challenge lacks realm or nonce")
        realm, nonce = fields["realm"], fields["nonce"]
        algorithm = _require_algorithm(fields.get("algorithm", "MD5"))
        ha1 = compute_ha1(self.username, realm, self._password, algorithm)
        parts = [
            f"username={_quote(self.username)}",
            f"realm={_quote(realm)}",
            f"nonce={_quote(nonce)}",
            f"uri={_quote(uri)}",
        ]
        qops = {item.strip().lower() for item in fields.get("qop", "").split(",")} - {""}
        if not qops:
            # RFC 2069 compatibility: a server that offers no qop gets the old form.
            response = compute_response(
                ha1, nonce=nonce, method=method, uri=uri, algorithm=algorithm, qop=None
            )
            parts += [f"response={_quote(response)}", f"algorithm={algorithm}"]
        elif "auth" in qops:
            nc = f"{self._next_count(nonce):08x}"
            cnonce = cnonce if cnonce is not None else secrets.token_urlsafe(16)
            response = compute_response(
                ha1,
                nonce=nonce,
                method=method,
                uri=uri,
                algorithm=algorithm,
                qop="auth",
                nc=nc,
                cnonce=cnonce,
            )
            parts += [
                f"response={_quote(response)}",
                f"algorithm={algorithm}",
                f"cnonce={_quote(cnonce)}",
                "qop=auth",
                f"nc={nc}",
            ]
        else:
            raise ValueError("challenge offers no supported qop (only 'auth' is)")
        if "opaque" in fields:
            parts.append(f"opaque={_quote(fields['opaque'])}")
        return "Digest " + ", ".join(parts)

    def best_challenge(self, challenge_values: Iterable[str]) -> str | None:
        """The first value (servers list their preference first, RFC 8760 §2) whose
        algorithm and qop this client can answer, or None."""
        for value in challenge_values:
            try:
                fields = parse_challenge(value)
            except ValueError:
                continue
            if _canonical_algorithm(fields.get("algorithm", "MD5")) is None:
                continue
            qops = {item.strip().lower() for item in fields.get("qop", "").split(",")} - {""}
            if qops and "auth" not in qops:
                continue
            return value
        return None

    def _next_count(self, nonce: str) -> int:
        count = self._nc.get(nonce, 0) + 1
        self._nc[nonce] = count
        self._nc.move_to_end(nonce)
        while len(self._nc) > _MAX_CLIENT_NONCES:
            self._nc.popitem(last=False)
        return count
