"""Subscription tickets: how a browser opens ``/v1/events`` without a token in the URL.

A WebSocket or an ``EventSource`` cannot send an ``Authorization`` header, and a bearer
token written into a URL ends up in proxy logs and browser history, where it stays good
for hours. So a logged-in client trades its token (in the header of
``POST /v1/events/ticket``) for a ticket: 256 random bits, good for opening one
subscription within ``TICKET_TTL`` seconds, and for nothing else.

A ticket names its tenant (``acme.<43 characters>``), so whichever node is handed it
finds its key in that tenant's hash slot. Redis keeps only its SHA-256, like a token's,
with the hash of the token it stands for; GETDEL takes it in one step, so of two
subscriptions presenting the same ticket on any two nodes exactly one gets it.
The subscription it opens is the token's: it is checked again like one, and ends when
the token is revoked or expires or its user is removed.
"""

from __future__ import annotations

import hashlib
import re
import secrets

TICKET_TTL = 30  # seconds: enough for a page to open its subscription after fetching it
# Tickets one token may be issued within TICKET_TTL seconds. A client needs one per
# (re)connection; the cap bounds the keys a token holder can make Redis keep.
MAX_TICKETS_PER_TOKEN = 30
_FORMAT = re.compile(r"(?P<tenant>[a-z0-9-]{1,32})\.(?P<secret>[A-Za-z0-9_-]{43})")


def new_ticket(tenant: str) -> str:
    """A fresh ticket of ``tenant``: its id, a dot, 256 random bits in base64url."""
    return f"{tenant}.{secrets.token_urlsafe(32)}"


def parse_ticket(text: str) -> tuple[str, str] | None:
    """The tenant of a ticket and the hash it is stored under; None for anything that
    is not shaped like a ticket (refused without a look-up)."""
    match = _FORMAT.fullmatch(text)
    if match is None:
        return None
    return match["tenant"], hashlib.sha256(text.encode("ascii")).hexdigest()
