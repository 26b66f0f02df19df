"""Standard Webhooks signatures (https://www.standardwebhooks.com/, "Signature scheme").

The secret is ``whsec_`` + base64 of 32 random bytes; those bytes are the HMAC key.
What is signed: ``<webhook-id>.<webhook-timestamp>.<body>``, with HMAC-SHA256; the
header is ``v1,<base64 of the MAC>`` (space-separated when there are several, as during
a secret rotation; the gateway sends one).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

PREFIX = "whsec_"
KEY_BYTES = 32


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def is_secret(text: object) -> bool:
    if not isinstance(text, str) or not text.startswith(PREFIX):
        return False
    try:
        return len(base64.b64decode(text[len(PREFIX) :], validate=True)) >= 24
    except (binascii.Error, ValueError):
        return False


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value of one attempt."""
    key = base64.b64decode(secret.removeprefix(PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> list[tuple[str, str]]:
    """The three Standard Webhooks headers of one attempt."""
    return [
        ("webhook-id", msg_id),
        ("webhook-timestamp", str(timestamp)),
        ("webhook-signature", signature(secret, msg_id, timestamp, body)),
    ]
