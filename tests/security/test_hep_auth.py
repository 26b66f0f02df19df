"""HEP intake authentication, against a real gateway in monitor mode and its Redis.

The attack: HEP is plain UDP, so whoever can send one datagram to the intake with the
PBX's address as its source can inject "observed" calls into a tenant's event stream
(and so into every CTI client of the tenant). A source with an `auth_key` accepts only
packets that carry it; the others are dropped before they reach the call tracker, and
`sipgw_hep_dropped_total` says why.
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from typing import cast

import pytest
import redis.asyncio as aioredis

from gateway.bus.keys import STREAM_FIELD, decode_payload, events_key
from gateway.calls.hep import encode_hep
from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import GatewayProcess
from tests.peers import ports
from tests.waiting import wait_until_true

KEY = "hep-key-of-the-pbx-0123456789"
PBX = "127.0.0.1"  # the configured HEP sender
STRANGER = "127.0.0.2"  # not a configured HEP sender (Linux routes all of 127/8 to lo)


def invite(call_id: str) -> bytes:
    """An initial INVITE as a PBX would mirror it: a call.offered if it is accepted."""
    return (
        "INVITE sip:201@acme.test SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-" + call_id + "\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:+31612345678@acme.test>;tag=f-" + call_id + "\r\n"
        "To: <sip:201@acme.test>\r\n"
        "Call-ID: " + call_id + "\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:+31612345678@192.0.2.10:5060>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def hep(call_id: str, auth_key: bytes | None) -> bytes:
    return encode_hep(invite(call_id), ("192.0.2.10", 5060), ("192.0.2.1", 5060), auth_key=auth_key)


def send_from(host: str, packet: bytes, to: tuple[str, int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        sock.sendto(packet, to)


def dropped(metrics: str) -> dict[str, int]:
    return {
        reason: int(float(value))
        for reason, value in re.findall(
            r'^sipgw_hep_dropped_total\{reason="([a-z_]+)"\} (\S+)$', metrics, re.M
        )
    }


@pytest.fixture
async def monitor_gateway(gateway_factory: GatewayFactory) -> tuple[GatewayProcess, int]:
    hep_port = ports.free_udp_port()
    extra = f"""
[monitor]
hep_listen = "udp:127.0.0.1:{hep_port}"

[[monitor.sources]]
address = "{PBX}"
tenant = "acme"
auth_key = "{KEY}"
"""
    return await gateway_factory(extra=extra), hep_port


@pytest.fixture
async def redis_of(
    monitor_gateway: tuple[GatewayProcess, int],
) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(monitor_gateway[0].redis_url)
    yield client
    await client.aclose()


async def test_hep_without_its_key_or_with_a_wrong_one_makes_no_event(
    monitor_gateway: tuple[GatewayProcess, int], redis_of: aioredis.Redis
) -> None:
    gw, hep_port = monitor_gateway
    intake = ("127.0.0.1", hep_port)
    stream = events_key("acme")

    send_from(PBX, hep("forged-no-key", None), intake)
    send_from(PBX, hep("forged-bad-key", b"hep-key-guessed-0123456789"), intake)
    send_from(STRANGER, hep("forged-stranger", KEY.encode()), intake)
    drops: dict[str, int] = {}

    async def counted() -> bool:
        drops.update(dropped(await gw.metrics()))
        return sum(drops.values()) >= 3

    await wait_until_true(counted, what="three HEP drops on /metrics")
    assert drops == {"no_auth_key": 1, "bad_auth_key": 1, "unknown_source": 1}
    assert await redis_of.exists(stream) == 0, "no event of a forged packet"
    assert await redis_of.keys("*forged*") == []

    # The PBX with its key: the same path gives the event (so the silence above is
    # the key check, not a broken feed). The intake handles datagrams in order, so the
    # forged ones were refused before this one was read.
    send_from(PBX, hep("genuine-call", KEY.encode()), intake)
    Entries = list[tuple[bytes, dict[bytes, bytes]]]
    entries: Entries = []

    async def arrived() -> bool:
        entries[:] = cast(Entries, await redis_of.xrange(stream))
        return bool(entries)

    await wait_until_true(arrived, what="the genuine call's event in the tenant stream")
    events = [decode_payload(seq.decode(), fields[STREAM_FIELD]) for seq, fields in entries]
    assert [(e["type"], e["sip_call_id"]) for e in events] == [("call.offered", "genuine-call")]
    assert dropped(await gw.metrics()) == drops, "the genuine packet was not dropped"
    assert await redis_of.exists(events_key("globex")) == 0
