"""A User-Agent is the peer's own text (issue #15 part 5): claiming a phone whose profile
offers only MD5 changes which challenge the gateway offers, never that it challenges nor
what the answer must prove. Against a real gateway whose users name no profile."""

from __future__ import annotations

import secrets

from gateway.sip.digest import DigestClient
from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import DOMAIN, PASSWORDS
from tests.security.canary import Attacker
from tests.security.sip import final_answer, request

WEAK = "baresip v1.0.0 (x86_64/linux)"  # baresip.toml: MD5 alone


async def test_claiming_a_weaker_phone_gains_nothing(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(profiles=dict.fromkeys(PASSWORDS))
    target = ("127.0.0.1", gw.ports.sip)
    attacker = Attacker()
    call_id = secrets.token_hex(8)

    def register(cseq: int, *extra: str) -> bytes:
        return request(
            "REGISTER", f"sip:{DOMAIN}", via=attacker.address,
            from_=f"<sip:201@{DOMAIN}>;tag=w", to=f"<sip:201@{DOMAIN}>", call_id=call_id,
            cseq=cseq, headers=(f"User-Agent: {WEAK}", "Expires: 600",
                                f"Contact: <sip:201@{attacker.address[0]}:{attacker.address[1]}>",
                                *extra),
        )  # fmt: skip

    # Still challenged, with what the claimed phone can do.
    attacker.send(register(1), target)
    challenge = await final_answer(attacker)
    assert challenge.status == 401
    (offered,) = challenge.get_all("WWW-Authenticate")
    assert "algorithm=MD5" in offered

    # MD5 still needs the password: a wrong one is refused, as often as it is tried.
    for cseq in (2, 3):
        auth = DigestClient("201", "Not-the-password-1").authorization(
            offered, "REGISTER", f"sip:{DOMAIN}"
        )
        attacker.send(register(cseq, f"Authorization: {auth}"), target)
        assert (await final_answer(attacker)).status in (401, 403)

    # No credentials at all, whatever the claim: challenged again, never registered.
    attacker.send(register(4), target)
    assert (await final_answer(attacker)).status == 401

    # An INVITE in the weak phone's name is challenged too.
    invite = request(
        "INVITE", f"sip:202@{DOMAIN}", via=attacker.address, from_=f"<sip:201@{DOMAIN}>;tag=i",
        headers=(f"User-Agent: {WEAK}", "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, REFER"),
    )  # fmt: skip
    attacker.send(invite, target)
    assert (await final_answer(attacker)).status == 407
    attacker.sock.close()

    metrics = await gw.metrics()
    assert 'sipgw_sip_auth_failures_total{reason="bad_credentials"} 2.0' in metrics
    assert 'sipgw_registrations_total{outcome="ok"}' not in metrics


async def test_the_right_password_registers_whatever_the_claim(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(profiles=dict.fromkeys(PASSWORDS))
    attacker = Attacker()
    call_id = secrets.token_hex(8)
    contact = f"<sip:201@{attacker.address[0]}:{attacker.address[1]}>"

    def register(cseq: int, *extra: str) -> bytes:
        return request(
            "REGISTER", f"sip:{DOMAIN}", via=attacker.address,
            from_=f"<sip:201@{DOMAIN}>;tag=r", to=f"<sip:201@{DOMAIN}>", call_id=call_id,
            cseq=cseq, headers=(f"User-Agent: {WEAK}", "Expires: 600", f"Contact: {contact}",
                                *extra),
        )  # fmt: skip

    attacker.send(register(1), ("127.0.0.1", gw.ports.sip))
    offered = (await final_answer(attacker)).get_all("WWW-Authenticate")[0]
    auth = DigestClient("201", PASSWORDS["201"]).authorization(offered, "REGISTER", f"sip:{DOMAIN}")
    attacker.send(register(2, f"Authorization: {auth}"), ("127.0.0.1", gw.ports.sip))
    accepted = await final_answer(attacker)
    assert accepted.status == 200 and contact[1:-1] in (accepted.get("Contact") or "")
    attacker.sock.close()
