"""The newcomer's click-to-dial, in a browser: `make run` (scripts/run-demo.sh) on free
ports, the demo login, 0612345678 in the dial box. The simulated phone rings and
answers, the gateway bridges it to the simulated carrier (third-party call control: the
phone cannot take a transfer), the page shows each stage up to connected, and the call
ends when the carrier hangs up. No softphone anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli.demo import RING_SECONDS
from tests.browser.conftest import PageFactory
from tests.browser.test_dial import reached_steps, wait_dial_state
from tests.integration.test_demo import (
    CARRIER_RING_SECONDS,
    CARRIER_TALK_SECONDS,
    DEMO_USER,
    DIAL_TO,
    make_run,
)

pytestmark = [pytest.mark.peers, pytest.mark.browser]


async def test_make_run_then_the_dial_box_connects_the_simulated_phone(
    tmp_path: Path, page_factory: PageFactory
) -> None:
    async with make_run(tmp_path) as demo:
        page = await page_factory(f"http://127.0.0.1:{demo.http}")
        # make run stops the gateway before the page is closed: the page's reconnects
        # after that are refused, which is no fault of the page.
        page.expected_errors.append("net::ERR_CONNECTION_REFUSED")
        await page.open("/")
        await page.login("201", str(DEMO_USER["api_password"]))
        await page.type("#dial-number", DIAL_TO)
        await page.click("#dial-submit")
        await wait_dial_state(page, "phone_ringing")
        assert await page.text("#dial-state") == "Your phone is ringing"
        # The phone answers after its ring time; the carrier then rings.
        await wait_dial_state(page, "destination_ringing", timeout=RING_SECONDS + 10)
        await wait_dial_state(page, "connected", timeout=CARRIER_RING_SECONDS + 10)
        assert await reached_steps(page) == ["phone", "connecting", "destination", "connected"]
        assert await page.text("#dial-state") == "Connected"
        await page.screenshot("demo-dial-connected")
        # Both legs stay in the gateway (3PCC) until the carrier hangs up.
        await wait_dial_state(page, "ended", timeout=CARRIER_TALK_SECONDS + 10)
        assert await page.text("#dial-outcome") == "Call ended"
        assert await page.js("return document.querySelector('#dial-cancel')") is None
