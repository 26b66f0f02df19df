"""A network drop mid-call: the page reaches the gateway through a relay that the test
cuts (every connection reset, new ones refused) while the call is answered, then
restores. The page reconnects with `since` and shows the call's later events, each once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from tests.browser.calls import phone, trunk_call
from tests.browser.conftest import PageFactory
from tests.integration.gateway import API_PASSWORDS, GatewayProcess
from tests.integration.relay import DelayRelay
from tests.integration.test_events import subscribe

pytestmark = [pytest.mark.peers, pytest.mark.browser]


class CutRelay(DelayRelay):
    """A relay (no delay) whose connections the test can cut: `cut()` resets every open
    connection and refuses new ones until `restore()`, as a dropped network would."""

    blocked = False

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.blocked:
            client_w.transport.abort()
            return
        await super()._serve(client_r, client_w)

    def cut(self) -> None:
        self.blocked = True
        for writer in list(self._writers):
            writer.transport.abort()

    def restore(self) -> None:
        self.blocked = False


class Watcher:
    """A test's own subscriber, straight to the gateway: what the page should end up with."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []

    async def until(self, type_: str, call_id: str | None = None) -> dict[str, Any]:
        """Read on until an event of `type_` (of `call_id`, if given) has come; keep all."""
        async with asyncio.timeout(20):
            while True:
                event = json.loads(await self.ws.recv())
                if str(event.get("type", "")).startswith("sipgw."):
                    continue
                self.events.append(event)
                if event["type"] == type_ and call_id in (None, event.get("call_id")):
                    return dict(event)


async def test_the_page_resumes_after_a_drop_with_no_event_lost_or_twice(
    gateway: GatewayProcess, page_factory: PageFactory
) -> None:
    async with CutRelay(gateway.ports.http) as relay:
        page = await page_factory(f"http://127.0.0.1:{relay.port}")
        # The drop makes the browser log its failed requests; those are expected.
        page.expected_errors += ["net::ERR_", "WebSocket connection to"]
        await page.open("/")
        await page.login("201", API_PASSWORDS["201"])
        watcher = Watcher(await subscribe(gateway, await gateway.login("201")))
        async with await phone(gateway, "201") as desk, await trunk_call(gateway) as trunk:
            incoming = await desk.wait_incoming(timeout=15)
            offered = await watcher.until("call.offered")
            call_id = offered["call_id"]
            card = f".incoming-card[data-call-id='{call_id}']"
            await page.wait_data(card, "state", "delivered")

            relay.cut()
            await page.wait_data("#connection", "state", "reconnecting")
            await page.screenshot("reconnecting")
            # Answered while the page is cut off: the gateway emits it, the page cannot see it.
            await desk.answer(incoming["call"], 200)
            await watcher.until("call.established", call_id)
            assert await page.data(card, "state") == "delivered"

            relay.restore()
            await page.wait_data("#connection", "state", "live", timeout=30)
            # The event it missed during the drop, replayed.
            await page.wait_data(card, "state", "established")
            await desk.hangup(incoming["call"])
            await watcher.until("call.cleared", call_id)
            (await trunk.wait(timeout=20)).check(calls=1)
        await watcher.ws.close()

        row = f"#live-calls [data-call-id='{call_id}']"
        await page.wait_data(row, "state", "cleared")
        shown = await page.js(
            f"return [...document.querySelectorAll(\"{row} .timeline li\")]"
            ".map((li) => [li.dataset.type, li.dataset.eventId])")  # fmt: skip
        # Exactly the gateway's events of the call, in order: none lost, none twice.
        expected = [(e["type"], e["event_id"]) for e in watcher.events if e["call_id"] == call_id]
        assert [tuple(pair) for pair in shown] == expected
        assert {"call.established", "call.cleared"} <= {t for t, _ in expected}
        # The client delivered each event once, and resumed after the last one it had.
        assert await page.js("return window.sipgwApp.client.lastSeq") == watcher.events[-1]["seq"]
