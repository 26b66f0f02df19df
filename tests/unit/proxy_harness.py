"""Drive the proxy without sockets: a recording transport and a hand-moved clock."""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import Settings, load_settings
from gateway.proxy.core import Proxy
from gateway.proxy.observe import Observed
from gateway.sip.message import Request, Response, parse_message
from gateway.stats import Counters
from gateway.transport.addresses import Listen, Source, Target

CONFIG = """
default_tenant = "acme"

[node]
name = "unit"

[sip]
listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
registrar_min_expires = 60

[[tenants]]
id = "acme"
name = "Acme"
domains = ["acme.test"]
region = "NL"

[[tenants.users]]
username = "201"
extension = "201"
password = "Secret-201-pw!"

[[tenants.users]]
username = "202"
extension = "202"
password = "Secret-202-pw!"

[[tenants.users]]
username = "203"
extension = "203"
password = "Secret-203-pw!"
profile = "legacy-md5"

[[tenants.dids]]
number = "+31201234567"
extension = "201"

[[tenants.trunks]]
name = "carrier"
host = "127.0.0.1"
port = 5080
match = ["127.0.0.1:5080", "127.0.0.1:5082"]
"""

PASSWORDS = {"201": "Secret-201-pw!", "202": "Secret-202-pw!"}
TRUNK = ("127.0.0.1", 5082)


def settings_from(text: str, tmp: Path) -> Settings:
    path = tmp / "sipgw.toml"
    path.write_text(textwrap.dedent(text))
    return load_settings(path, env={})


@dataclass
class Sent:
    data: bytes
    target: Target
    on_error: Callable[[], None] | None

    @property
    def msg(self) -> Request | Response:
        return parse_message(self.data)


@dataclass
class FakeTransport:
    listening: list[Listen] = field(
        default_factory=lambda: [Listen("udp", "127.0.0.1", 5060), Listen("tcp", "127.0.0.1", 5060)]
    )
    sent: list[Sent] = field(default_factory=list)
    aliases: list[tuple[int, str, int]] = field(default_factory=list)

    def send(self, data: bytes, target: Target, on_error: Callable[[], None] | None = None) -> None:
        self.sent.append(Sent(data, target, on_error))

    def local_port(self, transport: str, version: int = 4) -> int:
        for spec in self.listening:
            if spec.transport == transport:
                return spec.port
        raise LookupError(transport)

    def supports(self, transport: str) -> bool:
        return any(spec.transport == transport for spec in self.listening)

    def add_alias(self, conn_id: int, host: str, port: int) -> None:
        self.aliases.append((conn_id, host, port))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


_counter = itertools.count(1)


class Harness:
    def __init__(self, settings: Settings) -> None:
        self.transport = FakeTransport()
        self.clock = Clock()
        self.counters = Counters()
        self.observed: list[tuple[Request | Response, Observed]] = []
        self.proxy = Proxy(
            settings,
            transport=self.transport,
            counters=self.counters,
            clock=self.clock,
            auth_secret=b"unit-test-secret-0123456789",
            observer=lambda msg, info: self.observed.append((msg, info)),
        )

    def route(self, call_id: str, tag: str = "f1") -> str:
        """A Route header naming us as we record-routed the dialog (call_id, tag)."""
        return f"Route: <sip:127.0.0.1:5060;lr;sg={self.proxy.route_signer.sign(call_id, tag)}>"

    def observations(self) -> list[str]:
        """What the call tracker would see: "INVITE", "180", "486 (local)" …"""
        out = []
        for msg, info in self.observed:
            text = msg.method if isinstance(msg, Request) else str(msg.status)
            out.append(f"{text} (local)" if info.local else text)
        return out

    def feed(
        self,
        data: bytes | str,
        src: tuple[str, int] = TRUNK,
        transport: str = "udp",
        conn_id: int | None = None,
    ) -> list[Sent]:
        if isinstance(data, str):
            data = data.replace("\r\n", "\n").replace("\n", "\r\n").encode()
        before = len(self.transport.sent)
        self.proxy.receive(data, Source(transport, src, ("127.0.0.1", 5060), conn_id))
        return self.transport.sent[before:]

    def advance(self, seconds: float) -> list[Sent]:
        before = len(self.transport.sent)
        end = self.clock.now + seconds
        while True:
            deadline = self.proxy.next_deadline()
            if deadline is None or deadline > end:
                break
            self.clock.now = max(self.clock.now, deadline)
            self.proxy.fire_timers(self.clock.now)
        self.clock.now = end
        return self.transport.sent[before:]


def request(
    method: str,
    ruri: str,
    *,
    src: tuple[str, int] = TRUNK,
    from_: str = "<sip:+31612345678@carrier.test>;tag=f1",
    to: str | None = None,
    call_id: str | None = None,
    cseq: int = 1,
    branch: str | None = None,
    extra: str = "",
    body: str = "",
    transport: str = "UDP",
    max_forwards: int | None = 70,
) -> str:
    """A well-formed request as a peer at ``src`` would send it."""
    call_id = call_id or f"call-{next(_counter)}@test"
    branch = branch or f"z9hG4bK-{next(_counter)}"
    to = to or f"<{ruri}>"
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {src[0]}:{src[1]};branch={branch};rport",
        f"From: {from_}",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
    ]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines.append(f"Contact: <sip:peer@{src[0]}:{src[1]}>")
    if extra:
        lines.extend(line for line in extra.strip().splitlines())
    lines.append(f"Content-Length: {len(body.encode())}")
    return "\r\n".join(lines) + "\r\n\r\n" + body


def response_to(
    req: Request,
    status: int,
    reason: str = "",
    *,
    to_tag: str | None = "callee",
    extra: str = "",
    body: str = "",
) -> str:
    """The response a UAS sends to ``req`` (which the proxy forwarded)."""
    lines = [f"SIP/2.0 {status} {reason or 'Reason'}"]
    lines += [f"Via: {v}" for v in req.get_all("Via")]
    lines.append(f"From: {req.get('From')}")
    to = req.get("To") or ""
    if to_tag and ";tag=" not in to:
        to += f";tag={to_tag}"
    lines.append(f"To: {to}")
    lines.append(f"Call-ID: {req.call_id}")
    lines.append(f"CSeq: {req.cseq.number} {req.cseq.method}")
    for rr in req.get_all("Record-Route"):
        lines.append(f"Record-Route: {rr}")
    if 200 <= status < 300:
        lines.append("Contact: <sip:callee@127.0.0.1:5090>")
    if extra:
        lines.extend(extra.strip().splitlines())
    lines.append(f"Content-Length: {len(body.encode())}")
    return "\r\n".join(lines) + "\r\n\r\n" + body
