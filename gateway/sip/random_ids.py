"""Random identifiers for the hot path: tags, branch ids, Call-IDs (RFC 3261 §19.3),
event ids (UUIDv7).

They must be unique and unguessable (a guessed branch would let a stranger CANCEL a
call), so they come from the operating system's CSPRNG, like ``secrets.token_hex``;
but one ``os.urandom`` call per id is a system call per message. The bytes are drawn
4 KiB at a time and handed out in slices, each byte once.
"""

from __future__ import annotations

import os

_POOL_SIZE = 4096
_pool = b""
_used = 0


def random_bytes(nbytes: int) -> bytes:
    """``nbytes`` random bytes, each handed out once."""
    global _pool, _used
    if _used + nbytes > len(_pool):
        _pool = os.urandom(max(_POOL_SIZE, nbytes))
        _used = 0
    start = _used
    _used += nbytes
    return _pool[start:_used]


def random_hex(nbytes: int) -> str:
    """``nbytes`` random bytes as ``2 * nbytes`` lower-case hex digits."""
    return random_bytes(nbytes).hex()
