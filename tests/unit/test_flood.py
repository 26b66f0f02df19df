"""SIP flood protection (gateway/proxy/flood.py): messages (requests and responses)
counted per source in fixed windows, the excess dropped before parsing; a configured
trunk's traffic, its OPTIONS above all, never counted; a flood from a million spoofed
sources neither grows memory nor shields a heavy hitter nor drops a legitimate source.
Driven with a hand-moved clock, then through ProxyServer's entry point with a recording
transport (no sockets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError
from gateway.proxy.directory import Directory
from gateway.proxy.flood import SKETCH_ROWS, SKETCH_WIDTH, FloodGuard, source_bucket
from gateway.runtime.sip_server import ProxyServer
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
    """How many of `count` messages from `src` get through."""
    return sum(g.admit(udp(src)) for _ in range(count))


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


def test_responses_are_counted_like_requests(directory: Directory) -> None:
    """A flood of fake responses costs parsing like one of requests: same buckets."""
    g = guard(directory, Clock())
    reply = udp(STRANGER)
    assert sum(g.admit(reply) for _ in range(100)) == 10
    assert burst(g, STRANGER, 10) == 0, "the responses filled the source's bucket"
    assert burst(g, TRUNK, 1000) == 1000, "a trunk's responses are never counted"


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


def spoofed(n: int) -> Source:
    """The n-th of up to 2**24 distinct spoofed IPv4 sources (10.0.0.0/8)."""
    return udp((f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}", 5060))


def test_a_flood_of_a_million_spoofed_sources_keeps_memory_bounded_and_the_limits_true() -> None:
    """One window, a million distinct spoofed sources (one message each: far more than
    one process reads in a window), and among them, once the exact table is full, a
    heavy hitter sending 10x the limit and 500 legitimate sources each sending 3/4 of
    it, spread over the whole window. Memory stays at the table's bound plus the fixed
    sketch; the heavy hitter is cut at the limit; every legitimate message is admitted
    (the sketch over-counts a source only by what collides with it in all four rows:
    here under ten)."""
    limit, table = 200, 10_000
    g = FloodGuard(limit, 2.0, clock=Clock(), is_peer=lambda host, port: False, max_sources=table)
    heavy = udp(("192.0.2.66", 5060))
    legit = [udp((f"198.51.100.{n}", 5060 + n)) for n in range(250)] + [
        udp((f"2001:db8:{n:x}::1", 5060)) for n in range(250)
    ]
    heavy_admitted = legit_admitted = legit_sent = 0
    sketch_size = -1
    for n in range(1_000_000):
        g.admit(spoofed(n))
        if n == 100_000:
            sketch_size = g.sketch_cells
        if n >= 100_000 and n % 400 == 0:  # 2250 rounds, from the table full to the end
            heavy_admitted += sum(g.admit(heavy) for _ in range(10))
            if n % 6000 == 0:  # 150 rounds: each legitimate source sends 150 in all
                legit_admitted += sum(g.admit(source) for source in legit)
                legit_sent += len(legit)
    assert g.tracked == table, "exact counters never beyond the table's bound"
    assert g.sketch_cells == sketch_size == SKETCH_ROWS * SKETCH_WIDTH, "a fixed-size sketch"
    assert limit - 10 <= heavy_admitted <= limit, "the heavy hitter outside the table is cut"
    assert legit_sent == 500 * 150 and legit_admitted == legit_sent, "no legitimate drop"


def test_the_sketch_is_cleared_with_the_window() -> None:
    clock = Clock()
    g = FloodGuard(3, 2.0, clock=clock, is_peer=lambda host, port: False, max_sources=1)
    assert burst(g, STRANGER, 1) == 1  # fills the table of one
    assert burst(g, ("192.0.2.7", 5060), 10) == 3, "counted in the sketch"
    clock.now += 2.0
    assert burst(g, ("192.0.2.7", 5060), 10) == 3, "a fresh window, a fresh sketch"
    assert g.tracked == 1 and burst(g, STRANGER, 10) == 3


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
    assert sip.max_connections_per_source == 32
    bad = {
        "flood_max_requests = -1": (
            "sip.flood_max_requests: must be an integer from 0 to 1000000, got -1"
        ),
        "max_connections_per_source = -1": (
            "sip.max_connections_per_source: must be an integer of at least 0, got -1"
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
