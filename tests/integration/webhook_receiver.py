"""Webhook tests' parts: a receiver, a real HTTPS server (a self-signed certificate the
gateway is told to trust), speaking HTTP/1.1 with keep-alive, that records every
request, and can answer late, answer an error, or go away and come back; the
``[webhooks]`` table of a test gateway; a publisher of tenant acme's events."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11

from gateway.bus.streams import EventBus
from gateway.calls.events import CallEvent, rfc3339, uuid7
from gateway.stats import Counters
from tests.integration.gateway import GatewayProcess
from tests.peers.ports import free_port
from tests.peers.tls import CertPair, make_self_signed
from tests.waiting import wait_until


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() of its arrival

    @property
    def event(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


def signature_ok(secret: str, delivery: Delivery) -> bool:
    """The receiver's own check, written from the Standard Webhooks text and nothing of
    the gateway: HMAC-SHA256 under the base64-decoded secret of "id.timestamp.body"."""
    key = base64.b64decode(secret.split("_", 1)[1])
    headers = delivery.headers
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + delivery.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [s.split(",", 1) for s in headers["webhook-signature"].split(" ")]
    return any(v == "v1" and hmac.compare_digest(sig, expected) for v, sig in given)


@dataclass
class Receiver:
    directory: Path
    port: int = field(default_factory=lambda: free_port(udp=False))
    delay: float = 0.0  # seconds before each answer
    status: int = 200
    received: list[Delivery] = field(default_factory=list)
    cert: CertPair | None = None
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/hook?from=test"

    @property
    def ca(self) -> Path:
        if self.cert is None:
            self.cert = make_self_signed(self.directory, name="receiver")
        return self.cert.cert

    async def start(self) -> Receiver:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca  # noqa: B018 - made on first use
        assert self.cert is not None
        context.load_cert_chain(self.cert.cert, self.cert.key)
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, ssl=context, reuse_address=True
        )
        return self

    async def stop(self) -> None:
        """Gone: the port refuses connections, open ones are cut."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def ids(self) -> list[str]:
        return [d.headers["webhook-id"] for d in self.received]

    async def wait_for(self, count: int, timeout: float) -> None:
        """Until ``count`` requests have arrived; AssertionError after ``timeout``."""
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self._arrived.clear()
                await self._arrived.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                headers: dict[str, str] = {}
                body = b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await reader.read(65536)
                        conn.receive_data(data)
                        continue
                    if isinstance(event, h11.Request):
                        headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:  # ConnectionClosed
                        return
                self.received.append(Delivery(headers, body, time.monotonic()))
                self._arrived.set()
                if self.delay:
                    await asyncio.sleep(self.delay)
                answer = b"ok"
                writer.write(
                    conn.send(h11.Response(status_code=self.status,
                                           headers=[("Content-Length", str(len(answer)))]))
                    + conn.send(h11.Data(data=answer))
                    + conn.send(h11.EndOfMessage())
                )  # fmt: skip
                await writer.drain()
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, ssl.SSLError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()


def webhook_settings(ca: Path, **more: object) -> str:
    """[webhooks] of a test: the receiver's certificate trusted, loopback allowed (the
    receiver is on 127.0.0.1), and quick retries and leases."""
    values = {
        "allow_loopback": "true", "tls_ca": json.dumps(str(ca)), "retry_initial": "0.05",
        "retry_max": "0.5", "refresh_interval": "0.2", "lease_ttl": "1.0",
        **{k: str(v) for k, v in more.items()},
    }  # fmt: skip
    return "[webhooks]\n" + "\n".join(f"{k} = {v}" for k, v in values.items())


class Publisher:
    """Appends events of tenant acme to the stream the gateway reads."""

    def __init__(self, redis_url: str) -> None:
        self.bus = EventBus(redis_url, counters=Counters())
        self.events: list[CallEvent] = []

    async def __aenter__(self) -> Publisher:
        await self.bus.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.bus.stop()

    async def publish(self, count: int, *, extension: str = "201") -> list[str]:
        """``count`` events, their ids in stream order, once Redis holds them all."""
        made = [
            CallEvent(
                "call.offered",
                rfc3339(time.time()),
                "test",
                "acme",
                call_id=uuid7(),
                extension=extension,
            )
            for _ in range(count)
        ]
        for event in made:
            self.bus.publish(event)
        self.events += made
        total = len(self.events)
        await wait_until(lambda: self.bus.published == total, timeout=30, what="appended")
        return [e.event_id for e in made]


async def make_webhook(gw: GatewayProcess, token: str, **body: object) -> dict[str, object]:
    status, raw = await gw.http("POST", "/v1/webhooks", body, token=token)
    assert status == 201, raw
    made: dict[str, object] = json.loads(raw)
    return made
