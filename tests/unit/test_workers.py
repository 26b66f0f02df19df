"""Worker processes without processes: the plan, the envelopes, which worker a message
belongs to, and the counters summed for one scrape."""

from __future__ import annotations

from pathlib import Path

from gateway.api.metrics import merged
from gateway.stats import Counters
from gateway.transport.addresses import Source
from gateway.transport.relay import WorkerPlan, open_stats, seal_stats, unwrap, wrap
from tests.unit.proxy_harness import CONFIG, Harness, request, response_to, settings_from

SECRET = b"k" * 32
SOURCE = Source("udp", ("192.0.2.7", 40000), ("127.0.0.1", 5060))


def test_plan_round_trips_through_the_environment() -> None:
    plan = WorkerPlan(1, 3, SECRET, ((5061,), (5062,), (5063,)))
    again = WorkerPlan.from_env(plan.to_env())
    assert again == plan
    assert again.own_ports == (5062,)
    assert again.siblings() == {5061: 0, 5063: 2}
    assert again.all_ports() == {5061, 5062, 5063}
    assert WorkerPlan.from_env("") is None


def test_envelope_carries_the_original_source_and_refuses_forgeries() -> None:
    packet = wrap(SECRET, SOURCE, b"SIP/2.0 200 OK\r\n\r\n")
    assert packet[:1] == b"\x00"  # never the first byte of a SIP message
    assert unwrap(SECRET, packet) == (SOURCE, b"SIP/2.0 200 OK\r\n\r\n")
    assert unwrap(b"x" * 32, packet) is None  # another secret
    tampered = packet[:-3] + b"XYZ"
    assert unwrap(SECRET, tampered) is None
    assert unwrap(SECRET, b"\x00SGW") is None
    stats = seal_stats(SECRET, {"worker": 1, "counters": {}})
    assert open_stats(SECRET, stats) == {"worker": 1, "counters": {}}
    assert open_stats(SECRET, packet) is None and unwrap(SECRET, stats) is None


def relaying_harness(tmp_path: Path) -> tuple[Harness, list[tuple[int, bytes]]]:
    h = Harness(settings_from(CONFIG, tmp_path))
    relayed: list[tuple[int, bytes]] = []
    h.proxy.siblings = {5070: 1}
    h.proxy.worker_ports = frozenset({5060, 5070})
    h.proxy.relay = lambda owner, data, source: relayed.append((owner, data))
    return h, relayed


def test_a_response_for_a_sibling_goes_to_it(tmp_path: Path) -> None:
    h, relayed = relaying_harness(tmp_path)
    invite = request("INVITE", "sip:201@acme.test", extra="")
    # A 180 whose top Via is worker 1's own port, arrived here.
    text = "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKsgx.1\r\n"
    text += "From: <sip:a@acme.test>;tag=1\r\nTo: <sip:201@acme.test>;tag=2\r\n"
    text += "Call-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    assert h.feed(text) == []
    assert [owner for owner, _ in relayed] == [1]
    assert h.counters.transport["relayed_to_worker"] == 1
    # One of ours (or anyone else's port) is not relayed.
    h.feed(text.replace("5070", "5060"))
    h.feed(text.replace("127.0.0.1:5070", "198.51.100.1:5070"))
    assert len(relayed) == 1
    assert invite  # the harness's request builder is usable alongside


def test_an_in_dialog_request_routed_to_a_sibling_goes_to_it(tmp_path: Path) -> None:
    h, relayed = relaying_harness(tmp_path)
    bye = request(
        "BYE", "sip:201@127.0.0.1:5090", to="<sip:201@acme.test>;tag=x",
        extra="Route: <sip:127.0.0.1:5070;lr>",
    )  # fmt: skip
    assert h.feed(bye) == []
    assert [owner for owner, _ in relayed] == [1]
    # An initial request is never relayed: the kernel's choice of worker stands.
    h.feed(request("OPTIONS", "sip:127.0.0.1:5070"))
    assert len(relayed) == 1


def test_counters_of_workers_add_up() -> None:
    mine, theirs = Counters(), Counters()
    mine.request_in("udp", "INVITE")
    theirs.request_in("udp", "INVITE")
    theirs.request_in("udp", "BYE")
    theirs.lookup_seconds.observe(0.003)
    theirs.dialogs_started = 2
    total = merged(mine, {1: {"counters": theirs.snapshot()}})
    assert total.requests["in", "udp", "INVITE"] == 2
    assert total.requests["in", "udp", "BYE"] == 1
    assert total.lookup_seconds.count == 1 and total.dialogs_started == 2
    assert mine.requests["in", "udp", "INVITE"] == 1  # the live counters are untouched


def test_response_to_comes_from_the_port_the_request_came_to(tmp_path: Path) -> None:
    h = Harness(settings_from(CONFIG, tmp_path))
    sent = h.feed(request("OPTIONS", "sip:127.0.0.1:5060"))
    assert sent and all(s.target.local_port == 5060 for s in sent)
    assert response_to  # imported for symmetry with the other proxy tests
