"""The newcomer's first minute: `make run` (scripts/run-demo.sh) on free ports, for real.

It starts its Redis, the gateway on the embedded demo settings, the demo contacts, the
simulated carrier and the simulated phone 201 (`sipgw demo phone`, sipp). `sipgw demo
call` then places inbound calls from the demo carrier, and a WebSocket subscriber logged
in as the demo's user 201 sees the screen pop: the recognized contact, the answer after
the phone's ring time, the end. Click-to-dial as 201 connects the simulated phone to the
simulated carrier (third-party call control), and a softphone's call out reaches the
carrier. Stopping the script (as Ctrl-C does) stops every process it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from gateway.cli.demo import KNOWN_CALLER, RING_SECONDS, UNKNOWN_CALLER
from tests.integration.gateway import REPO, GatewayProcess
from tests.integration.test_click_to_dial import cleared, events_until, flows
from tests.integration.test_events import check_stream, collect
from tests.peers.pjsua import PjsuaAgent
from tests.peers.ports import free_port
from tests.peers.process import PeerProcess, require_binary
from tests.peers.sipp import run_sipp, scenario
from tests.waiting import wait_until_true

pytestmark = [pytest.mark.peers]

DEMO = tomllib.loads((REPO / "gateway" / "default.toml").read_text())
DEMO_USER = next(u for u in DEMO["tenants"][0]["users"] if u["username"] == "201")
DID = DEMO["tenants"][0]["dids"][0]["number"]
FLOW = ["call.offered", "call.delivered", "call.established", "call.cleared"]
PHONE_EXPIRES = 4  # seconds: the phone must register again within the test
DIAL_TO = "0612345678"  # Jane Example's mobile: the demo trunk's simulated carrier answers
# A 3PCC dial request's life (docs/click-to-dial.md).
DIAL_STATES = ["calling_phone", "phone_ringing", "connecting", "destination_ringing",
               "connected", "ended"]  # fmt: skip
# gateway/demo/carrier_answer.xml: it rings 2 s (its wait for a CANCEL), then answers
# and hangs up 10 s later (its wait for the caller's BYE).
CARRIER_RING_SECONDS, CARRIER_TALK_SECONDS = 2.0, 10.0


@dataclass
class RunningDemo:
    script: PeerProcess
    sip: int
    http: int
    trunk: int
    caller: int
    run_dir: Path

    @property
    def call_args(self) -> list[str]:
        return ["--gateway", f"127.0.0.1:{self.sip}", "--source", f"127.0.0.1:{self.caller}"]


def children_of(pid: int) -> set[int]:
    """The PIDs of the live processes whose parent is `pid` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@contextlib.asynccontextmanager
async def make_run(tmp_path: Path) -> AsyncIterator[RunningDemo]:
    """scripts/run-demo.sh on free ports; stopped with SIGINT, as Ctrl-C stops it, and
    checked to have stopped every process it started."""
    require_binary("sipp")
    require_binary("redis-server")
    ports = {name: free_port() for name in ("sip", "tls", "http", "trunk", "caller")}
    run_dir = tmp_path / "run"
    env = {
        "DEMO_SIP_PORT": str(ports["sip"]),
        "DEMO_TLS_PORT": str(ports["tls"]),
        "DEMO_HTTP_PORT": str(ports["http"]),
        "DEMO_TRUNK_PORT": str(ports["trunk"]),
        "DEMO_CALLER_PORT": str(ports["caller"]),
        "DEMO_RUN_DIR": str(run_dir),
        "DEMO_PHONE_EXPIRES": str(PHONE_EXPIRES),
        # A registration that short is below the registrar's floor (60 s) otherwise.
        "SIPGW_SIP__REGISTRAR_MIN_EXPIRES": "2",
        "PYTHONUNBUFFERED": "1",
    }
    script = await PeerProcess.start(
        "run-demo", ["bash", str(REPO / "scripts" / "run-demo.sh")], cwd=REPO, env=env,
        stdin=False, log_files=[run_dir / "demo-phone.out"],
    )  # fmt: skip
    started: set[int] = set()
    try:
        # The guide is the last thing it prints; its last line is the click-to-dial one.
        await script.wait_line("sipgw dial 201", timeout=90)
        started = children_of(script.pid)
        yield RunningDemo(script, ports["sip"], ports["http"], ports["trunk"],
                          ports["caller"], run_dir)  # fmt: skip
        await script.stop(timeout=30, sig=signal.SIGINT)
        assert script.returncode == 130, script.describe()
        left = sorted(pid for pid in started if alive(pid))
        assert left == [], f"run-demo.sh left processes running: {left}\n{script.describe()}"
    finally:
        await script.stop(timeout=5)
        for pid in started:  # only if the script failed to: by PID, never by name
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def http_json(
    method: str, url: str, body: object = None, token: str | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


async def login_as_201(demo: RunningDemo) -> str:
    credentials = {"tenant": "demo", "username": "201", "password": DEMO_USER["api_password"]}
    url = f"http://127.0.0.1:{demo.http}/v1/auth/login"
    status, answer = await asyncio.to_thread(http_json, "POST", url, credentials)
    assert status == 200, answer
    return str(answer["token"])


async def subscribe(demo: RunningDemo, token: str) -> ClientConnection:
    ws = await connect(
        f"ws://127.0.0.1:{demo.http}/v1/events",
        subprotocols=[websockets.Subprotocol("sipgw.json.v1")],
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=5,
    )
    ready = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert ready["type"] == "sipgw.ready"
    return ws


async def sipgw(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run the `sipgw` command as a newcomer would; (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"sipgw {' '.join(args)} still running after {timeout} s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["occurred_at"])


async def one_call(ws: ClientConnection) -> list[dict[str, Any]]:
    """The events of the next call, up to its call.cleared."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        while not events or events[-1]["type"] != "call.cleared":
            events += await collect(ws, 1, timeout=30)
    assert len({e["call_id"] for e in events}) == 1, events
    return events


def recognition(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The event that carries what recognition answered: call.offered, or call.recognized
    when the look-up outlasted the demo's budget (20 ms) on a busy machine."""
    (answer,) = [
        e
        for e in events
        if e["type"] in ("call.offered", "call.recognized") and e["lookup"]["status"] != "pending"
    ]
    return answer


def answered_after_ringing(events: list[dict[str, Any]]) -> None:
    """The phone rang its ring time between the offer and the answer, then the call
    ended: offered, delivered, established, cleared, in that order."""
    flow = [e for e in events if e["type"] != "call.recognized"]
    assert [e["type"] for e in flow] == FLOW
    offered, _, established, cleared = flow
    rang = (at(established) - at(offered)).total_seconds()
    assert RING_SECONDS - 0.05 <= rang < RING_SECONDS + 5, rang
    assert at(cleared) >= at(established)
    assert cleared["cause"]["normalized"] == "normal"


async def test_make_run_shows_a_screen_pop_without_a_softphone(tmp_path: Path) -> None:
    async with make_run(tmp_path) as demo:
        printed = demo.script.output()
        # The first minute: where the client is, how to log in, how to place a call.
        assert f"The web client: http://127.0.0.1:{demo.http}/" in printed
        assert f"log in as 201 / {DEMO_USER['api_password']}" in printed
        assert f".venv/bin/sipgw demo call {' '.join(demo.call_args)}\n" in printed + "\n"
        assert "simulated phone (sipp) registered as 201" in printed
        # What it printed before stays: the softphone settings and the `sipgw watch` line.
        assert "Point a softphone at it:" in printed
        assert f"sipgw watch --url http://127.0.0.1:{demo.http} --username 203" in printed

        ws = await subscribe(demo, await login_as_201(demo))

        status, out, err = await sipgw("demo", "call", *demo.call_args, "--hold", "1")
        assert status == 0, f"{out}\n{err}"
        assert f"{KNOWN_CALLER.number} calls {DID} (extension 201)" in out
        assert "the screen pop names Jane Example (Example BV)" in out
        assert out.splitlines()[-3:] == [
            "ringing: the phone of the extension rings",
            "answered: holding the call for 1 s",
            "ended: the carrier hung up",
        ]
        known = await one_call(ws)
        answered_after_ringing(known)
        pop = recognition(known)
        assert pop["lookup"]["status"] == "hit" and pop["lookup"]["source"] == "demo-crm"
        assert pop["lookup"]["contact"] == {"name": "Jane Example", "company": "Example BV",
                                            "crm_id": "C-1001"}  # fmt: skip
        assert pop["calling"]["number_e164"] == KNOWN_CALLER.number
        assert pop["screen_pop"] == [
            {"name": "crm", "url": "https://crm.example.com/contacts/C-1001"}
        ]

        status, out, err = await sipgw("demo", "call", "--unknown", *demo.call_args, "--hold", "1")
        assert status == 0, f"{out}\n{err}"
        assert f"{UNKNOWN_CALLER.number} calls {DID}" in out
        assert "no demo contact has this number" in out
        unknown = await one_call(ws)
        answered_after_ringing(unknown)
        miss = recognition(unknown)
        assert miss["lookup"]["status"] == "miss" and "contact" not in miss["lookup"]
        assert miss["calling"]["number_e164"] == UNKNOWN_CALLER.number
        (new_contact,) = miss["screen_pop"]
        assert new_contact["name"] == "new-contact"
        assert parse_qs(urlsplit(new_contact["url"]).query)["phone"] == [UNKNOWN_CALLER.number]
        await ws.close()
        check_stream(known + unknown)

        # Both calls took longer than the phone's registration lasts: it registered again.
        registrations = (demo.run_dir / "demo-phone.log").read_text().split()
        assert registrations.count("registered") >= 2, registrations


async def test_the_simulated_phone_stops_ringing_when_told(tmp_path: Path) -> None:
    """A CANCEL while it rings gets 200, and the INVITE 487 with all its Vias, so the
    gateway's 487 reaches the caller (RFC 3261 §9.2)."""
    async with make_run(tmp_path) as demo:
        result = await run_sipp(
            ["-sf", scenario("uac_cancel"), f"127.0.0.1:{demo.sip}", "-s", DID, "-m", "1",
             "-d", "1000"],
            local_port=demo.caller, timeout=20, keys={"caller": KNOWN_CALLER.number},
        )  # fmt: skip
        result.check(calls=1)


async def follow_dial(
    demo: RunningDemo, token: str, dial: dict[str, Any], *, hang_up: bool
) -> tuple[list[str], dict[str, Any]]:
    """`GET /v1/calls/{id}` (what a CRM or the web client polls) until the request is
    finished: the states seen, in order, and the last answer. With `hang_up`, `DELETE`
    once it is connected, as the web client's button does."""
    url = f"http://127.0.0.1:{demo.http}/v1/calls/{dial['id']}"
    seen = [dial["state"]]
    async with asyncio.timeout(RING_SECONDS + CARRIER_RING_SECONDS + CARRIER_TALK_SECONDS + 20):
        while not dial["finished"]:
            await asyncio.sleep(0.05)  # no event says a GET would answer something new
            status, dial = await asyncio.to_thread(http_json, "GET", url, None, token)
            assert status == 200, dial
            if hang_up and dial["state"] == "connected":
                seen.append("connected")
                status, dial = await asyncio.to_thread(http_json, "DELETE", url, None, token)
                assert status == 200, dial
            if dial["state"] != seen[-1]:
                seen.append(dial["state"])
    return seen, dial


def in_order(seen: list[str]) -> bool:
    """`seen` follows the 3PCC dial's life (polling may miss a short stage)."""
    steps = iter(DIAL_STATES)
    return all(state in steps for state in seen)


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def logged(path: Path, line: str, count: int) -> None:
    """Wait until sipp wrote `line` `count` times into its -log_file."""

    async def check() -> bool:
        return log_lines(path).count(line) >= count

    await wait_until_true(check, timeout=10, what=f"{count} x {line!r} in {path.name}")


async def test_click_to_dial_in_the_demo_connects_the_simulated_phone_to_the_number(
    tmp_path: Path,
) -> None:
    """What a newcomer gets from the web client's dial box during `make run`: the
    simulated phone (profile basic-md5: no REFER) rings, answers, and the gateway bridges
    it to the number by third-party call control (RFC 3725 flow I): the simulated
    carrier gets the phone's offer, the phone gets the carrier's answer in the ACK.
    Hung up from the API once, then left until the carrier hangs up."""
    async with make_run(tmp_path) as demo:
        token = await login_as_201(demo)
        ws = await subscribe(demo, token)
        calls = f"http://127.0.0.1:{demo.http}/v1/calls"
        phone_log, carrier_log = demo.run_dir / "demo-phone.log", demo.run_dir / "carrier-calls.log"
        dials: list[dict[str, Any]] = []
        for hang_up in (True, False):
            status, dial = await asyncio.to_thread(
                http_json, "POST", calls, {"from": "201", "to": DIAL_TO}, token
            )
            assert status == 202, dial
            assert (dial["mode"], dial["auto_answer"]) == ("3pcc", "none")
            assert dial["to"]["e164"] == KNOWN_CALLER.number
            seen, done = await follow_dial(demo, token, dial, hang_up=hang_up)
            assert in_order(seen), seen
            assert {"phone_ringing", "destination_ringing", "connected", "ended"} <= set(seen)
            assert done["state"] == "ended", done
            if hang_up:
                assert done["cause"]["message"] == "Cancelled by the requester"
            else:
                assert done["cause"]["message"] == "The destination hung up"
            # Flow I on the wire: the carrier answered the phone's offer, and the ACK
            # brought the phone the carrier's answer; both legs were hung up.
            count = len(dials) + 1
            await logged(carrier_log, "answered o=sipgw-demo", count)
            await logged(phone_log, "answered o=sipgw-demo-carrier", count)
            await logged(phone_log, "ended", count)
            await logged(carrier_log, "ended" if hang_up else "hung up", 1)
            dials.append(dial)
        events = await events_until(ws, cleared(4))
        await ws.close()

    check_stream(events)
    for dial in dials:
        mine = [e for e in events if e["conversation_id"] == dial["conversation_id"]]
        legs = flows(mine)
        phone = dial["phone_call_id"]
        assert legs.pop(phone) == ["call.originated", "call.offered", "call.delivered",
                                   "call.established", "call.cleared"]  # fmt: skip
        ((destination, destination_leg),) = legs.items()
        assert destination_leg == FLOW
        event = {(e["call_id"], e["type"]): e for e in mine}
        rang = at(event[phone, "call.established"]) - at(event[phone, "call.offered"])
        assert RING_SECONDS - 0.05 <= rang.total_seconds() < RING_SECONDS + 5, rang
        # connecting: the number is called once the phone has answered (with its offer).
        offered = event[destination, "call.offered"]
        assert at(offered) >= at(event[phone, "call.established"])
        assert offered["parent_call_id"] == phone
        assert offered["called"]["number_e164"] == KNOWN_CALLER.number


async def test_a_softphone_call_out_of_the_demo_is_answered_and_hung_up_by_the_carrier(
    tmp_path: Path,
) -> None:
    """The README's softphone call: registered as 202, it dials 0612345678, the demo
    trunk's simulated carrier rings, answers, and hangs up 10 s later; its BYE reaches
    the phone through the gateway (the INVITE's Record-Route)."""
    user = next(u for u in DEMO["tenants"][0]["users"] if u["username"] == "202")
    domain = DEMO["tenants"][0]["domains"][0]
    async with make_run(tmp_path) as demo:
        async with await PjsuaAgent.start("pjsua-202", transport="udp") as phone:
            status = await phone.register(
                f"sip:127.0.0.1:{demo.sip}", "202", domain, user["password"]
            )
            assert status == 200, phone.describe()
            call = await phone.call(f"sip:{DIAL_TO}@{domain}")
            await phone.wait_call_state(call, "EARLY", timeout=10)
            await phone.wait_call_state(call, "CONFIRMED", timeout=10)
            ended = await phone.wait_call_state(
                call, "DISCONNECTED", timeout=CARRIER_TALK_SECONDS + 10
            )
        states = [e["state"] for e in phone.call_states(call)]
        assert states.index("CONFIRMED") < states.index("DISCONNECTED"), states
        assert ended["code"] == 200, ended
        await logged(demo.run_dir / "carrier-calls.log", "hung up", 1)


async def test_sipgw_demo_call_without_a_gateway_says_what_is_missing() -> None:
    require_binary("sipp")
    sip, source = free_port(), free_port()
    status, out, err = await sipgw(
        "demo", "call", "--gateway", f"127.0.0.1:{sip}", "--source", f"127.0.0.1:{source}",
        timeout=20,
    )  # fmt: skip
    assert status == 2, f"{out}\n{err}"
    assert out == ""
    assert f"no SIP gateway answers on udp 127.0.0.1:{sip}: is the demo running?" in err
    assert "make run" in err


async def test_sipgw_demo_call_to_an_extension_without_a_phone_says_so(
    gateway: GatewayProcess,
) -> None:
    """The integration gateway's DID rings 201 too, and trusts its trunk's second
    address; no phone is registered as 201."""
    require_binary("sipp")
    status, out, err = await sipgw(
        "demo", "call", "--gateway", f"127.0.0.1:{gateway.ports.sip}",
        "--source", f"127.0.0.1:{gateway.ports.trunk_src}", "--hold", "0",
    )  # fmt: skip
    assert status == 1, f"{out}\n{err}"
    assert "the call failed: SIP 480 Temporarily Unavailable" in err
    assert "is a phone registered as extension 201?" in err
