"""Click-to-dial from the page, with real PJSIP phones: the user's own phone rings and
is answered, follows the gateway's REFER, and the destination rings and answers; the
page shows each stage. Missed calls: the badge, the list and the one-click call back."""

from __future__ import annotations

import pytest

from tests.browser.calls import KNOWN_CALLER, phone, trunk_call
from tests.browser.chrome import Page
from tests.browser.conftest import PageFactory
from tests.integration.gateway import API_PASSWORDS, GatewayProcess

pytestmark = [pytest.mark.peers, pytest.mark.browser]


async def wait_dial_state(page: Page, state: str, timeout: float = 20) -> None:
    await page.wait_js(
        "return document.querySelector('#dial-progress')?.dataset.state === arguments[0]",
        state, timeout=timeout, what=f"dial progress {state}",
    )  # fmt: skip


async def reached_steps(page: Page) -> list[str]:
    return list(await page.js(
        "return [...document.querySelectorAll('#dial-progress .step')]"
        ".filter((s) => s.dataset.reached === 'true').map((s) => s.dataset.step)"))  # fmt: skip


async def test_a_tel_link_dials_from_the_page_through_every_stage(
    gateway: GatewayProcess, page_factory: PageFactory
) -> None:
    page = await page_factory(gateway.http_url)
    # What the registered tel: handler opens for a click on <a href="tel:203">.
    await page.open("/?dial=tel%3A203")
    await page.wait_js(
        "return document.querySelector('#login-note')?.textContent",
        what="the sign-in prompt for the number",
    )
    assert await page.text("#login-note") == "Sign in to call 203."
    assert await page.js("return location.search") == ""
    await page.login("204", API_PASSWORDS["204"])
    assert await page.js("return document.querySelector('#dial-number').value") == "203"

    async with await phone(gateway, "204") as desk, await phone(gateway, "203") as colleague:
        await page.click("#dial-submit")
        # 1. The user's own phone rings (it does not answer by itself here).
        incoming = await desk.wait_incoming(timeout=15)
        await wait_dial_state(page, "phone_ringing")
        assert await reached_steps(page) == ["phone"]
        assert await page.text("#dial-state") == "Your phone is ringing"
        await page.screenshot("dial-phone-ringing")
        # 2. The user answers; the phone follows the REFER and calls 203, which rings.
        await desk.answer(incoming["call"], 200)
        refer = await desk.wait_transfer_request(timeout=15)
        ringing = await colleague.wait_incoming(timeout=15)
        await wait_dial_state(page, "destination_ringing")
        assert await reached_steps(page) == ["phone", "connecting", "destination"]
        # 3. 203 answers: connected, and the request is finished (no cancel any more).
        await colleague.answer(ringing["call"], 200)
        await wait_dial_state(page, "connected")
        assert await reached_steps(page) == ["phone", "connecting", "destination", "connected"]
        assert await page.text("#dial-state") == "Connected"
        assert await page.js("return document.querySelector('#dial-cancel')") is None
        await page.screenshot("dial-connected")
        await desk.wait_call_state(refer["new_call"], "CONFIRMED", timeout=10)
        await desk.hangup(refer["new_call"])
        await colleague.wait_call_state(ringing["call"], "DISCONNECTED", timeout=10)


async def test_a_missed_call_shows_in_the_badge_and_is_called_back_in_one_click(
    gateway: GatewayProcess, page_factory: PageFactory
) -> None:
    page = await page_factory(gateway.http_url)
    await page.open("/")
    await page.login("201", API_PASSWORDS["201"])
    assert await page.js("return document.querySelector('#missed-badge').hidden")
    async with await phone(gateway, "201") as desk:
        # The caller gives up after a second of ringing: a missed call.
        async with await trunk_call(gateway, scenario_name="uac_cancel", hold_ms=1000) as trunk:
            incoming = await desk.wait_incoming(timeout=15)
            (await trunk.wait(timeout=20)).check(calls=1)
        await desk.wait_call_state(incoming["call"], "DISCONNECTED", timeout=10)
        await page.wait_js(
            "return document.querySelector('#missed-badge').textContent === '1'"
            " && !document.querySelector('#missed-badge').hidden",
            what="the missed-calls badge",
        )
        await page.screenshot("missed-badge")
        await page.click("#tab-missed")
        await page.wait_js(
            "return document.querySelector('#missed-badge').hidden",
            what="the badge cleared once seen",
        )
        rows = await page.texts("#missed-list .missed-row")
        assert len(rows) == 1 and KNOWN_CALLER in rows[0]
        await page.screenshot("missed-calls")
        # One click calls back: the user's phone rings; the user cancels from the page.
        await page.click("#missed-list .call-back")
        back = await desk.wait_incoming(timeout=15)
        await wait_dial_state(page, "phone_ringing")
        assert (await page.text(".dial-to") or "").startswith(f"Calling {KNOWN_CALLER}")
        await page.click("#dial-cancel")
        await wait_dial_state(page, "cancelled")
        assert await page.text("#dial-outcome") == "Cancelled"
        await desk.wait_call_state(back["call"], "DISCONNECTED", timeout=10)
    # A reload (same tab, same session) still knows the missed call, and that it was seen.
    await page.open("/")
    await page.wait_js("return document.querySelectorAll('#missed-short .missed-row').length === 1")
    assert await page.js("return document.querySelector('#missed-badge').hidden")
