"""Digest authentication: RFC 2617 / RFC 7616 vectors, server checks, client answers."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway.sip.digest as digest_module
from gateway.sip.digest import (
    SUPPORTED_ALGORITHMS,
    AuthResult,
    DigestClient,
    DigestServer,
    compute_ha1,
    compute_response,
    parse_challenge,
    parse_credentials,
)

# RFC 7616 §3.9.1
RFC7616_REALM = "http-auth@example.org"
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_RESPONSES = {
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}

REALM = "sipgw.test"
SECRET = b"0123456789abcdef0123456789abcdef"
PASSWORDS = {"alice": "Secr3t!pass", "bob": "hunter2-Hunter2"}


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def lookup(username: str, algorithm: str) -> str | None:
    password = PASSWORDS.get(username)
    return None if password is None else compute_ha1(username, REALM, password, algorithm)


def make_server(clock: Clock | None = None, **kwargs: object) -> DigestServer:
    return DigestServer(REALM, SECRET, clock=clock or Clock(), **kwargs)  # type: ignore[arg-type]


def answer(challenge: str, username: str = "alice", password: str | None = None) -> str:
    client = DigestClient(username, PASSWORDS.get(username, "x") if password is None else password)
    return client.authorization(challenge, "REGISTER", "sip:sipgw.test")


# ------------------------------------------------------------------------ vectors


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_rfc7616_example(algorithm: str) -> None:
    ha1 = compute_ha1("Mufasa", RFC7616_REALM, "Circle of Life", algorithm)
    response = compute_response(
        ha1,
        nonce=RFC7616_NONCE,
        method="GET",
        uri="/dir/index.html",
        algorithm=algorithm,
        qop="auth",
        nc="00000001",
        cnonce=RFC7616_CNONCE,
    )
    assert response == RFC7616_RESPONSES[algorithm]


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_rfc7616_example_through_the_client(algorithm: str) -> None:
    challenge = (
        f'Digest realm="{RFC7616_REALM}", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"'
    )
    client = DigestClient("Mufasa", "Circle of Life")
    value = client.authorization(challenge, "GET", "/dir/index.html", cnonce=RFC7616_CNONCE)
    fields = parse_credentials(value)
    assert fields == {
        "username": "Mufasa",
        "realm": RFC7616_REALM,
        "nonce": RFC7616_NONCE,
        "uri": "/dir/index.html",
        "response": RFC7616_RESPONSES[algorithm],
        "algorithm": algorithm,
        "cnonce": RFC7616_CNONCE,
        "qop": "auth",
        "nc": "00000001",
        "opaque": RFC7616_OPAQUE,
    }
    again = parse_credentials(
        client.authorization(challenge, "GET", "/dir/index.html", cnonce=RFC7616_CNONCE)
    )
    assert again["nc"] == "00000002"  # RFC 7616 §3.4: nc counts uses of a nonce


def test_rfc2617_example() -> None:
    # RFC 2617 §3.5 (note "Circle Of Life" with a capital O there).
    ha1 = compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    response = compute_response(
        ha1,
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        method="GET",
        uri="/dir/index.html",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


def test_rfc2069_form_without_qop() -> None:
    client = DigestClient("Mufasa", "Circle Of Life")
    value = client.authorization(
        'Digest realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093"',
        "GET",
        "/dir/index.html",
    )
    fields = parse_credentials(value)
    assert "qop" not in fields and "nc" not in fields and "cnonce" not in fields
    ha1 = compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    assert fields["response"] == compute_response(
        ha1,
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        method="GET",
        uri="/dir/index.html",
        qop=None,
    )


def test_supported_algorithms() -> None:
    assert SUPPORTED_ALGORITHMS[-2:] == ("SHA-256", "MD5")
    assert set(SUPPORTED_ALGORITHMS) <= {"SHA-512-256", "SHA-256", "MD5"}
    assert compute_ha1("a", "b", "c", "sha-256") == compute_ha1("a", "b", "c", "SHA-256")
    for bad in ("MD5-sess", "SHA-256-sess", "SHA-1", ""):
        with pytest.raises(ValueError):
            compute_ha1("a", "b", "c", bad)


# ------------------------------------------------------------------------ parsing


def test_parse_credentials_handles_quotes_escapes_and_commas() -> None:
    value = (
        'Digest  username="al\\"ice, the \\\\ great" ,realm="r,1",, nonce=abc,'
        ' uri="sip:x@y;transport=tcp", qop=auth, nc=00000001, response="00", OPAQUE=""'
    )
    assert parse_credentials(value) == {
        "username": 'al"ice, the \\ great',
        "realm": "r,1",
        "nonce": "abc",
        "uri": "sip:x@y;transport=tcp",
        "qop": "auth",
        "nc": "00000001",
        "response": "00",
        "opaque": "",
    }


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "Digest",
        "Digest ,, ,",
        "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
        'Digest username="unterminated',
        'Digest username="a\\',
        "Digest username=a\r\nX-Injected: 1",
        "Digest =x",
        "Digest username",
        "Digest username=",
        "Digest username a",
        'Digest username="a" realm="b"',
        'Digest username="a", username="b"',
        "Digest\x00 username=a",
        "Digest" + ", a=b" * 40,
        "Digest username=" + "a" * 5000,
        '"Digest" username=a',
        "Dig(est username=a",
    ],
)
def test_parse_rejects_garbage(value: str) -> None:
    with pytest.raises(ValueError):
        parse_credentials(value)
    with pytest.raises(ValueError):
        parse_challenge(value)


def test_parse_challenge() -> None:
    server = make_server()
    for value in server.challenge(stale=True):
        fields = parse_challenge(value)
        assert fields["realm"] == REALM
        assert fields["qop"] == "auth"
        assert fields["stale"] == "true"
        assert re.fullmatch(r"[A-Za-z0-9_-]{48}", fields["nonce"])


# ------------------------------------------------------------------------ server


def test_challenge_lists_strongest_first_with_one_nonce() -> None:
    server = DigestServer(REALM, SECRET, algorithms=("MD5", "SHA-256"))
    values = server.challenge()
    assert [parse_challenge(v)["algorithm"] for v in values] == ["SHA-256", "MD5"]
    assert len({parse_challenge(v)["nonce"] for v in values}) == 1
    assert all(v.startswith('Digest realm="sipgw.test", nonce="') for v in values)
    assert all(v.endswith('qop="auth"') for v in values)
    assert server.challenge()[0] != values[0]  # a fresh nonce each time


@pytest.mark.parametrize("algorithm", SUPPORTED_ALGORITHMS)
def test_round_trip(algorithm: str) -> None:
    server = make_server(algorithms=(algorithm,))
    (challenge,) = server.challenge()
    client = DigestClient("alice", PASSWORDS["alice"])
    first = server.verify(
        client.authorization(challenge, "REGISTER", "sip:sipgw.test"), "REGISTER", lookup
    )
    assert first == AuthResult(True, "alice", False, "ok", "alice")
    # The same nonce again, with the next nonce-count, is fine.
    second = server.verify(
        client.authorization(challenge, "INVITE", "sip:bob@sipgw.test"), "INVITE", lookup
    )
    assert second.ok


def test_wrong_password() -> None:
    server = make_server()
    result = server.verify(answer(server.challenge()[0], password="wrong"), "REGISTER", lookup)
    assert result == AuthResult(False, None, False, "bad credentials", "alice")


def test_wrong_method_fails() -> None:
    server = make_server()
    result = server.verify(answer(server.challenge()[0]), "INVITE", lookup)
    assert not result.ok


def test_wrong_realm() -> None:
    server = make_server()
    challenge = server.challenge()[0].replace(f'realm="{REALM}"', 'realm="elsewhere"')
    result = server.verify(answer(challenge), "REGISTER", lookup)
    assert (result.ok, result.reason) == (False, "realm mismatch")


def test_tampered_nonce() -> None:
    server = make_server()
    challenge = server.challenge()[0]
    nonce = parse_challenge(challenge)["nonce"]
    for forged in (
        nonce[:-1] + ("A" if nonce[-1] != "A" else "B"),
        nonce[:10] + "!" + nonce[11:],
        nonce + "A",
        "x",
    ):
        result = server.verify(answer(challenge.replace(nonce, forged)), "REGISTER", lookup)
        assert (result.ok, result.stale, result.reason) == (False, False, "invalid nonce")


def test_nonce_of_another_server_is_rejected() -> None:
    other = DigestServer(REALM, b"another secret of 32 bytes......")
    value = answer(other.challenge()[0])
    assert make_server().verify(value, "REGISTER", lookup).reason == "opaque mismatch"
    without_opaque = re.sub(r', opaque="[^"]*"', "", value)  # opaque is optional
    assert make_server().verify(without_opaque, "REGISTER", lookup).reason == "invalid nonce"


def test_expired_nonce_is_stale_only_with_the_right_password() -> None:
    clock = Clock()
    server = make_server(clock, nonce_ttl=300.0)
    challenge = server.challenge()[0]
    clock.now += 301
    result = server.verify(answer(challenge), "REGISTER", lookup)
    assert result == AuthResult(False, "alice", True, "stale nonce", "alice")
    wrong = server.verify(answer(challenge, password="nope"), "REGISTER", lookup)
    assert (wrong.ok, wrong.stale) == (False, False)
    # The client retries silently with the new challenge.
    assert "stale=true" in server.challenge(stale=True)[0]
    assert server.verify(answer(server.challenge()[0]), "REGISTER", lookup).ok


def test_nonce_still_valid_just_before_ttl() -> None:
    clock = Clock()
    server = make_server(clock, nonce_ttl=300.0)
    challenge = server.challenge()[0]
    clock.now += 299.9
    assert server.verify(answer(challenge), "REGISTER", lookup).ok


def test_replayed_nonce_count_is_refused() -> None:
    server = make_server()
    value = answer(server.challenge()[0])
    assert server.verify(value, "REGISTER", lookup).ok
    replay = server.verify(value, "REGISTER", lookup)
    assert (replay.ok, replay.stale, replay.reason) == (False, False, "replayed nonce count")
    assert replay.username is None


def test_nonce_count_must_increase() -> None:
    server = make_server()
    challenge = server.challenge()[0]
    client = DigestClient("alice", PASSWORDS["alice"])
    values = [client.authorization(challenge, "REGISTER", "sip:sipgw.test") for _ in range(3)]
    assert server.verify(values[2], "REGISTER", lookup).ok  # nc=3 first
    assert server.verify(values[0], "REGISTER", lookup).reason == "replayed nonce count"
    assert server.verify(values[1], "REGISTER", lookup).reason == "replayed nonce count"


def test_evicted_nonce_is_answered_as_stale_not_replayable() -> None:
    clock = Clock()
    server = make_server(clock, max_tracked_nonces=2)
    first = answer(server.challenge()[0])
    assert server.verify(first, "REGISTER", lookup).ok
    for _ in range(2):  # push the first nonce out of the tracker
        clock.now += 1
        assert server.verify(answer(server.challenge()[0]), "REGISTER", lookup).ok
    replay = server.verify(first, "REGISTER", lookup)
    assert (replay.ok, replay.stale) == (False, True)


def test_unknown_user_does_the_same_work(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real: Callable[..., str] = digest_module.compute_response

    def counting(*args: object, **kwargs: object) -> str:
        calls.append("x")
        return real(*args, **kwargs)

    server = make_server()
    known = answer(server.challenge()[0], "alice")
    unknown = answer(server.challenge()[0], "mallory", "whatever")
    monkeypatch.setattr(digest_module, "compute_response", counting)
    assert server.verify(known, "REGISTER", lookup).ok
    result = server.verify(unknown, "REGISTER", lookup)
    assert calls == ["x", "x"]  # a response digest was computed for both
    # Same answer as a wrong password: the reason does not reveal unknown users.
    assert result == AuthResult(False, None, False, "bad credentials", "mallory")


def test_algorithm_checks() -> None:
    server = make_server(algorithms=("SHA-256",))
    md5 = DigestServer(REALM, SECRET, algorithms=("MD5",)).challenge()[0]
    assert server.verify(answer(md5), "REGISTER", lookup).reason == "algorithm not offered"
    value = answer(server.challenge()[0]).replace("algorithm=SHA-256", "algorithm=SHA-256-sess")
    assert server.verify(value, "REGISTER", lookup).reason == "unsupported algorithm"


def test_missing_algorithm_means_md5() -> None:
    server = make_server(algorithms=("MD5",))
    value = answer(server.challenge()[0]).replace(", algorithm=MD5", "")
    assert "algorithm" not in parse_credentials(value)
    assert server.verify(value, "REGISTER", lookup).ok


def test_qop_is_required() -> None:
    server = make_server()
    challenge = server.challenge()[0].replace(', qop="auth"', "")
    value = answer(challenge)  # the client falls back to the RFC 2069 form
    assert server.verify(value, "REGISTER", lookup).reason == "qop required"


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda v: v.replace("qop=auth", "qop=auth-int"), "unsupported qop"),
        (lambda v: re.sub(r', cnonce="[^"]*"', "", v), "missing cnonce"),
        (lambda v: re.sub(r", nc=\w+", "", v), "missing nc"),
        (lambda v: re.sub(r"nc=\w+", "nc=1", v), "malformed nc"),
        (lambda v: re.sub(r"nc=\w+", "nc=0000000g", v), "malformed nc"),
        (lambda v: re.sub(r'opaque="[^"]*"', 'opaque="forged"', v), "opaque mismatch"),
        (lambda v: re.sub(r'response="[^"]*", ', "", v), "missing response"),
        (lambda v: re.sub(r'uri="[^"]*", ', "", v), "missing uri"),
        (lambda v: re.sub(r'username="[^"]*", ', "", v), "missing username"),
        (lambda v: v.replace("Digest ", "Basic "), "unsupported scheme"),
    ],
)
def test_rejections_carry_a_reason(edit: Callable[[str], str], reason: str) -> None:
    server = make_server()
    result = server.verify(edit(answer(server.challenge()[0])), "REGISTER", lookup)
    assert (result.ok, result.reason) == (False, reason)


def test_nonce_count_zero_is_refused() -> None:
    server = make_server()
    value = re.sub(r"nc=\w+", "nc=00000000", answer(server.challenge()[0]))
    assert not server.verify(value, "REGISTER", lookup).ok


def test_request_uri_check() -> None:
    server = make_server()
    value = answer(server.challenge()[0])
    assert server.verify(value, "REGISTER", lookup, request_uri="sip:other").reason == (
        "uri mismatch"
    )
    assert server.verify(value, "REGISTER", lookup, request_uri="sip:sipgw.test").ok


def test_uppercase_response_hex_is_accepted() -> None:
    server = make_server()
    value = answer(server.challenge()[0])
    upper = re.sub(r'response="([0-9a-f]+)"', lambda m: f'response="{m[1].upper()}"', value)
    assert server.verify(upper, "REGISTER", lookup).ok


GARBAGE = [
    "",
    "Digest",
    "Digest ,,,",
    "Basic abc",
    'Digest username="unterminated',
    "Digest username=a\r\nVia: evil",
    "\x00\x01\x02",
    "Digest " + "x" * 10_000,
    'Digest username="é", realm="sipgw.test", nonce="é", uri="é", response="é", '
    'qop=auth, nc=00000001, cnonce="é"',
    'Digest username="a", realm="sipgw.test", nonce="AAAA", uri="u", response="r", '
    'qop=auth, nc=00000001, cnonce="c"',
]


@pytest.mark.parametrize("value", GARBAGE)
def test_garbage_is_refused_with_a_reason(value: str) -> None:
    result = make_server().verify(value, "REGISTER", lookup)
    assert not result.ok
    assert result.reason
    assert result.reason.isascii() and "\r" not in result.reason and "\n" not in result.reason


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_verify_never_raises(value: str) -> None:
    result = make_server().verify(value, "REGISTER", lookup)
    assert not result.ok and result.reason


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce", "opaque"]
        ),
        st.text(max_size=20),
    )
)
def test_verify_never_raises_on_structured_garbage(fields: dict[str, str]) -> None:
    def quote(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    value = "Digest " + ", ".join(f"{k}={quote(v)}" for k, v in fields.items())
    result = make_server().verify(value, "REGISTER", lookup)
    assert not result.ok and result.reason


@pytest.mark.parametrize(
    "kwargs",
    [
        {"secret": b"short"},
        {"realm": ""},
        {"realm": "bad\r\nrealm"},
        {"nonce_ttl": 0},
        {"algorithms": ()},
        {"algorithms": ("MD5-sess",)},
        {"max_tracked_nonces": 0},
    ],
)
def test_server_configuration_is_validated(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"realm": REALM, "secret": SECRET, **kwargs}
    with pytest.raises(ValueError):
        DigestServer(**args)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ client


def test_client_picks_the_first_answerable_challenge() -> None:
    client = DigestClient("alice", "pw")
    values = [
        'Digest realm="r", nonce="n", algorithm=SHA-512-256-sess, qop="auth"',
        'Digest realm="r", nonce="n", algorithm=SHA-256, qop="auth-int"',
        "Basic realm=r",
        'Digest realm="r", nonce="n", algorithm=SHA-256, qop="auth"',
        'Digest realm="r", nonce="n", algorithm=MD5, qop="auth"',
    ]
    assert client.best_challenge(values) == values[3]
    assert client.best_challenge(values[:3]) is None


@pytest.mark.parametrize(
    "challenge",
    [
        'Digest realm="r", nonce="n", qop="auth-int"',
        'Digest realm="r", nonce="n", algorithm=MD5-sess, qop="auth"',
        'Digest nonce="n", qop="auth"',
        'Basic realm="r"',
        "garbage",
    ],
)
def test_client_refuses_what_it_cannot_answer(challenge: str) -> None:
    with pytest.raises(ValueError):
        DigestClient("alice", "pw").authorization(challenge, "REGISTER", "sip:r")


def test_client_quotes_awkward_values() -> None:
    client = DigestClient('we"ird\\user', "pw")
    value = client.authorization(
        'Digest realm="r", nonce="n", qop="auth"', "REGISTER", "sip:r", cnonce="c"
    )
    assert parse_credentials(value)["username"] == 'we"ird\\user'


def test_a_nonce_is_used_only_where_it_was_issued() -> None:
    # Two workers share the secret; nonce-counts live with the issuer, so a credential
    # shown to the sibling is stale (the client retries with a fresh nonce), never a
    # second use of the same nonce-count.
    first = make_server(issuer=b"\x00\x00\x00\x01")
    sibling = make_server(issuer=b"\x00\x00\x00\x02")
    value = answer(first.challenge()[0])
    elsewhere = sibling.verify(value, "REGISTER", lookup)
    assert (elsewhere.ok, elsewhere.stale) == (False, True)
    assert first.verify(value, "REGISTER", lookup).ok
    replay = first.verify(value, "REGISTER", lookup)
    assert (replay.ok, replay.reason) == (False, "replayed nonce count")
    wrong = answer(first.challenge()[0], password="wrong")
    assert sibling.verify(wrong, "REGISTER", lookup).reason == "bad credentials"
