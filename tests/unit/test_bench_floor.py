"""The bench's Python floor (bench/floor.py), which targets take part in which step
scenario, and the soak scenario's pure parts (bench/soak.py, bench/report_soak.py).
The responder is driven over a real loopback UDP socket, in-process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import uvloop

from bench import report, report_soak, soak
from bench.__main__ import parse_args
from bench.floor import FloorTarget, Responder, answer, bind
from bench.runner import TARGETS, turn_order
from bench.targets import supported

TAG = b"f100r"
# What sipp's options_uac.xml sends (bench/scenarios/options_uac.xml), as sipp renders it.
OPTIONS = (
    b"OPTIONS sip:ping@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:40001;branch=z9hG4bK-1-0\r\n"
    b'From: "bench" <sip:bench@127.0.0.1:40001>;tag=77SIPpTag001\r\n'
    b"To: <sip:ping@127.0.0.1:5060>\r\n"
    b"Call-ID: 1-77@127.0.0.1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Contact: <sip:bench@127.0.0.1:40001;transport=UDP>\r\n"
    b"Max-Forwards: 70\r\n"
    b"Accept: application/sdp\r\n"
    b"User-Agent: sipp\r\n"
    b"Content-Length: 0\r\n\r\n"
)
ANSWER = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:40001;branch=z9hG4bK-1-0\r\n"
    b'From: "bench" <sip:bench@127.0.0.1:40001>;tag=77SIPpTag001\r\n'
    b"To: <sip:ping@127.0.0.1:5060>;tag=f100r\r\n"
    b"Call-ID: 1-77@127.0.0.1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_an_options_gets_the_template_200() -> None:
    assert answer(OPTIONS, TAG) == ANSWER


def test_every_via_compact_forms_and_an_existing_to_tag_are_kept() -> None:
    request = (
        b"OPTIONS sip:ping@h SIP/2.0\r\n"
        b"v: SIP/2.0/UDP a:1;branch=z9hG4bK-a\r\n"
        b"Via: SIP/2.0/UDP b:2;branch=z9hG4bK-b\r\n"
        b"f: <sip:x@h>;tag=1\r\nt: <sip:ping@h>;tag=known\r\ni: abc\r\nCSeq: 7 OPTIONS\r\n\r\n"
    )
    assert answer(request, TAG) == (
        b"SIP/2.0 200 OK\r\n"
        b"v: SIP/2.0/UDP a:1;branch=z9hG4bK-a\r\n"
        b"Via: SIP/2.0/UDP b:2;branch=z9hG4bK-b\r\n"
        b"f: <sip:x@h>;tag=1\r\nt: <sip:ping@h>;tag=known\r\ni: abc\r\nCSeq: 7 OPTIONS\r\n"
        b"Content-Length: 0\r\n\r\n"
    )


@pytest.mark.parametrize(
    "datagram",
    [
        OPTIONS.replace(b"OPTIONS sip:", b"INVITE sip:", 1),
        b"SIP/2.0 200 OK\r\nCSeq: 1 OPTIONS\r\n\r\n",
        b"\r\n\r\n",  # a keep-alive
        b"",
        b"\x00\xff garbage",
    ],
)
def test_anything_else_is_ignored(datagram: bytes) -> None:
    assert answer(datagram, TAG) is None


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        self.got.put_nowait(data)


async def _exchange(datagrams: list[bytes]) -> list[bytes]:
    """Send each datagram to a Responder on a loopback socket; what came back (a 0.5 s
    silence after the last one ends the wait: an ignored datagram gets nothing)."""
    loop = asyncio.get_running_loop()
    server, responder = await loop.create_datagram_endpoint(Responder, sock=bind("127.0.0.1", 0))
    port = server.get_extra_info("sockname")[1]
    client, collector = await loop.create_datagram_endpoint(
        _Client, remote_addr=("127.0.0.1", port)
    )
    got = []
    try:
        for datagram in datagrams:
            client.sendto(datagram)
        while True:
            try:
                got.append(await asyncio.wait_for(collector.got.get(), 0.5))
            except TimeoutError:
                break
    finally:
        client.close()
        server.close()
    tag = b";tag=" + responder.to_tag
    return [g.replace(tag, b";tag=" + TAG) for g in got]


def test_the_responder_answers_a_datagram_with_the_200_and_nothing_else() -> None:
    replies = uvloop.run(_exchange([b"INVITE sip:x SIP/2.0\r\n\r\n", OPTIONS, b"junk"]))
    assert replies == [ANSWER]


# -- which targets take part -----------------------------------------------------------------


def test_the_floor_takes_part_in_options_only() -> None:
    labels = list(TARGETS)
    taking, skipped = supported(labels, TARGETS, "options")
    assert taking == labels
    assert skipped == {}
    taking, skipped = supported(labels, TARGETS, "proxied-calls")
    assert taking == ["sipgw", "sipgw-2w", "kamailio-1w", "kamailio-2w"]
    assert skipped == {"uvloop-floor": "takes part in options only"}
    assert supported(["uvloop-floor"], TARGETS, "proxied-calls")[0] == []
    floor = FloorTarget()
    assert (floor.label, floor.impl, floor.workers) == ("uvloop-floor", "uvloop-floor", 1)


def test_the_floor_is_in_the_default_run_with_one_search_and_no_sustained_check() -> None:
    assert parse_args([]).targets == [
        "sipgw", "sipgw-2w", "kamailio-1w", "kamailio-2w", "uvloop-floor",
    ]  # fmt: skip
    targets = {label: TARGETS[label]() for label in ("sipgw", "uvloop-floor")}
    assert turn_order(targets, 3) == [
        (0, "sipgw"), (0, "uvloop-floor"), (1, "sipgw"), (2, "sipgw"),
    ]  # fmt: skip
    assert not targets["uvloop-floor"].sustained_check and targets["sipgw"].sustained_check


def test_sipgw_is_compared_with_the_floor() -> None:
    rows = [
        {"label": "sipgw", "implementation": "sipgw", "workers": 1},
        {"label": "sipgw-2w", "implementation": "sipgw", "workers": 2},
        {"label": "kamailio-1w", "implementation": "kamailio", "workers": 1},
        {"label": "uvloop-floor", "implementation": "uvloop-floor", "workers": 1},
    ]
    pairs = [(a["label"], b["label"]) for a, b in report.ratio_pairs(rows)]
    assert pairs == [
        ("sipgw", "kamailio-1w"), ("sipgw", "uvloop-floor"), ("sipgw-2w", "sipgw"),
    ]  # fmt: skip


# -- the soak's pure parts ---------------------------------------------------------------------


def test_the_longest_gc_pause_from_a_gauge_or_a_histogram() -> None:
    assert soak.gc_pause_max_s("sipgw_gc_pause_max_seconds 0.012\n") == 0.012
    histogram = (
        "# TYPE sipgw_gc_pause_seconds histogram\n"
        'sipgw_gc_pause_seconds_bucket{le="0.001"} 90.0\n'
        'sipgw_gc_pause_seconds_bucket{le="0.005"} 99.0\n'
        'sipgw_gc_pause_seconds_bucket{le="0.02"} 100.0\n'
        'sipgw_gc_pause_seconds_bucket{le="0.1"} 100.0\n'
        'sipgw_gc_pause_seconds_bucket{le="+Inf"} 100.0\n'
    )
    assert soak.gc_pause_max_s(histogram) == 0.02  # every pause fits in the 20 ms bucket
    assert soak.gc_pause_max_s("sipgw_events_published_total 4.0\n") is None
    assert soak.gauge("sipgw_bus_lag_seconds 0.25\n", "sipgw_bus_lag_seconds") == 0.25
    assert soak.gauge("", "sipgw_bus_lag_seconds") is None


def test_soak_rate_warmup_and_rss_growth() -> None:
    assert soak.soak_rate(2000) == 1200 and soak.soak_rate(1) == 1
    assert soak.warmup_s(600) == 60 and soak.warmup_s(60) == 30
    samples = [{"t_s": t, "rss_kib": kib} for t, kib in
               ((10, 60_000), (60, 100_000), (300, 103_000), (600, 101_000))]  # fmt: skip
    assert report_soak.rss_growth(samples, 60) == {
        "rss_kib_after_warmup": 100_000, "rss_kib_max": 103_000, "rss_growth": 0.03,
    }  # fmt: skip
    assert report_soak.rss_growth(samples[:2], 60)["rss_growth"] is None


def test_sipps_progress_from_its_stat_file() -> None:
    text = (
        "TotalCallCreated;SuccessfulCall(C);FailedCall(C);Retransmissions(C);\n"
        "100;90;1;3;\n"
        "200;195;2;4;\n"
    )
    assert soak.sipp_progress(text) == {
        "created": 200, "successful": 195, "failed": 2, "retransmissions": 4,
    }  # fmt: skip
    assert soak.sipp_progress("") == {}


def test_a_soak_that_did_not_run_still_reports(tmp_path: Path) -> None:
    doc = report.summarize({
        "scenario": "soak", "title": soak.TITLE, "error": "RuntimeError: no clean rate",
        "method": {"warmup_s": 60.0}, "samples": [], "gateway": {}, "wall_time_s": 3.0,
    })  # fmt: skip
    assert doc["summary"]["duration_s"] is None
    assert "Not run: RuntimeError: no clean rate" in report.headline_table(doc)
    assert report.plot(doc, tmp_path / "x-soak") == []
