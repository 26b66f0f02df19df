"""RFC 5626 keep-alives over UDP, against a real gateway: a flood of CRLF and double-CRLF
datagrams gets not one byte back (answering would make a spoofed source a target), is
counted as keep-alives and never as parse errors, and costs the gateway nothing it needs
for the next real request."""

from __future__ import annotations

import re

from tests.integration.gateway import GatewayProcess
from tests.security.canary import Attacker
from tests.security.sip import final_answer, request

FLOOD = 5000
BURST = 250


def metric(text: str, name: str, labels: str) -> float:
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


async def test_a_crlf_flood_gets_no_bytes_back(gateway: GatewayProcess) -> None:
    target = ("127.0.0.1", gateway.ports.sip)
    attacker = Attacker()
    before = await gateway.metrics()
    # In bursts small enough for the socket's buffer, so none is lost on the way and the
    # count below is exact. The gateway reads one socket in order: the answer to the
    # OPTIONS after a burst is the first datagram back only if no keep-alive before it
    # was answered.
    for burst in range(FLOOD // BURST):
        for n in range(BURST):
            attacker.send(b"\r\n\r\n" if n % 2 else b"\r\n", target)
        probe = request(
            "OPTIONS", f"sip:127.0.0.1:{gateway.ports.sip}", via=attacker.address,
            from_=f"<sip:probe@127.0.0.1>;tag=p{burst}", headers=("Accept: application/sdp",),
        )  # fmt: skip
        attacker.send(probe, target)
        answer = await final_answer(attacker)
        assert answer.status == 200 and len(attacker.replies) == burst + 1
    assert await attacker.drain(quiet=0.3) == []
    attacker.sock.close()

    after = await gateway.metrics()
    kept = 'event="keepalive_udp"'
    counted = metric(after, "sipgw_transport_events_total", kept) - metric(
        before, "sipgw_transport_events_total", kept
    )
    assert counted == FLOOD
    assert "sipgw_sip_parse_errors_total{" not in after, "a keep-alive is no parse error"


async def test_whitespace_that_is_not_a_keepalive_is_still_a_parse_error(
    gateway: GatewayProcess,
) -> None:
    # Only the two forms RFC 5626 and the phones use are keep-alives: three CRLFs or a
    # lone space stay what they are, broken messages, and get no answer either.
    attacker = Attacker()
    for junk in (b"\r\n\r\n\r\n", b" ", b"\n"):
        attacker.send(junk, ("127.0.0.1", gateway.ports.sip))
    probe = request(
        "OPTIONS", f"sip:127.0.0.1:{gateway.ports.sip}", via=attacker.address,
        from_="<sip:probe@127.0.0.1>;tag=q",
    )  # fmt: skip
    attacker.send(probe, ("127.0.0.1", gateway.ports.sip))
    assert (await final_answer(attacker)).status == 200
    assert len(attacker.replies) == 1
    attacker.sock.close()
    metrics = await gateway.metrics()
    assert 'sipgw_transport_events_total{event="keepalive_udp"}' not in metrics
    assert "sipgw_sip_parse_errors_total{" in metrics
