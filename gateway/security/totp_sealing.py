"""TOTP secrets sealed at rest: AES-256-GCM with a key that never lives in Redis.

Whoever reads ``{t}:totp`` (a Redis dump, a replica, a backup, a stray ``MONITOR``)
would otherwise hold every user's second factor. So the secret is stored sealed:

    "v1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>"

- The key is derived with HKDF-SHA256 from ``[security] totp_key``, or, when that is
  not set, from ``[sip] auth_secret`` (every node of a cluster shares it already, or
  their nonces would not verify on one another). Both are node configuration, never
  written to Redis. HKDF with its own ``info`` keeps the derived key independent of
  the nonce HMAC that uses ``auth_secret`` itself.
- AES-GCM (the ``cryptography`` package, a dependency already) with a random 96-bit
  nonce per seal: authenticated, so a changed byte fails to open instead of giving
  another secret.
- The associated data is the tenant and the user: a sealed secret copied to another
  user's field does not open (it would let one user log in with another's phone).
- The key id (4 bytes of HKDF output under another ``info``: it tells nothing of the
  key) says which key sealed it, so rotation is possible: secrets sealed with an older
  key (``[security] totp_previous_key``, or ``auth_secret`` once a dedicated
  ``totp_key`` is set) still open, and are sealed again with the current key the next
  time they are used (second_factor.py).

Secrets written before sealing existed are plain base32; ``unseal`` is never asked for
those (second_factor.py reads them as they are, and seals them on their next use).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.config.model import Settings

VERSION = "v1"
_NONCE_BYTES = 12  # GCM's 96-bit nonce; random, so at most 2**32 seals per key (NIST
# SP 800-38D §8.3): one per enrolment and per key change, far below it.
_KEY_INFO = b"sipgw totp-secret aes-256-gcm v1"
_ID_INFO = b"sipgw totp-secret key id v1"


class SealError(ValueError):
    """A sealed secret that does not open: unknown key id, altered bytes, another
    user's, or not a sealed secret at all. The message names no secret."""


@dataclass(frozen=True, repr=False)
class _Key:
    id: str
    aead: AESGCM = field(repr=False)


def _hkdf(material: str, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(
        material.encode("utf-8")
    )


def _key(material: str) -> _Key:
    return _Key(_hkdf(material, _ID_INFO, 4).hex(), AESGCM(_hkdf(material, _KEY_INFO, 32)))


def _associated_data(tenant: str, user: str) -> bytes:
    # Tenant ids and usernames never hold NUL (keys.py, directory.USERNAME): unambiguous.
    return b"\0".join((VERSION.encode(), tenant.encode(), user.encode()))


class KeyRing:
    """The key that seals, and the older ones that still open."""

    def __init__(self, current: str | None, *older: str | None) -> None:
        materials = [m for m in (current, *older) if m]
        keys = [_key(m) for m in dict.fromkeys(materials)]
        self._current = keys[0] if keys else None
        self._by_id = {k.id: k for k in reversed(keys)}  # the current key wins a clash

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        """``totp_key`` seals; ``totp_previous_key`` and ``auth_secret`` open too. With
        no ``totp_key``, ``auth_secret`` seals; with neither, nothing can be sealed."""
        security = settings.security
        return cls(security.totp_key, security.totp_previous_key, settings.sip.auth_secret)

    def __repr__(self) -> str:
        return f"KeyRing(current={self.current_id!r}, ids={sorted(self._by_id)!r})"

    @property
    def can_seal(self) -> bool:
        return self._current is not None

    @property
    def current_id(self) -> str | None:
        return None if self._current is None else self._current.id

    def seal(self, secret: str, *, tenant: str, user: str) -> str:
        """The base32 ``secret`` of ``user`` sealed with the current key."""
        if self._current is None:
            raise SealError("no key to seal with: set [security] totp_key")
        nonce = secrets.token_bytes(_NONCE_BYTES)
        box = self._current.aead.encrypt(
            nonce, secret.encode("ascii"), _associated_data(tenant, user)
        )
        text = base64.urlsafe_b64encode(nonce + box).decode("ascii").rstrip("=")
        return f"{VERSION}.{self._current.id}.{text}"

    def unseal(self, sealed: str, *, tenant: str, user: str) -> tuple[str, bool]:
        """The base32 secret, and whether it was sealed with the current key (False:
        seal it again). Raises ``SealError``."""
        version, _, rest = sealed.partition(".")
        key_id, _, text = rest.partition(".")
        if version != VERSION or not text:
            raise SealError("not a sealed secret")
        key = self._by_id.get(key_id)
        if key is None:
            raise SealError(f"sealed with key {key_id!r}, which this node does not have")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            clear = key.aead.decrypt(
                raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _associated_data(tenant, user)
            )
            secret = clear.decode("ascii")
        except (InvalidTag, binascii.Error, ValueError):
            problem = f"does not open with key {key_id!r}: altered, or another user's"
            raise SealError(problem) from None
        return secret, key is self._current
