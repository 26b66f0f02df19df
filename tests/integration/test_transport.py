"""The transport layer with real sockets on loopback: IPv6, rport, connection limits,
idle timeouts, TLS policy, framing errors. The gateway runs in-process here."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.config import Settings, load_settings
from gateway.transport import tls as tls_mod
from tests.peers.ports import free_port

OPTIONS = (
    "OPTIONS sip:{host}:{port} SIP/2.0\r\n"
    "Via: SIP/2.0/{transport} {via_host}:{via_port};branch=z9hG4bK-{tag};rport\r\n"
    "From: <sip:probe@example.org>;tag={tag}\r\n"
    "To: <sip:{host}:{port}>\r\n"
    "Call-ID: {tag}@probe\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Length: 0\r\n\r\n"
)


def settings(tmp_path: Path, listen: list[str], extra: str = "") -> Settings:
    http = free_port(udp=False)
    path = tmp_path / "sipgw.toml"
    listen_toml = ", ".join(f'"{item}"' for item in listen)
    path.write_text(
        f"""
[node]
name = "transport-test"
[sip]
listen = [{listen_toml}]
{extra}
[http]
listen = "127.0.0.1:{http}"
[log]
format = "text"
"""
    )
    return load_settings(path, env={})


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[list[Gateway]]:
    gateways: list[Gateway] = []
    yield gateways
    for gw in gateways:
        await gw.stop()


async def start(started: list[Gateway], s: Settings, tmp_path: Path) -> Gateway:
    gw = Gateway(s, state_dir=tmp_path / "state")
    await gw.start()
    started.append(gw)
    return gw


def options(host: str, port: int, transport: str, via_host: str, via_port: int, tag: str) -> bytes:
    bracketed = f"[{host}]" if ":" in host else host
    return OPTIONS.format(
        host=bracketed,
        port=port,
        transport=transport,
        via_host=via_host,
        via_port=via_port,
        tag=tag,
    ).encode()


async def udp_exchange(family: int, host: str, port: int, data: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        sock.bind((host, 0))
        await loop.sock_sendto(sock, data, (host, port))
        reply = await asyncio.wait_for(loop.sock_recv(sock, 65535), 5)
        return reply
    finally:
        sock.close()


async def test_udp_and_tcp_over_ipv6(tmp_path: Path, started: list[Gateway]) -> None:
    port = free_port(host="::1")
    gw = await start(
        started, settings(tmp_path, [f"udp:[::1]:{port}", f"tcp:[::1]:{port}"]), tmp_path
    )
    assert gw.sip is not None
    # The Via claims a port nobody listens on: rport makes the answer go to the source.
    reply = await udp_exchange(
        socket.AF_INET6, "::1", port, options("::1", port, "UDP", "[::1]", 9, "v6udp")
    )
    head = reply.decode()
    assert head.startswith("SIP/2.0 200 ")
    assert "received=::1" in head and ";rport=" in head and "rport=9" not in head

    reader, writer = await asyncio.open_connection("::1", port)
    writer.write(options("::1", port, "TCP", "[::1]", 5060, "v6tcp"))
    status = await asyncio.wait_for(reader.readline(), 5)
    assert status.startswith(b"SIP/2.0 200 ")
    writer.close()


async def test_connection_limit_refuses_the_extra_connection(
    tmp_path: Path, started: list[Gateway]
) -> None:
    port = free_port()
    s = settings(tmp_path, [f"tcp:127.0.0.1:{port}"], "max_connections = 2")
    gw = await start(started, s, tmp_path)
    assert gw.sip is not None
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while gw.sip.transport.connection_count < 2:
        assert loop.time() < deadline
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # The third connection is accepted by the kernel and closed by the gateway at once.
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert gw.counters.transport["connection_refused_limit"] == 1
    # The two within the limit still work.
    r0, w0 = conns[0]
    w0.write(options("127.0.0.1", port, "TCP", "127.0.0.1", 5060, "limit"))
    assert (await asyncio.wait_for(r0.readline(), 5)).startswith(b"SIP/2.0 200 ")
    for _, w in [*conns, (reader, writer)]:
        w.close()


async def test_idle_connections_are_closed(tmp_path: Path, started: list[Gateway]) -> None:
    port = free_port()
    s = settings(tmp_path, [f"tcp:127.0.0.1:{port}"], "idle_timeout = 0.5")
    gw = await start(started, s, tmp_path)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Nothing sent: the idle sweep closes it within a few sweep periods.
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert gw.counters.transport["idle_closed"] == 1
    writer.close()


async def test_keepalive_ping_is_answered_with_pong(tmp_path: Path, started: list[Gateway]) -> None:
    port = free_port()
    await start(started, settings(tmp_path, [f"tcp:127.0.0.1:{port}"]), tmp_path)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\r\n\r\n")  # RFC 5626 §4.4.1 ping
    assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
    writer.close()


async def test_framing_error_closes_only_that_connection(
    tmp_path: Path, started: list[Gateway]
) -> None:
    port = free_port()
    gw = await start(started, settings(tmp_path, [f"tcp:127.0.0.1:{port}"]), tmp_path)
    good_r, good_w = await asyncio.open_connection("127.0.0.1", port)
    bad_r, bad_w = await asyncio.open_connection("127.0.0.1", port)
    bad_w.write(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: -5\r\n\r\n")
    assert await asyncio.wait_for(bad_r.read(), 5) == b""
    assert sum(gw.counters.parse_errors.values()) >= 1
    good_w.write(options("127.0.0.1", port, "TCP", "127.0.0.1", 5060, "good"))
    assert (await asyncio.wait_for(good_r.readline(), 5)).startswith(b"SIP/2.0 200 ")
    for w in (good_w, bad_w):
        w.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
async def test_tls_policy(tmp_path: Path, started: list[Gateway]) -> None:
    port = free_port(udp=False)
    await start(started, settings(tmp_path, [f"tls:127.0.0.1:{port}"]), tmp_path)
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    sslobj = writer.get_extra_info("ssl_object")
    assert sslobj.version() == "TLSv1.3"
    writer.write(options("127.0.0.1", port, "TLS", "127.0.0.1", 5061, "tls"))
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"SIP/2.0 200 ")
    writer.close()

    # A client limited to TLS 1.1 never gets a session.
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=old), 5)


def test_server_context_offers_only_forward_secret_aead_suites(tmp_path: Path) -> None:
    cert, key = tls_mod.ensure_self_signed(tmp_path, ["127.0.0.1"])
    ctx = tls_mod.server_context(cert, key)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12, "no TLS 1.2 suites at all"
    for suite in tls12:
        assert suite["aead"], suite["name"]
        assert suite["kea"] == "kx-ecdhe", suite["name"]
