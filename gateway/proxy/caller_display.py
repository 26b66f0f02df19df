"""The recognized caller's name on the phone's own display (issue #15 part 2).

When an inbound call's caller is in the contact index, the INVITE forwarded to the
phone carries the contact's name as the display-name of ``From`` and/or
``P-Asserted-Identity`` (the tenant's ``[tenants.caller_display]``, the phone
profile's ``caller_display``). The look-up itself lives above the proxy (the runtime's
``CallerNames``, which asks the recognizer); this module holds what the proxy does
with its answer, without I/O:

- the SIP path never waits on Redis beyond the tenant's ``wait_ms`` (default 0): a
  local-cache answer is used at once, anything later is too late for this INVITE;
- a name from a CRM is untrusted text: it is cleaned of everything a display could
  misread (control, format and private-use characters, lone surrogates, line breaks)
  and written as an RFC 3261 quoted-string, so no byte of it can end the header or
  start another one;
- only the display-name changes: URIs, tags and parameters stay as received, so dialog
  matching (by tags, §12) is unaffected; the original ``From`` goes back into the
  responses relayed to the caller, who sees its own header unchanged.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.config.caller_display import DISPLAY_HEADERS
from gateway.sip.headers import split_values

__all__ = [
    "DISPLAY_HEADERS",
    "MAX_DISPLAY_CHARS",
    "CallerNames",
    "Shown",
    "Wait",
    "clean_display",
    "quoted_display",
    "with_display",
    "with_display_all",
]

# Phone displays show 16-40 characters; a longer "name" is not a name.
MAX_DISPLAY_CHARS = 64
# Unicode categories never written: controls (Cc: CR, LF, NUL, ESC…), format characters
# (Cf: bidi overrides that would reverse what follows on the display, zero-width
# joiners), surrogates (Cs: not encodable), private use and unassigned (Co, Cn), line
# and paragraph separators (Zl, Zp).
_DROPPED = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


@dataclass(frozen=True, slots=True)
class Shown:
    """What a call's INVITE shows the callee: the name, where it came from, and in which
    headers (reported in ``call.offered`` as ``caller_display``)."""

    name: str  # cleaned (clean_display), unquoted
    answered_by: str  # "cache": the node's contact cache; "redis": a look-up in wait_ms
    headers: tuple[str, ...]  # a subset of DISPLAY_HEADERS, in that order
    uri: str  # the caller's URI as the call names it (for a P-Asserted-Identity we add)
    contact_source: str | None = None  # the contact source the name came from


@dataclass(frozen=True, slots=True)
class Wait:
    """Not in the local cache: the INVITE may wait this long for Redis. ``subject`` is
    what the runtime worked out for the look-up, handed back to ``ask``."""

    seconds: float
    subject: object = None


class CallerNames(Protocol):
    """The runtime's side (gateway/runtime/caller_names.py): the tenant's policy, the
    callee's profile and the recognizer."""

    def now(self, ctx: object) -> Shown | Wait | None:
        """What to show for this inbound INVITE (a ``ServerContext``) right now: a name,
        a wait for Redis, or None (nothing to show: off, no number, not a contact)."""
        ...

    def ask(self, wait: Wait, done: Callable[[Shown | None], None]) -> None:
        """Look the caller up in Redis and call ``done`` once, with the answer or None
        (a miss, an error). ``done`` may come after the proxy stopped waiting."""
        ...


def clean_display(name: str) -> str:
    """A contact's name as a phone may show it: normalized (NFC), without the characters
    a display could misread (see _DROPPED), runs of white space made one space, cut at
    MAX_DISPLAY_CHARS; "" when nothing is left."""
    text = unicodedata.normalize("NFC", name)
    kept = "".join(
        " " if ch.isspace() else ch
        for ch in text
        if ch.isspace() or unicodedata.category(ch) not in _DROPPED
    )
    return " ".join(kept.split())[:MAX_DISPLAY_CHARS].rstrip()


def quoted_display(name: str) -> str:
    """``name`` (already cleaned) as an RFC 3261 §25.1 quoted-string: ``\\`` and ``"``
    escaped as quoted-pairs, UTF-8 as qdtext."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def with_display(value: str, name: str) -> str:
    """A From/P-Asserted-Identity value (one name-addr or addr-spec, already validated)
    with ``name`` as its display-name; the URI and the header parameters unchanged.

    An addr-spec (``sip:a@b;tag=1``) becomes a name-addr: its parameters after the URI
    are header parameters (RFC 3261 §20.10), so they stay outside the brackets.
    """
    display = quoted_display(name)
    angle = _unquoted_index(value, "<")
    if angle >= 0:
        return f"{display} {value[angle:]}"
    uri, semi, params = value.strip(" \t").partition(";")
    return f"{display} <{uri}>{semi}{params}"


def with_display_all(value: str, name: str) -> str:
    """Every value of a comma-separated P-Asserted-Identity line (a sip: and a tel:
    identity, RFC 3325 §9.1) with ``name`` as its display-name."""
    return ", ".join(with_display(item, name) for item in split_values(value) if item)


def _unquoted_index(text: str, char: str) -> int:
    """The index of the first ``char`` outside a quoted-string, -1 if none."""
    quoted = escaped = False
    for index, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == char and not quoted:
            return index
    return -1
