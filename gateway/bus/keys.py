"""Redis names and wire formats of the event bus.

Every key of a tenant carries the hash tag ``{tenant}`` so that, on a Redis Cluster, all
of them live in one slot: the Lua script that appends and publishes touches them together.
The names here are fixed, so security/keys.py lists them among every tenant's keys
(what deleting a tenant unlinks, without SCAN).

Finding every stream (the age trimmer): not by SCAN, which on a cluster covers one node
and walks the whole keyspace; the tenants are the fields of ``{sipgw}:tenants``
(`TENANTS`, kept by the security directory: every configured tenant and every one made
with ``sipgw tenant create``), and `tenant_streams` names their streams:
``tenant_streams(await redis.hkeys(TENANTS))``; trimming a missing stream is a no-op.

Names
    ``{tenant}:events``   stream; one entry per event, one field ``e`` = msgpack of the
                          event dict (``CallEvent.to_dict()``). The entry id is the event's
                          ``seq`` (the resume cursor), e.g. ``1718000000000-0``.
    ``{tenant}:live``     pub/sub channel; one message per event.
    ``{tenant}:events:rewrite``  stream; a rewrite of ``{tenant}:events`` being built,
                          renamed over it when complete (rewrite.py)
    ``{tenant}:events:lock``     string; held while the stream is erased or rewritten

Live message format
    ``<seq as ASCII digits and one dash>`` ``\\n`` ``<the same msgpack payload>``

    e.g. ``b"1718000000000-3\\n\\x8a\\xa1v\\x01..."``. The seq is the stream id the same
    script call just got from XADD, so a live receiver knows where the event sits in the
    stream without a second round trip; only the first ``\\n`` separates (the payload is
    binary and may contain more of them).

Tenant ids are ``[a-z0-9-]{1,32}``: validated before they become part of a key, so no id
can contain ``}``, ``:`` or a glob character and reach another tenant's keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import msgpack

from gateway.security import keys as tenant_names

_TENANT = re.compile(r"[a-z0-9-]{1,32}")
# A stream id: milliseconds and a sequence number, both unsigned 64-bit in Redis.
_SEQ = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
U64 = 2**64 - 1

STREAM_FIELD = b"e"
EVENTS_SUFFIX = ":events"
# Every tenant stream as a glob (``{`` and ``}`` are not glob characters): for tests and
# an operator's check; the trimmer finds the streams through `TENANTS`.
EVENTS_PATTERN = "{*}" + EVENTS_SUFFIX
LIVE_SUFFIX = ":live"
# The tenants (hash: tenant id -> JSON record); the security directory keeps it.
TENANTS = tenant_names.TENANTS

SeqKey = tuple[int, int]


def validate_tenant(tenant: object) -> str:
    """Return `tenant` if it is a valid tenant id, else raise ValueError."""
    if not isinstance(tenant, str) or _TENANT.fullmatch(tenant) is None:
        raise ValueError(f"invalid tenant id {tenant!r}: expected 1-32 of [a-z0-9-]")
    return tenant


def is_valid_tenant(tenant: object) -> bool:
    return isinstance(tenant, str) and _TENANT.fullmatch(tenant) is not None


def events_key(tenant: str) -> str:
    return "{" + validate_tenant(tenant) + "}" + EVENTS_SUFFIX


def tenant_streams(tenants: Iterable[bytes | str]) -> list[str]:
    """The stream key of each valid tenant id in `tenants` (e.g. the fields of
    `TENANTS`); anything else is skipped."""
    names = (t.decode("ascii", "replace") if isinstance(t, bytes) else t for t in tenants)
    return [events_key(t) for t in names if is_valid_tenant(t)]


def rewrite_key(tenant: str) -> str:
    """Where a rewrite of the tenant's stream is built before it replaces it (rewrite.py)."""
    return events_key(tenant) + ":rewrite"


def edit_lock_key(tenant: str) -> str:
    """Held while entries of the tenant's stream are erased or rewritten (rewrite.py)."""
    return events_key(tenant) + ":lock"


def live_channel(tenant: str) -> str:
    return "{" + validate_tenant(tenant) + "}" + LIVE_SUFFIX


def tenant_of_events_key(key: bytes | str) -> str | None:
    """The tenant of a ``{tenant}:events`` stream key, or None for anything else."""
    name = key.decode("ascii", "replace") if isinstance(key, bytes) else key
    if not (name.startswith("{") and name.endswith("}" + EVENTS_SUFFIX)):
        return None
    tenant = name[1 : -len(EVENTS_SUFFIX) - 1]
    return tenant if is_valid_tenant(tenant) else None


def tenant_of_channel(channel: bytes | str) -> str | None:
    """The tenant of a ``{tenant}:live`` channel name, or None for anything else."""
    name = channel.decode("ascii", "replace") if isinstance(channel, bytes) else channel
    if not (name.startswith("{") and name.endswith("}" + LIVE_SUFFIX)):
        return None
    tenant = name[1 : -len(LIVE_SUFFIX) - 1]
    return tenant if is_valid_tenant(tenant) else None


def parse_seq(seq: object) -> SeqKey:
    """A stream id as a comparable (ms, n) tuple; ValueError (with a message a client can
    read) for anything that is not ``<digits>-<digits>`` within Redis' 64-bit range."""
    match = _SEQ.fullmatch(seq) if isinstance(seq, str) else None
    if match is None:
        raise ValueError(
            f"invalid event id {seq!r}: expected <milliseconds>-<sequence>, e.g. 1718000000000-0"
        )
    ms, n = int(match[1]), int(match[2])
    if ms > U64 or n > U64:
        raise ValueError(f"invalid event id {seq!r}: out of range")
    return ms, n


def validate_seq(seq: object) -> str:
    parse_seq(seq)
    assert isinstance(seq, str)
    return seq


def format_seq(key: SeqKey) -> str:
    return f"{key[0]}-{key[1]}"


def encode_payload(event_dict: dict[str, Any]) -> bytes:
    """The stream/live payload: msgpack of the event dict (encoded once per event)."""
    data: bytes = msgpack.packb(event_dict, use_bin_type=True)
    return data


def decode_payload(seq: str, payload: bytes) -> dict[str, Any]:
    """The event dict of a stream entry or live message, with ``seq`` filled in (the
    producer cannot know it before XADD, so the stored payload has it empty)."""
    try:
        data = msgpack.unpackb(payload, raw=False)
    except Exception as exc:  # msgpack raises several types for foreign bytes
        raise ValueError(f"event payload is not msgpack: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("event payload is not a map")
    data["seq"] = seq
    return data


def encode_live(seq: str, payload: bytes) -> bytes:
    """Build a live message (the Lua script does the same concatenation in Redis)."""
    return seq.encode("ascii") + b"\n" + payload


def seq_of_live(message: bytes) -> str:
    """The seq of a live message, its payload not decoded; ValueError if it has none."""
    head, sep, _ = message.partition(b"\n")
    if not sep:
        raise ValueError("live message without a seq separator")
    seq = head.decode("ascii", "replace")
    parse_seq(seq)
    return seq


def decode_live(message: bytes) -> tuple[str, dict[str, Any]]:
    """Split and decode a live message; ValueError if it is not one of ours."""
    head, sep, payload = message.partition(b"\n")
    if not sep:
        raise ValueError("live message without a seq separator")
    seq = head.decode("ascii", "replace")
    parse_seq(seq)
    return seq, decode_payload(seq, payload)
