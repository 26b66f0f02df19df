"""The pure parts of the subscription endpoints: limits, filters, encoding, SSE framing."""

from __future__ import annotations

import json

import msgpack
import pytest
from fastapi import HTTPException

from gateway.api.events import (
    EncodedCache,
    Frame,
    Subscribers,
    _sse,
    checked_since,
    control,
    subscription_filter,
)
from gateway.security.principal import Principal

ADMIN = Principal("acme", "203", "admin")
USER = Principal("acme", "202", "user", frozenset({"202"}))
SYNC = Principal("acme", None, "sync")
ACME_EXTENSIONS = frozenset({"201", "202", "203"})


def test_subscriber_limit_per_tenant() -> None:
    subs = Subscribers(limit=2)
    assert subs.enter("acme") and subs.enter("acme")
    assert not subs.enter("acme")  # the third one: 429
    assert subs.enter("globex")  # other tenants are counted apart
    subs.leave("acme")
    assert subs.enter("acme")
    assert subs.total == 3


def test_an_event_is_encoded_once_per_format() -> None:
    cache = EncodedCache(size=2)
    event = {"type": "call.offered", "n": 1}
    first = cache.get("acme", "1-0", "json", event)
    assert json.loads(first) == {"type": "call.offered", "n": 1, "seq": "1-0"}
    assert cache.get("acme", "1-0", "json", {"changed": True}) is first
    assert msgpack.unpackb(cache.get("acme", "1-0", "msgpack", event)) == json.loads(first)
    cache.get("acme", "2-0", "json", event)  # evicts the oldest (size 2)
    assert cache.get("acme", "1-0", "json", {"changed": True}) != first


def test_filters_follow_the_principal() -> None:
    # A user sees its own extensions by default; an admin everything of its tenant.
    assert subscription_filter(USER, [], [], ACME_EXTENSIONS).extensions == {"202"}
    assert subscription_filter(ADMIN, [], ["call.offered"], ACME_EXTENSIONS).extensions == set()
    assert subscription_filter(ADMIN, ["201"], [], ACME_EXTENSIONS).extensions == {"201"}
    for principal, extensions in ((USER, ["201"]), (ADMIN, ["301"]), (SYNC, [])):
        with pytest.raises(HTTPException) as refused:
            subscription_filter(principal, extensions, [], ACME_EXTENSIONS)
        assert refused.value.status_code == 403


def test_since_is_checked() -> None:
    assert checked_since(None) is None and checked_since("") is None
    assert checked_since("1732270917250-3") == "1732270917250-3"
    with pytest.raises(HTTPException) as bad:
        checked_since("yesterday")
    assert bad.value.status_code == 400 and "since" in str(bad.value.detail)


def test_sse_framing() -> None:
    event = Frame("event", b'{"type":"call.offered"}', "5-0", "call.offered")
    assert _sse(event) == b'id: 5-0\nevent: call.offered\ndata: {"type":"call.offered"}\n\n'
    beat = control("json", {"type": "sipgw.heartbeat", "last_seq": "5-0"})
    assert _sse(beat) == b": heartbeat\n\n"
    overflow = control("json", {"type": "sipgw.overflow", "last_seq": "5-0"}, final=True)
    assert _sse(overflow).startswith(b"event: sipgw.overflow\ndata: ")
