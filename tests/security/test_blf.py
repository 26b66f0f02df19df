"""Attacks on the busy lamp field (gateway/blf): a SUBSCRIBE is a request that makes
the gateway send later, unasked, to whoever subscribed, so it must not become a way to
aim NOTIFYs at a third party, to amplify, or to end someone else's subscription.

What an attacker gains, and does not:
- without credentials: one stateless 407 no larger than twice its request, back to
  where the request came from; no state, and nothing ever sent later;
- with a colleague's credentials stolen: that colleague's view of its own tenant's
  lamps (the caller's identity only if the tenant shows it), NOTIFYs to its own
  address only, whatever its Contact says, and at most ``max_per_subscriber`` of them;
- with a subscription's Call-ID and tags (sniffed): nothing from another host; an
  in-dialog request must come from the host the subscription was made from.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.sip.digest import DigestClient
from gateway.sip.message import Request, Response, parse_message
from tests.integration.gateway import PASSWORDS, GatewayProcess
from tests.security.canary import Attacker, Canary
from tests.security.sip import final_answer, request

pytestmark = [pytest.mark.peers]


@pytest.fixture
def attacker() -> Iterator[Attacker]:
    sock = Attacker()
    yield sock
    sock.close()


def subscribe_request(
    attacker: Attacker,
    *,
    contact: str,
    call_id: str,
    cseq: int = 1,
    extra: tuple[str, ...] = (),
    to: str | None = None,
    ruri: str = "sip:201@acme.test",
) -> bytes:
    return request(
        "SUBSCRIBE", ruri, via=attacker.address, from_="<sip:204@acme.test>;tag=w1",
        to=to, call_id=call_id, cseq=cseq,
        headers=(f"Contact: {contact}", "Event: dialog", "Expires: 600", *extra),
    )  # fmt: skip


async def test_an_unauthenticated_subscribe_aimed_at_a_third_party_reaches_nobody(
    gateway: GatewayProcess, attacker: Attacker
) -> None:
    target = ("127.0.0.1", gateway.ports.sip)
    async with Canary() as canary:
        for n in range(20):
            data = subscribe_request(
                attacker, contact=f"<sip:victim@{canary.uri_host()}>", call_id=f"spoof-{n}"
            )
            attacker.send(data, target)
            answer = await final_answer(attacker)
            assert answer.status == 407
        await attacker.drain(quiet=1.0)  # anything later (a NOTIFY) would arrive here
        assert canary.received == []
    assert all(isinstance(parse_message(r), Response) for r in attacker.replies)
    assert attacker.received <= 2 * attacker.sent, (attacker.received, attacker.sent)


async def subscribe(
    phone: Attacker, gateway: GatewayProcess, contact: str, call_id: str
) -> Response:
    target = ("127.0.0.1", gateway.ports.sip)
    phone.send(subscribe_request(phone, contact=contact, call_id=call_id), target)
    challenge = await final_answer(phone)
    assert challenge.status == 407
    auth = DigestClient("204", PASSWORDS["204"]).authorization(
        challenge.get_all("Proxy-Authenticate")[0], "SUBSCRIBE", "sip:201@acme.test"
    )
    extra = (f"Proxy-Authorization: {auth}",)
    phone.send(subscribe_request(phone, contact=contact, call_id=call_id, cseq=2, extra=extra),
               target)  # fmt: skip
    return await final_answer(phone)


async def next_notify(phone: Attacker) -> Request:
    while True:
        data = await phone.recv(5.0)
        assert data is not None, "no NOTIFY came"
        msg = parse_message(data)
        if isinstance(msg, Request) and msg.method == "NOTIFY":
            return msg


async def test_notifies_go_to_the_subscribers_own_address_not_its_contact(
    gateway: GatewayProcess, attacker: Attacker
) -> None:
    async with Canary() as canary:
        ok = await subscribe(attacker, gateway, f"<sip:204@{canary.uri_host()}>", "own-flow")
        assert ok.status == 200
        notify = await next_notify(attacker)
        # Addressed to the Contact (its Request-URI), delivered to the subscriber.
        assert notify.uri_raw == f"sip:204@{canary.uri_host()}"
        await attacker.drain(quiet=1.0)
        assert canary.received == []


async def test_another_host_cannot_end_or_refresh_a_subscription_it_sniffed(
    gateway: GatewayProcess, attacker: Attacker
) -> None:
    host, port = attacker.address
    ok = await subscribe(attacker, gateway, f"<sip:204@{host}:{port}>", "sniffed")
    assert ok.status == 200 and ok.to.tag
    await next_notify(attacker)
    thief = Attacker("127.0.0.2")
    try:
        forged = request(
            "SUBSCRIBE", str(ok.get("Contact")).strip("<>"), via=thief.address,
            from_="<sip:204@acme.test>;tag=w1", to=f"<sip:201@acme.test>;tag={ok.to.tag}",
            call_id="sniffed", cseq=3,
            headers=(f"Contact: <sip:x@{thief.address[0]}:{thief.address[1]}>",
                     "Event: dialog", "Expires: 0"),
        )  # fmt: skip
        thief.send(forged, ("127.0.0.1", gateway.ports.sip))
        assert (await final_answer(thief)).status == 481
    finally:
        thief.close()
    # The real subscriber's refresh still finds its subscription.
    refresh = request(
        "SUBSCRIBE", str(ok.get("Contact")).strip("<>"), via=attacker.address,
        from_="<sip:204@acme.test>;tag=w1", to=f"<sip:201@acme.test>;tag={ok.to.tag}",
        call_id="sniffed", cseq=4,
        headers=(f"Contact: <sip:204@{host}:{port}>", "Event: dialog", "Expires: 600"),
    )  # fmt: skip
    attacker.send(refresh, ("127.0.0.1", gateway.ports.sip))
    assert (await final_answer(attacker)).status == 200
