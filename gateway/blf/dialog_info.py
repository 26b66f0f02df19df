"""The RFC 4235 ``application/dialog-info+xml`` body, and the dialog a watcher sees of
one call event.

A call event (docs/events.md) is the gateway's forking-safe, order-safe view of one
call: one ``call_id`` however many phones ring, one state after each event. So an
extension's dialog here is one *call*, never one branch: a CANCELled fork is not a
dialog of its own and never shows "terminated" while another phone rings
(kamailio#2906, opensips#94).

States (RFC 4235 §3.7.1), from the call's state:

    offered → trying,  delivered → early,  established / held → confirmed,
    failed / cleared → terminated (with the RFC's event: cancelled, rejected, replaced,
    timeout, error; a normal hang-up says nothing, we cannot tell who hung up)

Everything in a body that came from outside (numbers, names from a CRM, Call-IDs and
tags) is untrusted text: escaped, stripped of what XML 1.0 cannot carry, and bounded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from gateway.config.blf import CallerShown

NAMESPACE = "urn:ietf:params:xml:ns:dialog-info"
CONTENT_TYPE = "application/dialog-info+xml"

_STATES = {
    "offered": "trying",
    "delivered": "early",
    "established": "confirmed",
    "held": "confirmed",
    "failed": "terminated",
    "cleared": "terminated",
}
# RFC 4235 §4.1 "event" of a terminated dialog, from the call's normalized cause.
_ENDINGS = {
    "cancelled": "cancelled",
    "busy": "rejected",
    "rejected": "rejected",
    "replaced": "replaced",
    "no_answer": "timeout",
    "timeout": "timeout",
    "error": "error",
}
# What XML 1.0 cannot carry at all (§2.2 Char), even escaped.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_MAX_TEXT = 128


@dataclass(frozen=True, slots=True)
class Party:
    """One end of a dialog as the body shows it: a URI and maybe a display name."""

    uri: str
    display: str | None = None
    named: bool = False  # the display is a recognized contact's name (not the number)


@dataclass(frozen=True, slots=True)
class DialogView:
    """One call as the watchers of one extension see it."""

    id: str  # the gateway's call_id: stable for the whole call
    state: str  # trying | early | confirmed | terminated
    direction: str  # initiator | recipient (RFC 4235 §4.1.2)
    local: Party  # the watched extension
    remote: Party | None  # None: the tenant shows nothing of the other party
    call_id: str | None = None  # the SIP Call-ID and tags (a phone's pickup needs them)
    local_tag: str | None = None
    remote_tag: str | None = None
    ending: str | None = None  # terminated: cancelled, rejected, replaced, timeout, error


def state_of(event: dict[str, Any]) -> str | None:
    """The dialog state a call event says, None when it says none (call.recognized)."""
    state = event.get("state")
    return _STATES.get(state) if isinstance(state, str) else None


def ending_of(event: dict[str, Any]) -> str | None:
    cause = event.get("cause")
    normalized = cause.get("normalized") if isinstance(cause, dict) else None
    return _ENDINGS.get(normalized) if isinstance(normalized, str) else None


def view_of(
    event: dict[str, Any],
    *,
    extension: str,
    initiator: bool,
    domain: str,
    caller: CallerShown,
    state: str,
) -> DialogView:
    """The dialog of ``extension`` in the call ``event`` is about. ``initiator``: the
    extension placed the call (outbound, or the caller of an internal call)."""
    remote_party = event.get("called" if initiator else "calling")
    remote = _remote(remote_party, event.get("lookup"), domain, caller)
    from_tag, to_tag = _text(event.get("from_tag")), _text(event.get("to_tag"))
    return DialogView(
        id=_text(event.get("call_id")) or "",
        state=state,
        direction="initiator" if initiator else "recipient",
        local=Party(f"sip:{extension}@{domain}"),
        remote=remote,
        call_id=_text(event.get("sip_call_id")),
        local_tag=from_tag if initiator else to_tag,
        remote_tag=to_tag if initiator else from_tag,
        ending=ending_of(event) if state == "terminated" else None,
    )


def updated(view: DialogView, newer: DialogView) -> DialogView:
    """``newer`` without losing what only an earlier event knew (a tag, the name)."""
    return replace(
        newer,
        call_id=newer.call_id or view.call_id,
        local_tag=newer.local_tag or view.local_tag,
        remote_tag=newer.remote_tag or view.remote_tag,
        remote=_better(view.remote, newer.remote),
    )


def _better(old: Party | None, new: Party | None) -> Party | None:
    """Only call.offered and call.recognized carry the look-up: a later event without it
    keeps the name found before."""
    if new is None or (old is not None and old.named and not new.named):
        return old
    return new


def _remote(party: object, lookup: object, domain: str, caller: CallerShown) -> Party | None:
    if caller == "none" or not isinstance(party, dict):
        return None
    number = _text(party.get("number_e164")) or _text(party.get("number_raw"))
    if not number:
        return None
    display, named = number, False
    if caller == "name" and isinstance(lookup, dict) and lookup.get("status") == "hit":
        contact = lookup.get("contact")
        name = _text(contact.get("name")) if isinstance(contact, dict) else None
        if name:
            display, named = name, True
    # A URI we build from the number (in the tenant's domain), not the signalled one: the
    # trunk's address in it is none of a colleague's business, and a number is what a
    # phone can dial back.
    uri_user = re.sub(r"[^0-9A-Za-z+*#._-]", "", number) or "anonymous"
    return Party(f"sip:{uri_user}@{domain}", display, named)


def _text(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return _NOT_XML.sub("", value)[:_MAX_TEXT] or None


def render(entity: str, version: int, dialogs: list[DialogView]) -> bytes:
    """A full-state dialog-info document (RFC 4235 §4.1): every dialog of the entity."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<dialog-info xmlns="{NAMESPACE}" version="{version}" state="full"'
        f" entity={_attr(entity)}>",
    ]
    for dialog in dialogs:
        lines.extend(_dialog(dialog))
    lines.append("</dialog-info>")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _dialog(d: DialogView) -> list[str]:
    attrs = f"id={_attr(d.id)}"
    if d.call_id:
        attrs += f" call-id={_attr(d.call_id)}"
    if d.local_tag:
        attrs += f" local-tag={_attr(d.local_tag)}"
    if d.remote_tag:
        attrs += f" remote-tag={_attr(d.remote_tag)}"
    attrs += f" direction={_attr(d.direction)}"
    event = f" event={_attr(d.ending)}" if d.ending else ""
    lines = [f"  <dialog {attrs}>", f"    <state{event}>{d.state}</state>"]
    lines.extend(_participant("local", d.local))
    if d.remote is not None:
        lines.extend(_participant("remote", d.remote))
    lines.append("  </dialog>")
    return lines


def _participant(tag: str, party: Party) -> list[str]:
    display = f" display={_attr(party.display)}" if party.display else ""
    return [
        f"    <{tag}>",
        f"      <identity{display}>{escape(_clean(party.uri))}</identity>",
        f"      <target uri={_attr(party.uri)}/>",
        f"    </{tag}>",
    ]


def _attr(text: str) -> str:
    # quoteattr escapes &, <, > and the quote; tabs and newlines too, so an attribute
    # value survives XML's attribute-value normalization unchanged.
    return quoteattr(_clean(text), {"\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})


def _clean(text: str) -> str:
    return _NOT_XML.sub("", text)[:_MAX_TEXT]
