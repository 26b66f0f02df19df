"""Token format and hashing, principals (gateway.security.tokens, .principal)."""

from __future__ import annotations

import hashlib

from gateway.security.principal import Principal
from gateway.security.tokens import (
    TOKEN_LENGTH,
    LoginRefused,
    Token,
    looks_like_token,
    new_token,
    token_hash,
    token_id,
)


def test_token_format() -> None:
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    for bearer in tokens:
        assert len(bearer) == TOKEN_LENGTH == 43
        assert looks_like_token(bearer)
        assert set(bearer) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )


def test_token_is_stored_as_its_sha256() -> None:
    bearer = new_token()
    digest = token_hash(bearer)
    assert digest == hashlib.sha256(bearer.encode()).hexdigest()
    assert len(digest) == 64 and bearer not in digest
    assert token_id(digest) == digest[:16]


def test_malformed_tokens_are_recognized() -> None:
    good = new_token()
    for bad in ("", good[:-1], good + "A", good[:-1] + "=", good[:-1] + "+", " " + good[1:]):
        assert not looks_like_token(bad)


def test_token_repr_hides_the_bearer() -> None:
    principal = Principal("acme", "alice", "user", frozenset({"201"}), "abcd", 1.0)
    token = Token(bearer=new_token(), principal=principal)
    assert token.bearer not in repr(token)
    assert (token.tenant, token.user, token.role) == ("acme", "alice", "user")
    assert token.expires_at == 1.0
    assert token.extensions == frozenset({"201"})
    assert LoginRefused("throttled", 3.0).retry_after == 3.0


def test_principal_visibility() -> None:
    user = Principal("acme", "alice", "user", frozenset({"201", "202"}))
    admin = Principal("acme", "boss", "admin")
    sync = Principal("acme", None, "sync")
    assert user.may_see_extension("201") and user.may_see_extension("202")
    assert not user.may_see_extension("203")
    assert admin.may_see_extension("999") and admin.is_admin
    assert not sync.may_see_extension("201")
    for p in (user, admin, sync):
        assert p.may_see_tenant("acme") and not p.may_see_tenant("globex")
