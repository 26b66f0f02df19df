"""The busy lamp field end to end: real watchers (PJSIP, sipp) subscribe to an extension's
dialog events through a real sipgw, while real calls ring, are answered and end."""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import (
    DID,
    DOMAIN,
    PASSWORDS,
    RECOGNITION,
    GatewayProcess,
    RedisProcess,
)
from tests.integration.test_click_to_dial_nodes import shared_redis
from tests.integration.test_pjsua import phone
from tests.integration.test_recognition import put_contacts
from tests.integration.test_sipp_calls import trunk_to_did
from tests.integration.test_workers import calls_from_many_ports, register, samples, total
from tests.peers.pjsua import PjsuaAgent
from tests.peers.ports import free_port
from tests.peers.sipp import scenario, start_sipp

pytestmark = [pytest.mark.peers]
__all__ = ["shared_redis"]  # a fixture: one redis-server for two nodes

NS = {"d": "urn:ietf:params:xml:ns:dialog-info"}
CALLER = "+31612345678"
JAN = "Jan de Vries"
SHOW_NAMES = RECOGNITION + '\n[tenants.blf]\ncaller = "name"\n'
SCENARIOS = Path(__file__).with_name("scenarios")


def dialogs(body: str) -> list[ET.Element]:
    return ET.fromstring(body).findall("d:dialog", NS)


def state_of(body: str) -> str | None:
    found = [d.findtext("d:state", namespaces=NS) for d in dialogs(body)]
    return found[0] if found else None


async def watching(gw: GatewayProcess, timeout: float = 10.0) -> None:
    """Until the gateway follows the tenant's calls (its catch-up is done)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not any(r.get("msg") == "blf: watching the tenant's calls" for r in gw.log_records()):
        assert loop.time() < deadline, f"no BLF watch started\n{gw.log_tail()}"
        await asyncio.sleep(0.05)


async def notified(watcher: PjsuaAgent, state: str, timeout: float = 10.0) -> dict[str, Any]:
    return await watcher.wait_event(
        lambda e: e["event"] == "dialog_notify" and state_of(e["body"]) == state,
        timeout,
        what=f"a dialog NOTIFY with a dialog {state}",
    )


async def answer(watcher: PjsuaAgent, n: int) -> int:
    """PJSIP's answer to the n-th dialog NOTIFY it received (0 is the first)."""

    def nth() -> dict[str, Any] | None:
        answers = [e for e in watcher.events if e["event"] == "dialog_notify_answered"]
        return answers[n] if len(answers) > n else None

    found = await watcher.proc.wait_until(nth, 5, f"PJSIP's answer to NOTIFY {n}")
    return int(found["status"])


async def test_a_pjsip_watcher_sees_201_ring_answer_and_hang_up_with_the_callers_name(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(recognition=SHOW_NAMES)
    admin = await gw.login("203")
    status, _ = await put_contacts(gw, admin, [{"number": CALLER, "fields": {"name": JAN}}])
    assert status == 200
    async with (
        await phone(gw, "phone-201", "201", "udp") as p201,
        await phone(gw, "watcher", "204", "udp") as watcher,
        await PjsuaAgent.start(CALLER, local_port=gw.ports.trunk_src) as carrier,
    ):
        await watcher.watch_dialog(f"sip:201@{DOMAIN}")
        first = await watcher.wait_event(lambda e: e["event"] == "dialog_notify", 10)
        assert dialogs(first["body"]) == [] and "active" in first["headers"]["subscription-state"]
        await watching(gw)

        call = await carrier.call(f"sip:{DID}@127.0.0.1:{gw.ports.sip}")
        incoming = await p201.wait_incoming(timeout=10)
        early = await notified(watcher, "early")
        [dialog] = dialogs(early["body"])
        assert dialog.get("direction") == "recipient"
        identity = dialog.find("d:remote/d:identity", NS)
        assert identity is not None and identity.get("display") == JAN, early["body"]
        assert identity.text == f"sip:{CALLER}@{DOMAIN}"

        await p201.answer(incoming["call"], 200)
        confirmed = await notified(watcher, "confirmed")
        [dialog] = dialogs(confirmed["body"])
        # The answered dialog as the phones know it: its Call-ID and both tags.
        assert dialog.get("call-id") and dialog.get("local-tag") and dialog.get("remote-tag")
        await carrier.wait_call_state(call, "CONFIRMED", timeout=10)
        await carrier.hangup(call)
        await notified(watcher, "terminated")

        bodies = [e["body"] for e in watcher.dialog_notifies()]
        versions = [int(ET.fromstring(b).get("version") or -1) for b in bodies]
        assert versions == list(range(len(versions))), versions
        # PJSIP took every NOTIFY of the subscription and answered each 200.
        assert [await answer(watcher, n) for n in range(len(bodies))] == [200] * len(bodies)


async def test_a_sipp_watcher_checks_every_body_and_the_version_order(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory()
    async with await start_sipp(
        [
            "-sf", str(SCENARIOS / "subscribe_dialog_uac.xml"), f"127.0.0.1:{gw.ports.sip}",
            "-s", "201", "-au", "202", "-ap", PASSWORDS["202"], "-m", "1",
        ],
        timeout=60, keys={"domain": DOMAIN, "caller": "202"}, keep_workdir=True, name="blf",
    ) as watcher:  # fmt: skip
        await watching(gw)
        await trunk_to_did(gw, "uas", "uac", 1, rate=1)
        result = await watcher.wait(timeout=30)
    result.check(calls=1)
    assert result.workdir is not None
    trace = (result.workdir / "messages.log").read_text(errors="replace")
    bodies = re.findall(r"<dialog-info.*?</dialog-info>", trace, re.S)
    received = [b for b in bodies if "received" in trace[: trace.find(b)].rsplit("----", 1)[-1]]
    versions = [int(ET.fromstring(b).get("version") or -1) for b in received]
    assert versions == list(range(len(versions))) and len(versions) >= 3, versions
    states = [state_of(b) for b in received]
    assert states[0] is None and states[-2] == "terminated", states
    order = ["trying", "early", "confirmed", "terminated"]
    seen = [order.index(s) for s in states if s is not None]
    assert seen == sorted(seen), states


async def test_a_forked_call_is_one_dialog(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    async with (
        await phone(gw, "desk-201", "201", "udp") as desk,
        await phone(gw, "soft-201", "201", "tcp") as soft,
        await phone(gw, "watcher", "204", "udp") as watcher,
        await PjsuaAgent.start(CALLER, local_port=gw.ports.trunk_src) as carrier,
    ):
        await watcher.watch_dialog(f"sip:201@{DOMAIN}")
        await watcher.wait_event(lambda e: e["event"] == "dialog_notify", 10)
        await watching(gw)
        call = await carrier.call(f"sip:{DID}@127.0.0.1:{gw.ports.sip}")
        ringing = [await desk.wait_incoming(timeout=10), await soft.wait_incoming(timeout=10)]
        await notified(watcher, "early")
        await soft.answer(ringing[1]["call"], 200)  # the desk phone's branch is CANCELled
        await desk.wait_call_state(ringing[0]["call"], "DISCONNECTED", timeout=10)
        await notified(watcher, "confirmed")
        await carrier.hangup(call)
        await notified(watcher, "terminated")
        for event in watcher.dialog_notifies():
            found = dialogs(event["body"])
            assert len(found) <= 1, event["body"]
            # The CANCELled branch never shows terminated while the call goes on.
            if found and state_of(event["body"]) == "terminated":
                assert event is watcher.dialog_notifies()[-1], event["body"]


@pytest.mark.parametrize(
    ("target", "event", "status"),
    [
        ("sip:301@globex.test", "dialog", 403),
        ("sip:299@acme.test", "dialog", 404),
        ("sip:acme.test", "presence", 489),
    ],
)
async def test_refused_subscriptions(
    gateway: GatewayProcess, tmp_path: Path, target: str, event: str, status: int
) -> None:
    """Another tenant's extension, an unknown one, and the gateway itself: refused once
    the subscriber proved who it is, and nothing is ever notified."""
    template = (SCENARIOS / "subscribe_dialog_refused.xml").read_text()
    refused = tmp_path / "refused.xml"
    refused.write_text(template.replace("[status]", str(status)).replace("[event]", event))
    extra = ["-key", "target", target]
    async with await start_sipp(
        [
            "-sf", str(refused), f"127.0.0.1:{gateway.ports.sip}",
            "-s", "x", "-au", "202", "-ap", PASSWORDS["202"],
            "-auth_uri", target.removeprefix("sip:"), "-m", "1", *extra,
        ],
        timeout=20, keys={"domain": DOMAIN, "caller": "202"},
    ) as sipp:  # fmt: skip
        result = await sipp.wait(timeout=20)
    result.check(calls=1)


async def test_a_subscription_on_one_worker_sees_the_calls_of_every_worker(
    gateway_factory: GatewayFactory,
) -> None:
    """The subscription lives in the worker its SUBSCRIBE reached; the calls come from a
    port each and spread over both workers; every one of them reaches the watcher."""
    gw = await gateway_factory(workers=2, trunk_match=["127.0.0.1/32"])
    uas_port = free_port()
    await register(gw, uas_port, scenario("register_uac"))
    calls = 20
    async with await phone(gw, "watcher", "204", "udp") as watcher:
        await watcher.watch_dialog(f"sip:201@{DOMAIN}")
        await watcher.wait_event(lambda e: e["event"] == "dialog_notify", 10)
        await watching(gw)
        await calls_from_many_ports(gw, calls, uas_port)

        def ended() -> set[str] | None:
            ids = {
                str(d.get("id"))
                for e in watcher.dialog_notifies()
                for d in dialogs(e["body"])
                if d.findtext("d:state", namespaces=NS) == "terminated"
            }
            return ids if len(ids) == calls else None

        await watcher.proc.wait_until(ended, 20, f"{calls} calls shown terminated")
        found = samples(await gw.metrics())
        async with asyncio.timeout(10):  # one subscription, in whichever worker holds it
            while total(found, "sipgw_blf_subscriptions") != 1:
                await asyncio.sleep(0.2)
                found = samples(await gw.metrics())
    async with asyncio.timeout(10):  # worker 1 reports its counters every second
        while total(found, "sipgw_sip_requests_total", direction="out", method="INVITE") < calls:
            await asyncio.sleep(0.2)
            found = samples(await gw.metrics())
    per_worker = {
        dict(labels)["worker"]: value
        for (name, labels), value in found.items()
        if name == "sipgw_worker_requests_total"
    }
    assert set(per_worker) == {"0", "1"} and all(v > 0 for v in per_worker.values()), per_worker


async def test_a_subscription_on_one_node_sees_the_calls_of_another(
    shared_redis: RedisProcess, gateway_factory: GatewayFactory
) -> None:
    """Node A holds the subscription; the phone registers and the calls go through node B
    (the same Redis): A's lamps follow B's calls."""
    a = await gateway_factory(node="node-a", redis_url=shared_redis.url)
    b = await gateway_factory(node="node-b", redis_url=shared_redis.url)
    calls = 3
    async with await phone(a, "watcher", "204", "udp") as watcher:
        await watcher.watch_dialog(f"sip:201@{DOMAIN}")
        await watcher.wait_event(lambda e: e["event"] == "dialog_notify", 10)
        await watching(a)
        await trunk_to_did(b, "uas", "uac", calls, rate=5)

        def ended() -> set[str] | None:
            ids = {
                str(d.get("id"))
                for e in watcher.dialog_notifies()
                for d in dialogs(e["body"])
                if d.findtext("d:state", namespaces=NS) == "terminated"
            }
            return ids if len(ids) == calls else None

        await watcher.proc.wait_until(ended, 20, f"{calls} calls of node B shown terminated")
    assert not any(r.get("msg") == "blf subscription" for r in b.log_records())
