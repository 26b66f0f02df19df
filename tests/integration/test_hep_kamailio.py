"""Monitor mode end to end: sipp UAC → Kamailio (siptrace, HEPv3) → sipp UAS, and
sipgw's HepIntake receiving Kamailio's HEP copies of every SIP message.

Kamailio (tests/integration/kamailio/siptrace.cfg) mirrors each message as it receives
it and as it sends it, so one call of the sipp "uac"/"uas" scenarios gives 13 HEP
packets: INVITE in/out, the 100 Kamailio sends itself, 180 in/out, 200 in/out, ACK
in/out, BYE in/out and 200 in/out, each with the addresses of that hop.

Kamailio runs with one UDP worker (-n 1): siptrace sends a copy from the worker that
handles the message, so with several workers the copies of two consecutive messages of
one call could overtake each other on the way to the intake.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.calls.hep import FAMILY_IPV4, IPPROTO_UDP, HepPacket, encode_hep
from gateway.config import MonitorSettings, MonitorSource
from gateway.runtime.hep_listener import HepIntake
from gateway.sip.message import Request, Response, parse_message
from tests.peers import ports
from tests.peers.process import PeerError, PeerProcess, in_ci, require_binary
from tests.peers.sipp import SippProcess, scenario, start_sipp

pytestmark = [pytest.mark.peers, pytest.mark.asyncio]

CONFIG = Path(__file__).with_name("kamailio") / "siptrace.cfg"
HOST = "127.0.0.1"
CAPTURE_ID = 2001  # hep_capture_id in siptrace.cfg
HEP_AUTH_KEY = "kamailio-hep-key-0123456789"  # auth_key in siptrace.cfg
CALLS = 5
PER_CALL = 13

# Where distributions put Kamailio's modules, after the binary's own default (-h).
MODULE_DIRS = (
    "/usr/lib/x86_64-linux-gnu/kamailio/modules",
    "/usr/lib/aarch64-linux-gnu/kamailio/modules",
    "/usr/lib64/kamailio/modules",
    "/usr/lib/kamailio/modules",
    "/usr/local/lib64/kamailio/modules",
    "/usr/local/lib/kamailio/modules",
)


def _missing(what: str) -> None:
    if in_ci():
        pytest.fail(f"{what}; CI must install it")
    pytest.skip(what)


def _module_dir(binary: str) -> Path:
    """Kamailio's module directory, if it holds siptrace.so (else skip, or fail in CI)."""
    dirs: list[str] = []
    try:
        usage = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=10)
        found = re.search(r"Modules search path \(default: ([^)]+)\)", usage.stdout + usage.stderr)
        if found:
            dirs.append(found.group(1).strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    for d in (*dirs, *MODULE_DIRS):
        if (Path(d) / "siptrace.so").is_file():
            return Path(d)
    _missing(
        "Kamailio's siptrace module (siptrace.so) is not installed "
        "(Debian: it ships in the 'kamailio' package)"
    )
    raise AssertionError("unreachable")


@dataclass
class Kamailio:
    proc: PeerProcess
    port: int
    rundir: tempfile.TemporaryDirectory[str]

    @property
    def addr(self) -> tuple[str, int]:
        return HOST, self.port

    def errors(self) -> list[str]:
        return [
            ln.text
            for ln in self.proc.lines
            if " ERROR: " in ln.text or " CRITICAL: " in ln.text or " BUG: " in ln.text
        ]


async def _wait_ready(kam: Kamailio, timeout: float = 15.0) -> None:
    """Send OPTIONS to Kamailio until it answers (its UDP workers are up). The config
    answers this probe before tracing, so it never reaches the HEP feed."""
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[bytes] = loop.create_future()

    class Probe(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
            if not answered.done():
                answered.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(
        Probe, local_addr=(HOST, 0), remote_addr=kam.addr
    )
    local_port = transport.get_extra_info("sockname")[1]
    options = (
        f"OPTIONS sip:{HOST}:{kam.port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {HOST}:{local_port};branch=z9hG4bK-ready-{{n}}\r\n"
        f"From: <sip:probe@{HOST}>;tag=ready\r\nTo: <sip:{HOST}:{kam.port}>\r\n"
        f"Call-ID: ready-{local_port}@{HOST}\r\nCSeq: {{n}} OPTIONS\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    deadline = loop.time() + timeout
    try:
        n = 0
        while True:
            n += 1
            transport.sendto(options.replace("{n}", str(n)).encode())
            try:
                reply = await asyncio.wait_for(asyncio.shield(answered), 0.2)
            except TimeoutError:
                if not kam.proc.running or loop.time() > deadline:
                    raise PeerError(
                        f"Kamailio did not answer OPTIONS within {timeout}s\n{kam.proc.describe()}"
                    ) from None
                continue
            assert reply.startswith(b"SIP/2.0 200"), reply[:200]
            return
    finally:
        transport.close()


async def _start_kamailio(binary: str, module_dir: Path, hep_port: int) -> Kamailio:
    port = ports.free_udp_port()
    rundir = tempfile.TemporaryDirectory(prefix="kamailio-hep-")
    argv = [
        binary,
        "-f",
        str(CONFIG),
        "-DD",
        "-E",
        "-n",
        "1",
        "-L",
        str(module_dir),
        "-Y",
        rundir.name,
        "-w",
        rundir.name,
        "-m",
        "32",
        "-M",
        "4",
        "-l",
        f"udp:{HOST}:{port}",
        "-A",
        f'HEP_URI="sip:{HOST}:{hep_port}"',
    ]
    proc = await PeerProcess.start("kamailio", argv, stdin=False)
    kam = Kamailio(proc, port, rundir)
    try:
        await _wait_ready(kam)
    except BaseException:
        await proc.stop()
        rundir.cleanup()
        raise
    return kam


@dataclass
class Feed:
    """What the intake passed on, in arrival order; `wanted` wakes the test up."""

    items: list[tuple[bytes, HepPacket]] = field(default_factory=list)
    first: asyncio.Event = field(default_factory=asyncio.Event)
    enough: asyncio.Event = field(default_factory=asyncio.Event)
    wanted: int = CALLS * PER_CALL

    def __call__(self, payload: bytes, packet: HepPacket, source: MonitorSource) -> None:
        self.items.append((payload, packet))
        self.first.set()
        if len(self.items) >= self.wanted:
            self.enough.set()


@pytest.fixture
async def hep_feed() -> AsyncIterator[tuple[HepIntake, Feed, Kamailio]]:
    binary = require_binary("kamailio")  # skip here, or fail under CI
    module_dir = _module_dir(binary)
    require_binary("sipp")
    feed = Feed()
    # Kamailio as the one HEP sender, with its key: every packet must pass the check.
    pbx = MonitorSource(address=HOST, tenant="acme", auth_key=HEP_AUTH_KEY)
    intake = HepIntake(feed, MonitorSettings(sources=(pbx,)))
    await intake.start(HOST, ports.free_udp_port())
    assert intake.local is not None
    try:
        kam = await _start_kamailio(binary, module_dir, intake.local[1])
    except BaseException:
        intake.close()
        raise
    try:
        yield intake, feed, kam
    finally:
        await kam.proc.stop()
        kam.rundir.cleanup()
        intake.close()


def _label(msg: Request | Response) -> str:
    if isinstance(msg, Request):
        return msg.method
    return f"{msg.status} {msg.cseq.method}"


async def _send_malformed(target: tuple[str, int]) -> None:
    """Datagrams a HEP port sees in real life: a cut packet, a HEPv2 agent, plain SIP
    sent to the wrong port, and a valid HEP packet that carries RTCP, not SIP."""
    good = encode_hep(b"SIP/2.0 200 OK\r\n\r\n", (HOST, 1), (HOST, 2))
    datagrams = [
        good[:-4],  # length mismatch
        b"\x02\x10\x02\x11" + b"\x00" * 40,  # HEPv2 header: not supported
        b"OPTIONS sip:x@y SIP/2.0\r\n\r\n",  # bad magic
        encode_hep(  # RTCP, from the PBX with its key
            b"\x80\xc8\x00\x06", (HOST, 1), (HOST, 2), proto_type=5, auth_key=HEP_AUTH_KEY.encode()
        ),
    ]
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=target)
    try:
        for d in datagrams:
            transport.sendto(d)
    finally:
        transport.close()


async def test_intake_receives_every_traced_message(
    hep_feed: tuple[HepIntake, Feed, Kamailio],
) -> None:
    intake, feed, kam = hep_feed
    assert intake.local is not None
    started = time.time()
    uas_port, uac_port = ports.free_port(), ports.free_port()
    uas: SippProcess = await start_sipp(
        ["-sf", scenario("uas"), "-m", str(CALLS)], local_port=uas_port, name="sipp-uas", timeout=30
    )
    async with uas:
        # -r 5: the calls spread over a second, so the bad datagrams land between them.
        uac = await start_sipp(
            [
                "-sf",
                scenario("uac"),
                f"{HOST}:{kam.port}",
                "-m",
                str(CALLS),
                "-r",
                "5",
                "-s",
                "bob",
            ],
            local_port=uac_port,
            name="sipp-uac",
            timeout=30,
            keys={"domain": uas.uri_host},  # Kamailio routes by Request-URI
        )
        async with uac:
            await asyncio.wait_for(feed.first.wait(), 15)
            await _send_malformed(intake.local)
            uac_result = await uac.wait(40)
        uac_result.check(calls=CALLS)
        (await uas.wait(15)).check(calls=CALLS)
    # The last copies may still be on their way.
    with contextlib.suppress(TimeoutError):  # the assertions below say what is missing
        await asyncio.wait_for(feed.enough.wait(), 10)
    await asyncio.sleep(0.2)  # and a retransmission would come right behind them
    finished = time.time()
    await kam.proc.stop()

    # -- the bad datagrams were counted and dropped, nothing else went wrong
    assert intake.errors == {"length mismatch": 1, "hep v1/v2 not supported": 1, "bad magic": 1}, (
        intake.errors
    )
    assert intake.dropped == {"malformed": 3}, "and none for its auth key"
    assert intake.counters["other_proto"] == 1
    assert intake.counters["callback_error"] == 0
    assert intake.counters["socket_error"] == 0
    assert intake.sip == len(feed.items)
    assert intake.received == len(feed.items) + 4
    assert kam.errors() == [], kam.proc.describe()

    # -- every call, every hop, in order
    uac_addr, kam_addr, uas_addr = (HOST, uac_port), kam.addr, (HOST, uas_port)
    expected = [
        ("INVITE", uac_addr, kam_addr),
        ("100 INVITE", kam_addr, uac_addr),  # tm's own 100 Trying
        ("INVITE", kam_addr, uas_addr),
        ("180 INVITE", uas_addr, kam_addr),
        ("180 INVITE", kam_addr, uac_addr),
        ("200 INVITE", uas_addr, kam_addr),
        ("200 INVITE", kam_addr, uac_addr),
        ("ACK", uac_addr, kam_addr),
        ("ACK", kam_addr, uas_addr),  # traced in onsend_route (see siptrace.cfg)
        ("BYE", uac_addr, kam_addr),
        ("BYE", kam_addr, uas_addr),
        ("200 BYE", uas_addr, kam_addr),
        ("200 BYE", kam_addr, uac_addr),
    ]
    calls: dict[str, list[tuple[str, tuple[str, int], tuple[str, int]]]] = {}
    seen: set[tuple[str, str, tuple[str, int], tuple[str, int], str]] = set()
    retransmissions = 0
    last_ts: dict[str, float] = {}
    for payload, packet in feed.items:
        assert (packet.family, packet.protocol) == (FAMILY_IPV4, IPPROTO_UDP)
        assert packet.capture_id == CAPTURE_ID and packet.is_sip
        # Kamailio stamps the copy when it handles the message: during this test, and
        # never earlier than the previous copy of the same call (one worker).
        assert started - 1 <= packet.timestamp <= finished + 1, packet.timestamp
        msg = parse_message(payload)
        msg.validate()
        call_id, label = msg.call_id, _label(msg)
        assert packet.timestamp >= last_ts.get(call_id, 0.0) - 0.001
        last_ts[call_id] = packet.timestamp
        key = (call_id, label, packet.src, packet.dst, str(msg.cseq))
        if key in seen:  # a UDP retransmission (sipp's or Kamailio's): same hop again
            retransmissions += 1
            continue
        seen.add(key)
        calls.setdefault(call_id, []).append((label, packet.src, packet.dst))

        # The copy is the message as it was on that hop: Kamailio's Via and
        # Record-Route are on the relayed INVITE only.
        if isinstance(msg, Request) and msg.method == "INVITE":
            hops = len(msg.vias)
            assert hops == (2 if packet.src == kam_addr else 1), payload[:400]
            assert (len(msg.record_routes) == 1) == (packet.src == kam_addr)

    assert len(calls) == CALLS, sorted(calls)
    for call_id, hops in calls.items():
        assert hops == expected, f"call {call_id}:\n" + "\n".join(map(str, hops))
    assert len(feed.items) == CALLS * PER_CALL + retransmissions
