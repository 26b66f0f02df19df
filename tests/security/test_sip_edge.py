"""Attacks on the SIP edge (issue #11), each against a real gateway and its real Redis.

Every test checks the outcome an attacker wanted and did not get: a byte at a canary,
a key in Redis, bytes back to a spoofed address. The gateway listens on loopback like
every test peer, so these also prove the destination policy is precise: loopback is
reachable for configured trunks and registered phones, and for nothing else.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from gateway.sip.digest import DigestClient
from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import DID, PASSWORDS, GatewayPorts, GatewayProcess
from tests.security.canary import Attacker, Canary
from tests.security.sip import final_answer, register, request, status_of

GW_HOST = "127.0.0.1"


def gateway_address(gw: GatewayProcess) -> tuple[str, int]:
    return GW_HOST, gw.ports.sip


def redis_port(gw: GatewayProcess) -> int:
    port = urlsplit(gw.redis_url).port
    assert port is not None
    return port


async def redis_keys(gw: GatewayProcess) -> list[str]:
    client = aioredis.Redis.from_url(gw.redis_url)
    try:
        return sorted(key.decode() for key in await client.keys("*"))
    finally:
        await client.aclose()


def refused(metrics: str, reason: str) -> float:
    found = re.search(rf'sipgw_sip_refused_total{{reason="{reason}"}} (\S+)', metrics)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def attacker() -> Iterator[Attacker]:
    sock = Attacker()
    yield sock
    sock.close()


# ------------------------------------------------------------ forged in-dialog requests ---
async def test_forged_in_dialog_message_cannot_write_into_redis(
    gateway: GatewayProcess, attacker: Attacker
) -> None:
    """The datagram of the issue: an in-dialog MESSAGE, our address in Route, Redis in
    the Request-URI and Redis commands in the body."""
    body = "SET pwned 1\r\nHSET sipgw:token:forged tenant acme role admin\r\n"
    datagram = request(
        "MESSAGE",
        f"sip:x@127.0.0.1:{redis_port(gateway)};transport=tcp",
        via=attacker.address,
        to="<sip:x@acme.test>;tag=dialog",
        headers=(f"Route: <sip:{GW_HOST}:{gateway.ports.sip};lr>", "Content-Type: text/plain"),
        body=body,
    )
    attacker.send(datagram, gateway_address(gateway))
    answer = await final_answer(attacker)
    assert answer.status == 403
    keys = await redis_keys(gateway)
    assert "pwned" not in keys and "sipgw:token:forged" not in keys
    assert refused(await gateway.metrics(), "unsigned_route") == 1


async def test_forged_in_dialog_invite_to_a_premium_number_never_reaches_the_trunk(
    gateway_factory: GatewayFactory, attacker: Attacker
) -> None:
    ports = GatewayPorts()
    async with Canary(port=ports.trunk) as trunk:
        gw = await gateway_factory(ports=ports)
        for route in (
            f"<sip:{GW_HOST}:{ports.sip};lr>",  # no signature
            f"<sip:{GW_HOST}:{ports.sip};lr;sg={secrets.token_hex(10)}>",  # a guessed one
        ):
            attacker.send(
                request(
                    "INVITE",
                    f"sip:+19005550100@127.0.0.1:{ports.trunk}",
                    via=attacker.address,
                    to="<sip:+19005550100@acme.test>;tag=dialog",
                    headers=(f"Route: {route}", "Content-Type: application/sdp"),
                    body="v=0\r\n",
                ),
                gateway_address(gw),
            )
            assert (await final_answer(attacker)).status == 403
        # The ACK of a 2xx goes end to end without an answer: it must be dropped too.
        attacker.send(
            request(
                "ACK",
                f"sip:+19005550100@127.0.0.1:{ports.trunk}",
                via=attacker.address,
                to="<sip:+19005550100@acme.test>;tag=dialog",
                headers=(f"Route: <sip:{GW_HOST}:{ports.sip};lr>",),
            ),
            gateway_address(gw),
        )
        await wait_for_metric(gw, "unsigned_route", 3)
        assert trunk.received == []


async def wait_for_metric(gw: GatewayProcess, reason: str, at_least: float) -> None:
    for _ in range(100):
        if refused(await gw.metrics(), reason) >= at_least:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"sipgw_sip_refused_total{{reason={reason!r}}} never reached {at_least}")


async def test_stray_2xx_is_dropped_not_relayed_on_its_via(
    gateway: GatewayProcess, attacker: Attacker
) -> None:
    async with Canary() as canary:
        stray = (
            "SIP/2.0 200 OK\r\n"
            f"Via: SIP/2.0/UDP {GW_HOST}:{gateway.ports.sip};branch=z9hG4bKsgdeadbeef.1\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{canary.port};branch=z9hG4bKvictim\r\n"
            "From: <sip:a@acme.test>;tag=1\r\nTo: <sip:b@acme.test>;tag=2\r\n"
            "Call-ID: stray\r\nCSeq: 1 INVITE\r\nContent-Type: text/plain\r\n"
            "Content-Length: 12\r\n\r\nSET pwned 1\n"
        ).encode()
        attacker.send(stray, gateway_address(gateway))
        await wait_for_metric(gateway, "stray_response", 1)
        assert canary.received == []
        assert await attacker.recv(0.2) is None


# ----------------------------------------------------------------------- registrations ---
async def test_register_with_a_contact_at_our_redis_is_refused(
    gateway: GatewayProcess, attacker: Attacker
) -> None:
    contact = f"<sip:201@127.0.0.1:{redis_port(gateway)};transport=tcp>"
    answer = await register(
        attacker, gateway_address(gateway), "201", PASSWORDS["201"], contact=contact
    )
    assert (answer.status, answer.reason) == (403, "Contact address not allowed")
    assert not [key for key in await redis_keys(gateway) if ":loc:" in key]


async def test_a_registered_phone_is_reached_over_its_flow_not_its_contact(
    gateway_factory: GatewayFactory, attacker: Attacker
) -> None:
    """An account holder registers a Contact naming another loopback service: the
    registration is its own, but calls to it go to where it registered from."""
    ports = GatewayPorts()
    async with Canary() as service:
        gw = await gateway_factory(ports=ports)
        answer = await register(
            attacker,
            gateway_address(gw),
            "201",
            PASSWORDS["201"],
            contact=f"<sip:201@127.0.0.1:{service.port}>",
            rport=False,  # no NAT to see: only the policy keeps us off the Contact
        )
        assert answer.status == 200
        trunk = Attacker(port=ports.trunk_src)  # a trusted trunk address
        try:
            trunk.send(
                request(
                    "INVITE",
                    f"sip:{DID}@127.0.0.1",
                    via=trunk.address,
                    from_="<sip:+31612345678@carrier.test>;tag=t",
                    headers=("Content-Type: application/sdp",),
                    body="v=0\r\n",
                ),
                gateway_address(gw),
            )
            invite = await attacker.recv(5.0)
            assert invite is not None and invite.startswith(b"INVITE sip:201@127.0.0.1:")
        finally:
            trunk.close()
        assert service.received == []


# ------------------------------------------------------------------------ amplification ---
async def test_a_spoofed_invite_gets_one_small_stateless_challenge(
    gateway: GatewayProcess, attacker: Attacker
) -> None:
    """The issue's measurement: a 277-byte INVITE made 12 packets, 6 905 bytes. Now one
    challenge, no 100 Trying, no retransmission, at most twice the bytes."""
    invite = request(
        "INVITE",
        "sip:202@acme.test",
        via=attacker.address,
        headers=("Contact: <sip:201@127.0.0.1>", "Content-Type: application/sdp"),
        body="v=0\r\n",
    )
    attacker.send(invite, gateway_address(gateway))
    # Timer G would retransmit a stateful 407 after T1 (0.5 s), 1 s, 2 s …
    replies = await attacker.drain(quiet=2.5)
    assert [status_of(r) for r in replies] == [407]
    assert attacker.received <= 2 * attacker.sent, (attacker.sent, attacker.received)


async def test_options_probes_from_strangers_get_no_amplification(
    gateway: GatewayProcess, attacker: Attacker
) -> None:
    """OPTIONS to the gateway is answered from a template to anyone (probes need no
    credentials): a spoofed source gets at most one datagram, never more than twice
    what was sent, however small the probe."""
    probes = [
        request("OPTIONS", f"sip:{GW_HOST}:{gateway.ports.sip}", via=attacker.address),
        # Minimal: the capabilities alone would make the answer more than twice this.
        (
            f"OPTIONS sip:{GW_HOST}:{gateway.ports.sip} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {attacker.address[0]}:{attacker.address[1]};branch=z9hG4bKa\r\n"
            "From: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n"
        ).encode(),
    ]
    for probe in probes:
        attacker.send(probe, gateway_address(gateway))
    replies = await attacker.drain(quiet=1.0)
    assert [status_of(r) for r in replies] == [200]  # the full probe; the tiny one: none
    assert attacker.received <= 2 * attacker.sent
    assert refused(await gateway.metrics(), "reply_too_large") == 1


# ------------------------------------------------------------------------------ digest ---
async def test_password_guessing_is_throttled_without_locking_out_the_phone(
    gateway: GatewayProcess,
) -> None:
    guesser = Attacker("127.0.0.2")
    phone = Attacker("127.0.0.1")
    try:
        statuses: list[int] = []
        for attempt in range(1000):
            password = PASSWORDS["201"] if attempt == 999 else f"Guess-{attempt:04d}!"
            answer = await register(guesser, gateway_address(gateway), "201", password)
            statuses.append(answer.status)
        assert 200 not in statuses  # nothing found, the right password included
        assert statuses[-1] == 403  # refused while throttled, unchecked
        checked = statuses.count(401)
        assert checked <= 12, f"{checked} guesses were checked"
        metrics = await gateway.metrics()
        assert re.search(r'sipgw_sip_auth_failures_total{reason="throttled"} (\d+)', metrics)
        # The real phone, from its own address, registers with its password.
        answer = await register(phone, gateway_address(gateway), "201", PASSWORDS["201"])
        assert answer.status == 200
    finally:
        guesser.close()
        phone.close()


def _free_step(*ports: int) -> int:
    """A worker_port_step whose own ports (port + step * 1, 2) are all free."""
    for _ in range(200):
        step = secrets.randbelow(3000) + 500
        wanted = [p + step * i for p in ports for i in (1, 2)]
        if all(_port_free(p) for p in wanted) and max(wanted) < 60000:
            return step
    raise RuntimeError("no free worker ports")


def _port_free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


async def test_captured_digest_replays_nowhere(
    gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A captured Proxy-Authorization works once: not again on the worker that checked
    it, not on its sibling worker, and not for another Request-URI."""
    ports = GatewayPorts()
    step = _free_step(ports.sip, ports.tls)
    monkeypatch.setenv("SIPGW_NODE__WORKER_PORT_STEP", str(step))
    worker = [(GW_HOST, ports.sip + step), (GW_HOST, ports.sip + 2 * step)]
    phone = Attacker()
    async with Canary(port=ports.trunk) as trunk:
        gw = await gateway_factory(ports=ports, workers=2)
        try:
            assert (await register(phone, worker[0], "201", PASSWORDS["201"])).status == 200
            ruri = "sip:+31612345678@acme.test"

            def invite(uri: str, auth: str | None = None) -> bytes:
                return request(
                    "INVITE",
                    uri,
                    via=phone.address,
                    from_=f"<sip:201@acme.test>;tag={secrets.token_hex(4)}",
                    headers=(
                        f"Contact: <sip:201@{phone.address[0]}:{phone.address[1]}>",
                        *((f"Proxy-Authorization: {auth}",) if auth else ()),
                    ),
                )

            phone.send(invite(ruri), worker[0])
            challenge = await final_answer(phone)
            value = challenge.get_all("Proxy-Authenticate")[0]
            captured = DigestClient("201", PASSWORDS["201"]).authorization(value, "INVITE", ruri)
            phone.send(invite(ruri, captured), worker[0])  # the genuine call
            for _ in range(100):
                if trunk.received:
                    break
                await asyncio.sleep(0.05)
            genuine = call_ids(trunk)
            assert len(genuine) == 1

            attempts = [
                (worker[0], ruri, "replayed on the worker that checked it"),
                (worker[1], ruri, "replayed on the sibling worker"),
                (worker[0], "sip:+4470555000@acme.test", "for another destination"),
            ]
            for where, uri, what in attempts:
                phone.send(invite(uri, captured), where)
                answer = await final_answer(phone)
                assert answer.status == 407, what
            assert call_ids(trunk) == genuine
        finally:
            phone.close()
        assert gw.errors() == []


def call_ids(canary: Canary) -> set[str]:
    found = set()
    for _, data in canary.received:
        match = re.search(rb"\r\nCall-ID: ([^\r]+)", data)
        if match and data.startswith(b"INVITE "):
            found.add(match.group(1).decode())
    return found
