"""The proxy core driven without sockets: RFC 3261 §10, §16, §17 behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.sip.digest import DigestClient
from gateway.sip.message import Request, Response

from .proxy_harness import (
    CONFIG,
    PASSWORDS,
    TRUNK,
    Harness,
    Sent,
    request,
    response_to,
    settings_from,
)

PHONE_201 = ("127.0.0.1", 5201)
PHONE_202 = ("127.0.0.1", 5202)


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(settings_from(CONFIG, tmp_path))


def only(sent: list[Sent], *, status: int | None = None, method: str | None = None) -> Sent:
    picked = [
        s
        for s in sent
        if (status is not None and isinstance(s.msg, Response) and s.msg.status == status)
        or (method is not None and isinstance(s.msg, Request) and s.msg.method == method)
    ]
    assert len(picked) == 1, f"expected one {status or method}, got {[s.data[:40] for s in sent]}"
    return picked[0]


def sig(h: Harness, call_id: str, tag: str = "f1") -> str:
    return h.proxy.route_signer.sign(call_id, tag)


def statuses(sent: list[Sent]) -> list[int]:
    return [s.msg.status for s in sent if isinstance(s.msg, Response)]


def register(
    h: Harness,
    user: str,
    src: tuple[str, int],
    *,
    expires: int = 600,
    contact: str | None = None,
    call_id: str | None = None,
    transport: str = "udp",
) -> Response:
    contact = contact or f"<sip:{user}@{src[0]}:{src[1]}>"
    call_id = call_id or f"reg-{user}-{src[1]}"
    extra = f"Contact: {contact}\nExpires: {expires}"
    first = request(
        "REGISTER",
        "sip:acme.test",
        src=src,
        from_=f"<sip:{user}@acme.test>;tag=r1",
        to=f"<sip:{user}@acme.test>",
        call_id=call_id,
        cseq=1,
        extra=extra,
    )
    first = first.replace(f"Contact: <sip:peer@{src[0]}:{src[1]}>\r\n", "")
    conn_id = 1 if transport != "udp" else None
    challenge = only(h.feed(first, src, transport, conn_id), status=401).msg
    assert isinstance(challenge, Response)
    client = DigestClient(user, PASSWORDS[user])
    auth = client.authorization(
        challenge.get_all("WWW-Authenticate")[0], "REGISTER", "sip:acme.test"
    )
    second = request(
        "REGISTER",
        "sip:acme.test",
        src=src,
        from_=f"<sip:{user}@acme.test>;tag=r1",
        to=f"<sip:{user}@acme.test>",
        call_id=call_id,
        cseq=2,
        extra=f"{extra}\nAuthorization: {auth}",
    )
    second = second.replace(f"Contact: <sip:peer@{src[0]}:{src[1]}>\r\n", "")
    answer = h.feed(second, src, transport, conn_id)
    resp = answer[-1].msg
    assert isinstance(resp, Response)
    return resp


# ---------------------------------------------------------------------------- OPTIONS ---
def test_options_to_the_gateway_is_answered_with_capabilities(h: Harness) -> None:
    sent = h.feed(
        request("OPTIONS", "sip:127.0.0.1:5060", src=("127.0.0.1", 7000)), src=("127.0.0.1", 7000)
    )
    resp = only(sent, status=200)
    msg = resp.msg
    assert "INVITE" in (msg.get("Allow") or "") and "REGISTER" in (msg.get("Allow") or "")
    assert msg.get("Accept") == "application/sdp"
    assert msg.get("Supported") is not None
    assert resp.target.host == "127.0.0.1" and resp.target.port == 7000


def test_options_to_a_made_up_user_of_ours_is_answered_by_the_gateway(h: Harness) -> None:
    src = ("127.0.0.1", 7000)
    sent = h.feed(request("OPTIONS", "sip:ping@127.0.0.1:5060", src=src), src)
    assert statuses(sent) == [200]


def test_options_for_a_registered_user_is_proxied_to_the_phone(h: Harness) -> None:
    register(h, "201", PHONE_201)
    sent = h.feed(request("OPTIONS", "sip:+31201234567@127.0.0.1"))
    fwd = only(sent, method="OPTIONS")
    assert (fwd.target.host, fwd.target.port) == PHONE_201


def test_options_while_draining_is_503_with_retry_after(h: Harness) -> None:
    h.proxy.start_draining()
    sent = h.feed(
        request("OPTIONS", "sip:127.0.0.1", src=("127.0.0.1", 7000)), src=("127.0.0.1", 7000)
    )
    msg = only(sent, status=503).msg
    assert msg.get("Retry-After") == "30"


def test_options_with_max_forwards_zero_to_us_is_still_answered(h: Harness) -> None:
    sent = h.feed(
        request("OPTIONS", "sip:127.0.0.1", src=("127.0.0.1", 7000), max_forwards=0),
        src=("127.0.0.1", 7000),
    )
    assert statuses(sent) == [200]


# ---------------------------------------------------------------------------- REGISTER ---
def test_register_challenges_then_binds(h: Harness) -> None:
    resp = register(h, "201", PHONE_201)
    assert resp.status == 200
    contacts = resp.get_all("Contact")
    assert len(contacts) == 1 and "sip:201@127.0.0.1:5201" in contacts[0]
    assert "expires=600" in contacts[0]
    assert [b.contact_uri for b in h.proxy.location.bindings("acme", "201", h.clock.now)] == [
        "sip:201@127.0.0.1:5201"
    ]


# What a real phone's REGISTER carries besides the mandatory headers.
PHONE_HEADERS = (
    "User-Agent: Linphone-Desktop/5.2.6 (belle-sip/5.2.94)\n"
    "Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO, UPDATE\n"
    "Supported: replaces, outbound, gruu, path\nExpires: 3600"
)


def first_register(extra: str = "") -> str:
    """201's REGISTER before any challenge."""
    return request(
        "REGISTER",
        "sip:acme.test",
        src=PHONE_201,
        from_="<sip:201@acme.test>;tag=a",
        to="<sip:201@acme.test>",
        extra=extra,
    )


def test_register_challenge_offers_sha256_before_md5(h: Harness) -> None:
    req = first_register(PHONE_HEADERS)
    challenges = only(h.feed(req, PHONE_201), status=401).msg.get_all("WWW-Authenticate")
    assert "algorithm=SHA-256" in challenges[0]
    assert any("algorithm=MD5" in c for c in challenges[1:])
    assert all('realm="acme.test"' in c for c in challenges)


def test_a_small_request_gets_only_the_preferred_challenge(h: Harness) -> None:
    # Both challenges would make the answer more than twice the request: a spoofed
    # source must not get an amplifier, so only the profile's first algorithm is offered.
    req = first_register()
    sent = h.feed(req, PHONE_201)
    challenge = only(sent, status=401)
    assert len(challenge.data) <= 2 * len(req.encode())
    assert [c.split("algorithm=")[1][:7] for c in challenge.msg.get_all("WWW-Authenticate")] == [
        "SHA-256"
    ]


def test_an_unauthenticated_invite_gets_one_stateless_challenge(h: Harness) -> None:
    text = request(
        "INVITE",
        "sip:202@acme.test",
        src=PHONE_201,
        from_="<sip:201@acme.test>;tag=a",
        extra=PHONE_HEADERS,
    )
    sent = h.feed(text, PHONE_201)
    assert statuses(sent) == [407]  # no 100 Trying before the caller proved anything
    assert h.proxy.active_transactions == (0, 0)  # nothing to retransmit it
    assert statuses(h.advance(64)) == []
    assert statuses(h.feed(text, PHONE_201)) == [407]  # a retransmission: one more, once


def test_an_answer_larger_than_twice_the_request_is_not_sent(h: Harness) -> None:
    tiny = (
        "INVITE sip:1@acme.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5201;branch=z9hG4bKa\r\n"
        "From: <sip:201@acme.test>;tag=a\r\nTo: <sip:1@acme.test>\r\nCall-ID: c\r\n"
        "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    assert h.feed(tiny, PHONE_201) == []
    assert h.counters.security["reply_too_large"] == 1


def test_a_legacy_md5_phone_is_challenged_with_md5_only(h: Harness) -> None:
    # sipp 3.6 and old firmware read only the first challenge and know only MD5.
    req = request(
        "REGISTER",
        "sip:acme.test",
        src=PHONE_201,
        from_="<sip:203@acme.test>;tag=a",
        to="<sip:203@acme.test>",
    )
    challenges = only(h.feed(req, PHONE_201), status=401).msg.get_all("WWW-Authenticate")
    assert len(challenges) == 1 and "algorithm=MD5" in challenges[0]


def test_register_with_wrong_password_is_challenged_again(h: Harness) -> None:
    req = request(
        "REGISTER",
        "sip:acme.test",
        src=PHONE_201,
        from_="<sip:201@acme.test>;tag=a",
        to="<sip:201@acme.test>",
        call_id="bad-pw",
    )
    challenge = only(h.feed(req, PHONE_201), status=401).msg.get_all("WWW-Authenticate")[0]
    auth = DigestClient("201", "wrong-password").authorization(
        challenge, "REGISTER", "sip:acme.test"
    )
    retry = request(
        "REGISTER",
        "sip:acme.test",
        src=PHONE_201,
        from_="<sip:201@acme.test>;tag=a",
        to="<sip:201@acme.test>",
        call_id="bad-pw",
        cseq=2,
        extra=f"Authorization: {auth}",
    )
    assert statuses(h.feed(retry, PHONE_201)) == [401]
    assert h.proxy.location.bindings("acme", "201", h.clock.now) == []


def test_register_interval_too_brief_is_423_with_min_expires(h: Harness) -> None:
    resp = register(h, "201", PHONE_201, expires=10)
    assert resp.status == 423
    assert resp.get("Min-Expires") == "60"


def test_register_wildcard_removes_every_binding(h: Harness) -> None:
    register(h, "201", PHONE_201, call_id="same")
    resp = register(h, "201", PHONE_201, expires=0, contact="*", call_id="other")
    assert resp.status == 200
    assert h.proxy.location.bindings("acme", "201", h.clock.now) == []


def test_bindings_expire(h: Harness) -> None:
    register(h, "201", PHONE_201, expires=120)
    h.advance(121)
    assert h.proxy.location.bindings("acme", "201", h.clock.now) == []


def test_bindings_of_phones_nobody_calls_are_purged(h: Harness) -> None:
    register(h, "201", PHONE_201, expires=120)
    assert len(h.proxy.location) == 1
    h.advance(160)  # past expiry and a housekeeping pass, without any look-up
    assert len(h.proxy.location) == 0


def test_responses_over_tcp_use_the_connection_then_the_sent_by(h: Harness) -> None:
    text = request("OPTIONS", "sip:127.0.0.1", src=("127.0.0.1", 40123), transport="TCP")
    text = text.replace("127.0.0.1:40123;branch", "127.0.0.1:5099;branch")  # listens on 5099
    sent = h.feed(text, ("127.0.0.1", 40123), transport="tcp", conn_id=7)
    target = only(sent, status=200).target
    assert (target.transport, target.conn_id, target.port) == ("tcp", 7, 5099)


def test_register_another_users_aor_is_forbidden(h: Harness) -> None:
    req = request(
        "REGISTER",
        "sip:acme.test",
        src=PHONE_201,
        from_="<sip:202@acme.test>;tag=a",
        to="<sip:202@acme.test>",
        call_id="steal",
    )
    challenge = only(h.feed(req, PHONE_201), status=401).msg.get_all("WWW-Authenticate")[0]
    auth = DigestClient("201", PASSWORDS["201"]).authorization(
        challenge, "REGISTER", "sip:acme.test"
    )
    retry = request(
        "REGISTER",
        "sip:acme.test",
        src=PHONE_201,
        from_="<sip:202@acme.test>;tag=a",
        to="<sip:202@acme.test>",
        call_id="steal",
        cseq=2,
        extra=f"Authorization: {auth}",
    )
    assert statuses(h.feed(retry, PHONE_201)) == [403]


# ------------------------------------------------------------------ INVITE from trunk ---
def invite_from_trunk(
    h: Harness, call_id: str = "in-1", ruri: str = "sip:+31201234567@127.0.0.1"
) -> list[Sent]:
    return h.feed(
        request(
            "INVITE", ruri, call_id=call_id, body="v=0\r\n", extra="Content-Type: application/sdp"
        )
    )


def test_trunk_call_to_did_rings_the_registered_phone(h: Harness) -> None:
    register(h, "201", PHONE_201)
    sent = invite_from_trunk(h)
    assert statuses(sent) == [100]
    fwd = only(sent, method="INVITE")
    msg = fwd.msg
    assert isinstance(msg, Request)
    assert msg.uri_raw == "sip:201@127.0.0.1:5201"
    assert (fwd.target.host, fwd.target.port, fwd.target.transport) == ("127.0.0.1", 5201, "udp")
    vias = msg.get_all("Via")
    assert vias[0].startswith("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK")
    assert "received=127.0.0.1" in vias[1] and "rport=5082" in vias[1]
    assert msg.get("Max-Forwards") == "69"
    assert msg.get("Record-Route") == f"<sip:127.0.0.1:5060;lr;sg={sig(h, 'in-1')}>"
    assert msg.body == b"v=0\r\n"


def test_responses_are_relayed_with_our_via_removed(h: Harness) -> None:
    register(h, "201", PHONE_201)
    fwd = only(invite_from_trunk(h), method="INVITE").msg
    assert isinstance(fwd, Request)
    ringing = h.feed(response_to(fwd, 180, "Ringing"), PHONE_201)
    relayed = only(ringing, status=180)
    assert (relayed.target.host, relayed.target.port) == TRUNK
    assert len(relayed.msg.get_all("Via")) == 1
    ok = only(h.feed(response_to(fwd, 200, "OK"), PHONE_201), status=200)
    assert ok.msg.get("Record-Route") == f"<sip:127.0.0.1:5060;lr;sg={sig(h, 'in-1')}>"


def test_a_relayed_response_is_checked_for_what_the_proxy_reads_only(h: Harness) -> None:
    # §16.7: Contact, and the Vias below ours, are the UAC's business (the response goes
    # back where the request came from): the proxy relays them without parsing them
    # (§16.3). A broken top Via, which the proxy does read (it names the transaction),
    # drops the response.
    register(h, "201", PHONE_201)
    fwd = only(invite_from_trunk(h), method="INVITE").msg
    assert isinstance(fwd, Request)
    odd = h.feed(response_to(fwd, 180, "Ringing", extra="Contact: <sip:callee@[::1"), PHONE_201)
    assert only(odd, status=180).msg.get("Contact") == "<sip:callee@[::1"
    theirs = response_to(fwd, 183, "Progress").replace(
        "Via: SIP/2.0/UDP 127.0.0.1:5082", "Via: SIP/2.0/UDP 127.0.0.1:99999", 1
    )
    relayed = only(h.feed(theirs, PHONE_201), status=183).msg
    assert (relayed.get("Via") or "").startswith("SIP/2.0/UDP 127.0.0.1:99999")
    assert not h.counters.parse_errors
    ours = response_to(fwd, 183, "Progress").replace(
        "Via: SIP/2.0/UDP 127.0.0.1:5060", "Via: SIP/2.0/UDP 127.0.0.1:99999", 1
    )
    assert h.feed(ours, PHONE_201) == []
    assert h.counters.parse_errors


def test_invite_retransmission_is_absorbed(h: Harness) -> None:
    register(h, "201", PHONE_201)
    text = request("INVITE", "sip:+31201234567@127.0.0.1", call_id="rtx", branch="z9hG4bK-rtx")
    first = h.feed(text)
    assert len([s for s in first if isinstance(s.msg, Request)]) == 1
    again = h.feed(text)
    assert statuses(again) == [100]
    assert not [s for s in again if isinstance(s.msg, Request)]


def test_unregistered_extension_is_480(h: Harness) -> None:
    # Never forwarded, so no 100 Trying first (§16.2 asks for it only when forwarding).
    assert statuses(invite_from_trunk(h)) == [480]


def test_unknown_did_is_404(h: Harness) -> None:
    assert statuses(invite_from_trunk(h, ruri="sip:+31209999999@127.0.0.1")) == [404]


def test_busy_is_relayed_and_acked_hop_by_hop(h: Harness) -> None:
    register(h, "201", PHONE_201)
    fwd = only(invite_from_trunk(h), method="INVITE").msg
    assert isinstance(fwd, Request)
    sent = h.feed(response_to(fwd, 486, "Busy Here"), PHONE_201)
    ack = only(sent, method="ACK")
    assert (ack.target.host, ack.target.port) == PHONE_201
    ack_msg = ack.msg
    assert isinstance(ack_msg, Request)
    assert ack_msg.get_all("Via")[0] == fwd.get_all("Via")[0]
    assert ack_msg.to.tag == "callee"
    upstream = only(sent, status=486)
    assert (upstream.target.host, upstream.target.port) == TRUNK


def test_no_answer_times_out_with_408(h: Harness) -> None:
    register(h, "201", PHONE_201)
    text = request("INVITE", "sip:+31201234567@127.0.0.1", call_id="noans", branch="z9hG4bK-noans")
    only(h.feed(text), method="INVITE")
    later = h.advance(32.2)
    # Timer A retransmitted the INVITE (0.5, 1, 2, 4, 8, 16 s), Timer B ended the branch
    # at 64*T1: 408 upstream.
    assert len([s for s in later if isinstance(s.msg, Request) and s.msg.method == "INVITE"]) == 6
    assert statuses(later) == [408]
    # Unacknowledged, the 408 is retransmitted (Timer G) until the caller's ACK stops it.
    assert statuses(h.advance(1.0)) == [408]
    h.feed(text.replace("INVITE sip", "ACK sip").replace("CSeq: 1 INVITE", "CSeq: 1 ACK"))
    assert statuses(h.advance(60)) == []


# --------------------------------------------------------------------------- CANCEL ---
def test_cancel_before_answer(h: Harness) -> None:
    register(h, "201", PHONE_201)
    text = request("INVITE", "sip:+31201234567@127.0.0.1", call_id="c1", branch="z9hG4bK-c1")
    fwd = only(h.feed(text), method="INVITE").msg
    assert isinstance(fwd, Request)
    h.feed(response_to(fwd, 180, "Ringing"), PHONE_201)
    cancel = text.replace("INVITE sip:", "CANCEL sip:").replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
    sent = h.feed(cancel)
    assert statuses(sent) == [200]
    down = only(sent, method="CANCEL").msg
    assert isinstance(down, Request)
    assert down.get_all("Via")[0] == fwd.get_all("Via")[0]
    h.feed(response_to(down, 200, "OK", to_tag=None), PHONE_201)
    terminated = h.feed(response_to(fwd, 487, "Request Terminated"), PHONE_201)
    assert statuses(terminated) == [487]


def test_cancel_without_transaction_is_481(h: Harness) -> None:
    text = request("CANCEL", "sip:+31201234567@127.0.0.1", call_id="nothing")
    assert statuses(h.feed(text)) == [481]


# -------------------------------------------------------------------------- forking ---
def test_parallel_fork_cancels_the_other_branch_on_2xx(h: Harness) -> None:
    register(h, "201", PHONE_201, call_id="a")
    register(h, "201", ("127.0.0.1", 5211), call_id="b")
    sent = invite_from_trunk(h, call_id="fork")
    branches = [s for s in sent if isinstance(s.msg, Request) and s.msg.method == "INVITE"]
    assert sorted(b.target.port for b in branches) == [5201, 5211]
    first, second = (b.msg for b in branches)
    assert isinstance(first, Request) and isinstance(second, Request)
    h.feed(response_to(first, 180, "Ringing", to_tag="t1"), PHONE_201)
    h.feed(response_to(second, 180, "Ringing", to_tag="t2"), ("127.0.0.1", 5211))
    sent = h.feed(response_to(first, 200, "OK", to_tag="t1"), PHONE_201)
    assert statuses(sent) == [200]
    cancel = only(sent, method="CANCEL")
    assert cancel.target.port == branches[1].target.port
    # The cancelled branch's 487 is not forwarded: the caller already has its 200.
    h.feed(response_to(cancel.msg, 200, "OK", to_tag=None), ("127.0.0.1", 5211))  # type: ignore[arg-type]
    assert (
        statuses(
            h.feed(response_to(second, 487, "Request Terminated", to_tag="t2"), ("127.0.0.1", 5211))
        )
        == []
    )


def test_fork_best_response_prefers_busy_over_timeout(h: Harness) -> None:
    register(h, "201", PHONE_201, call_id="a")
    register(h, "201", ("127.0.0.1", 5211), call_id="b")
    branches = [s for s in invite_from_trunk(h, call_id="best") if isinstance(s.msg, Request)]
    busy_branch = branches[0].msg
    assert isinstance(busy_branch, Request)
    assert statuses(h.feed(response_to(busy_branch, 486, "Busy Here"), PHONE_201)) == []
    later = statuses(h.advance(33))
    # The other branch timed out (408); the caller gets the busy (then its Timer G
    # retransmissions), never the 408.
    assert later[0] == 486 and set(later) == {486}


# ------------------------------------------------------------------ phone → trunk ---
def invite_from_phone(
    h: Harness, user: str, src: tuple[str, int], ruri: str, call_id: str
) -> list[Sent]:
    from_ = f"<sip:{user}@acme.test>;tag=p1"
    first = request(
        "INVITE", ruri, src=src, from_=from_, call_id=call_id, branch=f"z9hG4bK-{call_id}-1"
    )
    challenge = only(h.feed(first, src), status=407).msg.get_all("Proxy-Authenticate")[0]
    h.feed(first.replace("INVITE sip", "ACK sip").replace("CSeq: 1 INVITE", "CSeq: 1 ACK"), src)
    auth = DigestClient(user, PASSWORDS[user]).authorization(challenge, "INVITE", ruri)
    second = request(
        "INVITE",
        ruri,
        src=src,
        from_=from_,
        call_id=call_id,
        cseq=2,
        branch=f"z9hG4bK-{call_id}-2",
        extra=f"Proxy-Authorization: {auth}",
    )
    return h.feed(second, src)


def test_phone_calls_a_number_through_the_trunk(h: Harness) -> None:
    sent = invite_from_phone(h, "202", PHONE_202, "sip:0612345678@acme.test", "out-1")
    fwd = only(sent, method="INVITE")
    msg = fwd.msg
    assert isinstance(msg, Request)
    assert msg.uri_raw == "sip:0612345678@127.0.0.1:5080"
    assert (fwd.target.host, fwd.target.port) == ("127.0.0.1", 5080)
    assert msg.get("Proxy-Authorization") is None, "our realm's credentials must not leak"


def test_phone_calls_another_extension(h: Harness) -> None:
    register(h, "201", PHONE_201)
    sent = invite_from_phone(h, "202", PHONE_202, "sip:201@acme.test", "int-1")
    fwd = only(sent, method="INVITE")
    assert (fwd.target.host, fwd.target.port) == PHONE_201


def test_phone_cannot_spoof_another_users_from(h: Harness) -> None:
    ruri = "sip:0612345678@acme.test"
    from_ = "<sip:201@acme.test>;tag=p1"
    first = request("INVITE", ruri, src=PHONE_202, from_=from_, call_id="spoof")
    challenge = only(h.feed(first, PHONE_202), status=407).msg.get_all("Proxy-Authenticate")[0]
    auth = DigestClient("202", PASSWORDS["202"]).authorization(challenge, "INVITE", ruri)
    second = request(
        "INVITE",
        ruri,
        src=PHONE_202,
        from_=from_,
        call_id="spoof",
        cseq=2,
        extra=f"Proxy-Authorization: {auth}",
    )
    assert statuses(h.feed(second, PHONE_202)) == [403]


# --------------------------------------------------------------------- in-dialog ---
def test_bye_follows_the_route_set_back_to_the_caller(h: Harness) -> None:
    register(h, "201", PHONE_201)
    fwd = only(invite_from_trunk(h, call_id="dlg"), method="INVITE").msg
    assert isinstance(fwd, Request)
    h.feed(response_to(fwd, 200, "OK"), PHONE_201)
    bye = request(
        "BYE",
        f"sip:peer@{TRUNK[0]}:{TRUNK[1]}",
        src=PHONE_201,
        call_id="dlg",
        cseq=1,
        from_="<sip:201@acme.test>;tag=callee",
        to="<sip:+31612345678@carrier.test>;tag=f1",
        extra=h.route("dlg"),
    )
    sent = h.feed(bye, PHONE_201)
    down = only(sent, method="BYE")
    assert (down.target.host, down.target.port) == TRUNK
    assert down.msg.get("Route") is None


def test_ack_for_2xx_is_forwarded_end_to_end(h: Harness) -> None:
    register(h, "201", PHONE_201)
    ack = request(
        "ACK",
        "sip:201@127.0.0.1:5201",
        src=TRUNK,
        call_id="dlg",
        cseq=1,
        to="<sip:201@acme.test>;tag=callee",
        extra=h.route("dlg"),
    )
    sent = h.feed(ack)
    fwd = only(sent, method="ACK")
    assert (fwd.target.host, fwd.target.port) == PHONE_201


def test_in_dialog_request_not_routed_through_us_is_404(h: Harness) -> None:
    bye = request("BYE", "sip:201@127.0.0.1:5201", call_id="stray", to="<sip:201@acme.test>;tag=x")
    assert statuses(h.feed(bye)) == [404]


# ------------------------------------------------------------------ §16.3 checks ---
def test_max_forwards_zero_is_483(h: Harness) -> None:
    register(h, "201", PHONE_201)
    text = request("INVITE", "sip:+31201234567@127.0.0.1", max_forwards=0)
    assert statuses(h.feed(text)) == [483]


def test_missing_max_forwards_gets_the_default_downstream(h: Harness) -> None:
    register(h, "201", PHONE_201)
    text = request("INVITE", "sip:+31201234567@127.0.0.1", max_forwards=None)
    assert only(h.feed(text), method="INVITE").msg.get("Max-Forwards") == "70"


def test_unknown_proxy_require_is_420_listing_it(h: Harness) -> None:
    text = request("INVITE", "sip:+31201234567@127.0.0.1", extra="Proxy-Require: foo, bar")
    resp = only(h.feed(text), status=420).msg
    assert resp.get("Unsupported") == "foo, bar"


def test_unknown_uri_scheme_is_416(h: Harness) -> None:
    text = request("INVITE", "mailto:someone@example.com", to="<sip:x@example.com>")
    assert 416 in statuses(h.feed(text))


def test_loop_is_detected(h: Harness) -> None:
    register(h, "201", PHONE_201)
    fwd = only(invite_from_trunk(h, call_id="loop"), method="INVITE").msg
    assert isinstance(fwd, Request)
    # The same request comes back to us unchanged (a loop, not a spiral).
    fwd.set_uri("sip:+31201234567@127.0.0.1")
    data = fwd.to_bytes()
    sent = h.feed(data, TRUNK)
    assert 482 in statuses(sent)


def test_garbage_gets_a_400_when_it_can_be_answered(h: Harness) -> None:
    text = request("INVITE", "sip:+31201234567@127.0.0.1", call_id="bad")
    broken = text.replace("SIP/2.0\r\n", "SIP/2.0 \r\n", 1)  # trailing SP after the version
    sent = h.feed(broken)
    assert statuses(sent) == [400]
    assert h.counters.parse_errors


def test_pure_garbage_is_dropped_silently(h: Harness) -> None:
    assert h.feed(b"\x00\x01garbage\r\n\r\n") == []
    assert sum(h.counters.parse_errors.values()) == 1


def test_responses_not_for_us_are_dropped(h: Harness) -> None:
    text = (
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bKnothing\r\n"
        "From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    assert h.feed(text) == []


def test_draining_refuses_new_calls_but_keeps_dialogs(h: Harness) -> None:
    register(h, "201", PHONE_201)
    h.proxy.start_draining()
    assert statuses(invite_from_trunk(h, call_id="late")) == [503]
    bye = request(
        "BYE",
        "sip:201@127.0.0.1:5201",
        call_id="dlg",
        to="<sip:201@acme.test>;tag=x",
        extra=h.route("dlg"),
    )
    assert only(h.feed(bye), method="BYE").target.port == 5201


def test_double_record_route_when_transport_changes(h: Harness) -> None:
    # The phone registered over TCP, the trunk sends over UDP.
    register(h, "201", PHONE_201, contact="<sip:201@127.0.0.1:5201;transport=tcp>", transport="tcp")
    fwd = only(invite_from_trunk(h, call_id="dbl"), method="INVITE")
    assert fwd.target.transport == "tcp"
    rr = fwd.msg.get_all("Record-Route")
    signature = sig(h, "dbl")
    assert rr == [
        f"<sip:127.0.0.1:5060;transport=tcp;lr;sg={signature}>",
        f"<sip:127.0.0.1:5060;lr;sg={signature}>",
    ]
    assert fwd.msg.get_all("Via")[0].startswith("SIP/2.0/TCP ")


def test_a_finished_call_leaves_no_cyclic_garbage(h: Harness) -> None:
    """A call's proxy state is freed by reference counting once its transactions end:
    under load, state left to the garbage collector grew the heap by ~19 KB a call
    with the gateway's collection thresholds (bench soak)."""
    import gc

    register(h, "201", PHONE_201)
    gc.collect()
    gc.disable()
    try:
        for n in range(20):
            call_id = f"gc-{n}"
            fwd = only(invite_from_trunk(h, call_id=call_id), method="INVITE").msg
            assert isinstance(fwd, Request)
            h.feed(response_to(fwd, 200, "OK"), PHONE_201)
            bye = request(
                "BYE", "sip:201@127.0.0.1:5201", call_id=call_id, cseq=2,
                to="<sip:+31201234567@127.0.0.1>;tag=callee", extra=h.route(call_id),
            )  # fmt: skip
            down = only(h.feed(bye), method="BYE").msg
            assert isinstance(down, Request)
            h.feed(response_to(down, 200, "OK", to_tag=None), PHONE_201)
        h.advance(100)  # every transaction's timers run out
        assert h.proxy.active_transactions == (0, 0)
        h.transport.sent.clear()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        ours = [o for o in gc.garbage if type(o).__module__.startswith("gateway.")]
        assert ours == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
