"""The newcomer's first minute, in a browser: `make run` (scripts/run-demo.sh) on free
ports, the web client at the URL it prints, the demo login, and `sipgw demo call` from
another terminal: the page pops up the demo contact while the simulated phone rings,
then shows the call answered. No softphone anywhere."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.browser.conftest import PageFactory
from tests.integration.test_demo import DEMO_USER, make_run, sipgw

pytestmark = [pytest.mark.peers, pytest.mark.browser]

CARD = ".incoming-card"


async def test_make_run_then_a_demo_call_pops_up_in_the_browser(
    tmp_path: Path, page_factory: PageFactory
) -> None:
    async with make_run(tmp_path) as demo:
        page = await page_factory(f"http://127.0.0.1:{demo.http}")
        # make run stops the gateway before the page is closed: the page's reconnects
        # after that are refused, which is no fault of the page.
        page.expected_errors.append("net::ERR_CONNECTION_REFUSED")
        await page.open("/")
        await page.login("201", str(DEMO_USER["api_password"]))
        call = asyncio.create_task(sipgw("demo", "call", *demo.call_args, "--hold", "2"))
        try:
            await page.wait_js(
                f"return document.querySelector('{CARD} .caller-name')?.textContent"
                " === 'Jane Example'",
                timeout=30,
                what="the demo contact on the card",
            )
            assert await page.text(f"{CARD} .caller-company") == "Example BV"
            crm = await page.href(f"{CARD} a.open-crm")
            assert crm == "https://crm.example.com/contacts/C-1001"
            await page.screenshot("demo-screen-pop")
            # The simulated phone answers after its ring time, and the carrier hangs up.
            await page.wait_data(CARD, "state", "established", timeout=30)
            status, out, err = await call
            assert status == 0, f"{out}\n{err}"
        finally:
            # On a failure too: the helper kills the command past its own 60 s.
            await asyncio.gather(call, return_exceptions=True)
        await page.wait_data(CARD, "state", "cleared", timeout=30)
