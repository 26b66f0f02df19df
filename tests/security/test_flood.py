"""The flood guard's bypasses, against a real gateway: fake responses cost parsing like
requests, so they are counted in the same per-source buckets; and one source cannot take
every TCP connection the gateway allows.

Every test sets `flood_exempt = []`: by default the loopback, where the tests' clients
are, is exempt. Clients take their own loopback addresses (127.0.0.2, 127.0.0.3: Linux
routes all of 127/8 to lo), so each is one source.
"""

from __future__ import annotations

import asyncio
import re
from contextlib import AsyncExitStack, suppress

from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import GatewayProcess
from tests.security.canary import Attacker
from tests.waiting import wait_until_true

ATTACKER = "127.0.0.2"
BYSTANDER = "127.0.0.3"


def options(gw: GatewayProcess, transport: str, local: tuple[str, int], n: int) -> bytes:
    host, port = local
    return (
        f"OPTIONS sip:127.0.0.1:{gw.ports.sip} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {host}:{port};branch=z9hG4bK-flood-{n}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@{host}>;tag=f{n}\r\n"
        f"To: <sip:127.0.0.1:{gw.ports.sip}>\r\n"
        f"Call-ID: flood-{n}@{host}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def fake_response(n: int) -> bytes:
    """A 200 OK that answers nothing we sent: parsing it is pure cost."""
    return (
        "SIP/2.0 200 OK\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-fake-{n}\r\n"
        "From: <sip:a@127.0.0.1>;tag=a\r\n"
        "To: <sip:b@127.0.0.1>;tag=b\r\n"
        f"Call-ID: fake-{n}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def transport_event(metrics: str, event: str) -> int:
    found = re.search(rf'^sipgw_transport_events_total\{{event="{event}"\}} (\S+)$', metrics, re.M)
    return int(float(found.group(1))) if found else 0


async def test_fake_responses_fill_the_source_bucket(gateway_factory: GatewayFactory) -> None:
    """50 fake responses from one source, limit 20 per window: the 30 beyond the limit
    are dropped unparsed, and the source's next request is dropped too (before the fix
    responses were never counted: it was answered). Another source is answered."""
    gw = await gateway_factory(
        extra_sip="flood_max_requests = 20\nflood_window = 60\nflood_exempt = []"
    )
    sip = ("127.0.0.1", gw.ports.sip)
    attacker, bystander = Attacker(ATTACKER), Attacker(BYSTANDER)
    try:
        for n in range(50):
            attacker.send(fake_response(n), sip)
        attacker.send(options(gw, "UDP", attacker.address, 1), sip)
        # The gateway reads its socket in order: once the bystander's request is
        # answered, the attacker's was handled, and an answer would already be here.
        bystander.send(options(gw, "UDP", bystander.address, 2), sip)
        answer = await bystander.recv(10)
        assert answer is not None and answer.startswith(b"SIP/2.0 ")
        assert await attacker.recv(0.05) is None, "the source's request was dropped"
        assert transport_event(await gw.metrics(), "flood_dropped") == 30 + 1
    finally:
        attacker.close()
        bystander.close()


class Client:
    """One TCP connection from a chosen loopback address."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.local: tuple[str, int] = writer.get_extra_info("sockname")[:2]

    @classmethod
    async def connect(cls, gw: GatewayProcess, host: str) -> Client:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", gw.ports.sip, local_addr=(host, 0)
        )
        return cls(reader, writer)

    async def answered(self, gw: GatewayProcess, n: int) -> bool:
        """True when an OPTIONS over this connection gets a SIP answer."""
        self.writer.write(options(gw, "TCP", self.local, n))
        try:
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        except (asyncio.IncompleteReadError, ConnectionError):
            return False
        return head.startswith(b"SIP/2.0 ")

    async def closed_by_peer(self) -> bool:
        """True when the gateway closes this connection (within 10 s)."""
        try:
            return await asyncio.wait_for(self.reader.read(), 10) == b""
        except ConnectionError:
            return True  # reset: closed at once, unread

    async def aclose(self) -> None:
        self.writer.close()
        with suppress(ConnectionError):
            await self.writer.wait_closed()


async def test_one_source_cannot_take_every_connection(gateway_factory: GatewayFactory) -> None:
    """Limit 4 per source: the 5th and 6th connections of one address are closed at
    once and counted; another address still connects; a closed connection gives its
    place back."""
    gw = await gateway_factory(extra_sip="max_connections_per_source = 4\nflood_exempt = []")
    async with AsyncExitStack() as stack:

        async def connect(host: str) -> Client:
            client = await Client.connect(gw, host)
            stack.push_async_callback(client.aclose)
            return client

        kept = [await connect(ATTACKER) for _ in range(4)]
        for n, client in enumerate(kept):
            assert await client.answered(gw, n), "the first four are served"
        extra = [await connect(ATTACKER) for _ in range(2)]
        for client in extra:
            assert await client.closed_by_peer(), "beyond the limit: closed at once"
        other = await connect(BYSTANDER)
        assert await other.answered(gw, 10), "another source is not affected"
        assert all([await client.answered(gw, 20 + n) for n, client in enumerate(kept)])
        metrics = await gw.metrics()
        assert transport_event(metrics, "connection_refused_source_limit") == 2
        assert transport_event(metrics, "tcp_opened") == 5

        await kept.pop().aclose()

        async def released() -> bool:
            return transport_event(await gw.metrics(), "tcp_closed") == 1

        await wait_until_true(released, what="the closed connection released")
        again = await connect(ATTACKER)
        assert await again.answered(gw, 30), "a closed connection gives its place back"
        assert transport_event(await gw.metrics(), "connection_refused_source_limit") == 2
