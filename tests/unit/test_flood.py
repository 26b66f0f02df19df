"""SIP flood protection (gateway/proxy/flood.py): requests counted per source in fixed
windows, the excess dropped before parsing; a configured trunk's traffic, its OPTIONS
above all, never counted. Driven with a hand-moved clock, then through ProxyServer's
entry point with a recording transport (no sockets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError
from gateway.proxy.directory import Directory
from gateway.proxy.flood import FloodGuard, source_bucket
from gateway.proxy.server import ProxyServer
from gateway.sip.message import Response
from gateway.stats import Counters
from gateway.transport.addresses import Source

from .proxy_harness import CONFIG, Clock, FakeTransport, request, settings_from

TRUNK = ("127.0.0.1", 5080)  # the harness trunk's match: 127.0.0.1:5080 and :5082
STRANGER = ("192.0.2.66", 5060)
LOCAL = ("127.0.0.1", 5060)


def options(src: tuple[str, int], n: int) -> bytes:
    return request("OPTIONS", "sip:127.0.0.1:5060", src=src, branch=f"z9hG4bK-f{n}").encode()


def udp(src: tuple[str, int]) -> Source:
    return Source("udp", src, LOCAL)


@pytest.fixture
def directory(tmp_path: Path) -> Directory:
    return Directory(settings_from(CONFIG, tmp_path))


def guard(directory: Directory, clock: Clock, limit: int = 10, window: float = 2.0) -> FloodGuard:
    return FloodGuard(
        limit,
        window,
        clock=clock,
        is_peer=lambda host, port: directory.trunk_for_source(host, port) is not None,
    )


def burst(g: FloodGuard, src: tuple[str, int], count: int) -> int:
    """How many of `count` OPTIONS from `src` get through."""
    return sum(g.admit(options(src, n), udp(src)) for n in range(count))


def test_a_burst_beyond_the_limit_is_dropped_until_the_window_ends(directory: Directory) -> None:
    clock = Clock()
    g = guard(directory, clock)
    assert burst(g, STRANGER, 50) == 10
    assert g.dropped == 40
    clock.now += 1.9
    assert burst(g, STRANGER, 5) == 0
    clock.now += 0.2  # a new window
    assert burst(g, STRANGER, 50) == 10


def test_a_trunks_options_are_never_counted(directory: Directory) -> None:
    clock = Clock()
    g = guard(directory, clock)
    assert burst(g, TRUNK, 1000) == 1000
    assert burst(g, ("127.0.0.1", 5082), 1000) == 1000, "every match entry of the trunk"
    assert g.dropped == 0


def test_a_trunks_traffic_does_not_fill_the_bucket_of_its_address(directory: Directory) -> None:
    # A phone on the trunk's IP (another port, which the UDP match does not cover) is
    # counted on its own: the trunk's requests were never added to that address.
    clock = Clock()
    g = guard(directory, clock)
    burst(g, TRUNK, 1000)
    assert burst(g, ("127.0.0.1", 5999), 50) == 10


def test_responses_are_never_counted(directory: Directory) -> None:
    g = guard(directory, Clock())
    reply = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert all(g.admit(reply, udp(STRANGER)) for _ in range(100))
    assert burst(g, STRANGER, 10) == 10


def test_zero_turns_it_off(directory: Directory) -> None:
    g = guard(directory, Clock(), limit=0)
    assert burst(g, STRANGER, 1000) == 1000


def test_exempt_networks_are_never_counted(directory: Directory) -> None:
    g = FloodGuard(
        10, 2.0, clock=Clock(), is_peer=lambda host, port: False, exempt=("192.0.2.0/24", "::1")
    )
    assert burst(g, STRANGER, 100) == 100
    assert burst(g, ("::1", 5060), 100) == 100
    assert burst(g, ("198.51.100.1", 5060), 100) == 10


def test_sources_are_counted_by_address_and_ipv6_by_its_64(directory: Directory) -> None:
    g = guard(directory, Clock())
    assert burst(g, ("192.0.2.66", 5060), 6) + burst(g, ("192.0.2.66", 6000), 6) == 10
    assert burst(g, ("2001:db8::1", 5060), 6) + burst(g, ("2001:db8::2", 5060), 6) == 10
    assert burst(g, ("2001:db8:0:1::1", 5060), 10) == 10, "another /64 is another source"
    assert source_bucket("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_bucket("[2001:db8::5]") == "2001:db8::/64"


def test_memory_stays_bounded_under_a_flood_from_many_addresses(directory: Directory) -> None:
    g = FloodGuard(3, 2.0, clock=Clock(), is_peer=lambda host, port: False, max_sources=100)
    admitted = sum(burst(g, (f"10.0.{n // 250}.{n % 250}", 5060), 1) for n in range(1000))
    assert admitted == 100 + 3, "the first 100 sources, then all others share one bucket"
    assert len(g._counts) == 101


async def test_the_sip_server_drops_a_flood_but_answers_every_trunk_probe(
    tmp_path: Path,
) -> None:
    """Through ProxyServer's entry point: the same burst of OPTIONS is answered in full
    from the trunk's address, and only up to the limit from another address."""
    # The loopback is not exempt here: the trunk's address is exempt as the trunk's.
    limits = "flood_max_requests = 20\nflood_exempt = []\n"
    text = CONFIG.replace("registrar_min_expires = 60\n", limits)
    counters = Counters()
    server = ProxyServer(settings_from(text, tmp_path), counters)
    fake = FakeTransport()
    server.proxy.transport = fake  # no sockets: record what would be sent
    for src in (TRUNK, STRANGER):
        for n in range(100):
            server._on_message(options(src, n), udp(src))
    answered = {TRUNK: 0, STRANGER: 0}
    for sent in fake.sent:
        msg = sent.msg
        if isinstance(msg, Response) and msg.status == 200:
            answered[sent.target.host, sent.target.port] += 1
    assert answered == {TRUNK: 100, STRANGER: 20}
    assert counters.transport["flood_dropped"] == 80
    await server.stop()


async def test_the_loopback_is_exempt_unless_configured_otherwise(tmp_path: Path) -> None:
    local = ("127.0.0.1", 5999)  # not the trunk: its match is :5080 and :5082
    for exempt, answered in (("", 100), ("flood_exempt = []\n", 20)):
        text = CONFIG.replace("registrar_min_expires = 60\n", f"flood_max_requests = 20\n{exempt}")
        server = ProxyServer(settings_from(text, tmp_path), Counters())
        fake = FakeTransport()
        server.proxy.transport = fake
        for n in range(100):
            server._on_message(options(local, n), udp(local))
        assert len(fake.sent) == answered
        await server.stop()


def test_flood_settings_default_and_are_checked(tmp_path: Path) -> None:
    sip = settings_from(CONFIG, tmp_path).sip
    assert (sip.flood_max_requests, sip.flood_window) == (200, 2.0)
    assert sip.flood_exempt == ("127.0.0.0/8", "::1")
    bad = {
        "flood_max_requests = -1": (
            "sip.flood_max_requests: must be an integer of at least 0, got -1"
        ),
        "flood_window = 0": "sip.flood_window: must be a positive number, got 0",
        'flood_exempt = ["10.0.0.1:5060"]': (
            'sip.flood_exempt[0]: expected "ip" or a CIDR network (no port), got "10.0.0.1:5060"'
        ),
    }
    for line, error in bad.items():
        text = CONFIG.replace("registrar_min_expires = 60\n", line + "\n")
        with pytest.raises(ConfigError) as err:
            settings_from(text, tmp_path)
        assert str(err.value) == error
