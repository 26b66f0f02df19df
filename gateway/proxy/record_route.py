"""Signed Record-Route: in-dialog requests are relayed only for dialogs we set up.

A proxy that record-routes (RFC 3261 §16.6 step 4) later receives the dialog's requests
with its own URI in Route and forwards them to the Request-URI: the remote target, which
the endpoints chose. A Route naming us is trivial to forge, so without a check one
datagram with a To tag, ``Route: <sip:gateway;lr>`` and any Request-URI would be relayed
anywhere from the gateway's trusted address (issue #11: into our own Redis, or a call to
a premium number). Kamailio's answer is its dialog module or an ``ftag`` check; ours is
a signature in the Record-Route URI itself, so no state is kept and every worker and
node sharing ``auth_secret`` can check what another one recorded.

The signature is an HMAC over the Call-ID and the From tag of the request that created
the dialog: the dialog identifier as far as the proxy knows it (the To tag comes later,
from the callee). Requests from the caller carry that tag in From, requests from the
callee in To, so both are tried. It is written in lower-case hex: some elements fold
URI parameter values to lower case, which RFC 3261 §19.1.4 allows.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

PARAM = "sg"
_LENGTH = 20  # hex digits: 80 bits, a forgery costs 2**80 tries


class RouteSigner:
    def __init__(self, secret: bytes) -> None:
        # A key of its own, so a nonce MAC can never be replayed as a route signature.
        self._key = hmac.new(secret, b"sipgw record-route v1", hashlib.sha256).digest()

    def sign(self, call_id: str, tag: str) -> str:
        message = f"{call_id}\x00{tag}".encode("utf-8", "surrogateescape")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:_LENGTH]

    def verify(self, signature: str | None, call_id: str, tags: Iterable[str | None]) -> bool:
        """``signature`` was made by us for this Call-ID and one of ``tags``."""
        if signature is None or len(signature) != _LENGTH:
            return False
        given = signature.lower().encode("ascii", "replace")
        return any(
            hmac.compare_digest(self.sign(call_id, tag).encode("ascii"), given)
            for tag in tags
            if tag
        )
