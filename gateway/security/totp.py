"""Time-based one-time passwords: RFC 4226 HOTP and RFC 6238 TOTP, sans-I/O.

A code is HOTP (RFC 4226 §5.3: HMAC over the 8-byte big-endian counter, dynamic
truncation, modulo 10^digits) with the counter T = floor(unix time / 30) (RFC 6238
§4.2). What authenticator apps read is the ``otpauth://totp/`` URI of Google
Authenticator's Key Uri Format: SHA-1, 6 digits, 30 s, the secret in unpadded base32.

Verification accepts the time step of ``now`` and one either side (RFC 6238 §5.2
allows "at most one time step" of network delay; a phone's clock a little off needs
the other side), and says which step matched: the caller refuses any step at or
before the last one it accepted (§5.2, "MUST NOT accept the second attempt of the
same OTP"), which Redis keeps per user (second_factor.py). Codes are compared in
constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from typing import Literal
from urllib.parse import quote, urlencode

Algorithm = Literal["sha1", "sha256", "sha512"]
PERIOD = 30  # seconds per time step (RFC 6238 §4.1 default, what every app assumes)
DIGITS = 6
SECRET_BYTES = 20  # 160 bits: the HMAC-SHA1 output size, RFC 4226 §4 R6's recommendation
WINDOW = 1  # time steps accepted either side of now


def hotp(key: bytes, counter: int, *, digits: int = DIGITS, algorithm: Algorithm = "sha1") -> str:
    """RFC 4226 §5.3: the ``digits``-digit code of ``counter``."""
    mac = hmac.new(key, struct.pack(">Q", counter), getattr(hashlib, algorithm)).digest()
    offset = mac[-1] & 0x0F
    (value,) = struct.unpack(">I", mac[offset : offset + 4])
    return str((value & 0x7FFFFFFF) % 10**digits).zfill(digits)


def time_step(at: float, *, period: int = PERIOD) -> int:
    """RFC 6238 §4.2: T = floor((unix time - T0) / X), T0 = 0."""
    return int(at // period)


def totp(
    key: bytes,
    at: float,
    *,
    digits: int = DIGITS,
    algorithm: Algorithm = "sha1",
    period: int = PERIOD,
) -> str:
    """The code of the time step ``at`` (Unix time) falls in."""
    return hotp(key, time_step(at, period=period), digits=digits, algorithm=algorithm)


def matching_step(key: bytes, code: str, at: float, *, window: int = WINDOW) -> int | None:
    """The time step within ``window`` of ``at`` whose code is ``code``, else None.
    Every candidate is computed and compared, so the time taken does not tell which
    (if any) matched."""
    if len(code) != DIGITS or not code.isascii() or not code.isdigit():
        return None
    now = time_step(at)
    found = None
    for step in range(now - window, now + window + 1):
        if hmac.compare_digest(hotp(key, step), code) and found is None:
            found = step
    return found


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def to_base32(key: bytes) -> str:
    """The secret as authenticator apps take it: RFC 4648 base32, no padding."""
    return base64.b32encode(key).decode("ascii").rstrip("=")


def from_base32(text: str) -> bytes:
    cleaned = text.replace(" ", "").upper()
    return base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))


def provisioning_uri(key: bytes, *, issuer: str, account: str) -> str:
    """``otpauth://totp/Issuer:account?secret=…&issuer=…&algorithm=SHA1&digits=6&period=30``
    (the Key Uri Format: the issuer both in the label and as a parameter)."""
    label = quote(f"{issuer}:{account}", safe=":@")
    query = urlencode(
        {
            "secret": to_base32(key),
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": DIGITS,
            "period": PERIOD,
        },
        quote_via=quote,
    )
    return f"otpauth://totp/{label}?{query}"
