"""The screen pop in a real browser: a real call from sipp (the carrier's trunk) to a
PJSIP phone registered as 201, through a real sipgw; the agent's page in headless
chromium shows the caller's card, the team's presence and the history."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.browser.calls import KNOWN_CALLER, UNKNOWN_CALLER, phone, put_contact, trunk_call
from tests.browser.chrome import Page
from tests.browser.conftest import PageFactory
from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import API_PASSWORDS, DOMAIN, GatewayProcess, RedisProcess
from tests.integration.relay import DelayRelay
from tests.waiting import wait_until_true

pytestmark = [pytest.mark.peers, pytest.mark.browser]

CARD = ".incoming-card"
# Replaces the Notification API with a recorder, as if the user had allowed alerts: a
# headless browser shows no desktop notification a test could read.
RECORD_NOTIFICATIONS = """
window.shownNotifications = [];
window.Notification = class {
  static permission = "granted";
  static requestPermission() { return Promise.resolve("granted"); }
  constructor(title, options) { window.shownNotifications.push({title, ...options}); }
  close() {}
};
"""
# window.open recorded, not obeyed: a headless browser's pop-up would only be noise.
RECORD_OPENED = "window.openedUrls = []; window.open = (url) => { window.openedUrls.push(url); };"


async def auto_open_saved(gw: GatewayProcess, token: str) -> bool:
    status, raw = await gw.http_get("/v1/me", token=token)
    return status == 200 and json.loads(raw)["settings"]["auto_open_crm"] is True


async def wait_notifications(page: Page, title: str) -> list[dict[str, str]]:
    """The notifications shown so far, once the last one has `title` (a first one may
    name only the number, before a late call.recognized)."""
    notes = await page.wait_js(
        "const n = window.shownNotifications; return n.at(-1)?.title === arguments[0] && n",
        title,
        what=f"a notification titled {title}",
    )
    return list(notes)


async def wait_name(page: Page, name: str) -> None:
    await page.wait_js(
        f"return document.querySelector('{CARD} .caller-name')?.textContent === arguments[0]",
        name,
        what=f"the incoming card naming {name}",
    )


async def wait_presence(page: Page, extension: str, state: str, with_text: str = "") -> None:
    await page.wait_js(
        "const row = document.querySelector(`#presence [data-extension='${arguments[0]}']`);"
        "return row && row.dataset.presence === arguments[1] &&"
        " row.textContent.includes(arguments[2]);",
        extension, state, with_text, what=f"presence of {extension}: {state} {with_text}",
    )  # fmt: skip


async def test_a_recognized_call_pops_up_rings_is_answered_and_lands_in_history(
    gateway: GatewayProcess, page_factory: PageFactory
) -> None:
    await put_contact(
        gateway, KNOWN_CALLER, name="Jane Example", company="Example BV", crm_id="C-1001"
    )
    page = await page_factory(gateway.http_url)
    await page.open("/")
    await page.wait_visible("#login-username")
    await page.screenshot("login")
    # A wrong password is refused on the page; the right one signs in.
    page.expected_errors.append(
        "/v1/auth/login - Failed to load resource: the server responded with a status of 401"
    )
    await page.type("#login-username", "201")
    await page.type("#login-password", "not-the-password")
    await page.click("#login-submit")
    await page.wait_js(
        "return document.querySelector('#login-error')?.offsetParent !== null"
        " && document.querySelector('#login-error').textContent"
    )
    assert await page.text("#login-error") == "Wrong username or password."
    await page.login("201", API_PASSWORDS["201"])
    assert await page.js("return document.cookie") == ""
    assert await page.js("return sessionStorage.getItem('sipgw.token')")
    assert await page.text(".user-label") == "Phone 201 · ext 201"
    await page.js(RECORD_NOTIFICATIONS)
    await wait_presence(page, "201", "idle")
    # The per-user setting: open the CRM record by itself on an incoming call. It is
    # kept by the gateway (/v1/me), so it holds after a reload.
    await page.click("#user-button")
    await page.click("#auto-open")
    token = await gateway.login("201")
    await wait_until_true(lambda: auto_open_saved(gateway, token), what="the setting saved")
    await page.open("/")
    await page.wait_data("#connection", "state", "live")
    assert await page.js("return document.querySelector('#auto-open').checked")
    await page.js(RECORD_NOTIFICATIONS + RECORD_OPENED)

    async with await phone(gateway, "201") as desk:
        async with await trunk_call(gateway) as trunk:
            incoming = await desk.wait_incoming(timeout=15)
            # (On a loaded machine the look-up may miss its budget: then the name comes
            # with call.recognized a moment later, on the same card.)
            await wait_name(page, "Jane Example")
            assert await page.text(f"{CARD} .caller-company") == "Example BV"
            assert await page.text(f"{CARD} .caller-number") == KNOWN_CALLER
            assert await page.text(f"{CARD} .incoming-title") == "Incoming call"
            crm = str(await page.href(f"{CARD} a.open-crm"))
            url = urlsplit(crm)
            assert (url.scheme, url.netloc, url.path) == (
                "https",
                "crm.example",
                "/contacts/C-1001",
            )
            call_id = await page.data(CARD, "callId")
            assert parse_qs(url.query) == {"call": [call_id]}
            assert await page.count(f"{CARD} a.new-contact") == 0
            # The desktop notification names the caller, the company and the number.
            notes = await wait_notifications(page, "Jane Example")
            assert {n["tag"] for n in notes} == {call_id}
            assert notes[-1]["body"] == f"Example BV\n{KNOWN_CALLER}"
            await wait_presence(page, "201", "ringing", "Jane Example")
            assert await page.js("return window.openedUrls") == [crm]
            await page.screenshot("incoming-call")

            await desk.answer(incoming["call"], 200)
            await page.wait_data(CARD, "state", "established")
            await wait_presence(page, "201", "busy", "Jane Example")
            row = f"#live-calls [data-call-id='{call_id}']"
            await page.wait_data(row, "state", "established")
            await page.wait_js(
                "return /^0:0[1-9]$/.test(document.querySelector(arguments[0])?.textContent)",
                f"{CARD} .duration",
                what="the call's duration counting",
            )
            await page.screenshot("on-a-call")
            await desk.hangup(incoming["call"])
            (await trunk.wait(timeout=20)).check(calls=1)

        await wait_presence(page, "201", "idle")
        await page.wait_data(row, "state", "cleared")
        stages = await page.texts(f"{row} .timeline .stage")
        late = ["Caller recognized"]  # only if the look-up missed its budget
        assert [s for s in stages if s not in late] == ["Offered", "Ringing", "Answered", "Ended"]

        # The history lists the call with its outcome; the search finds it by company.
        await page.click("#tab-history")
        past = f"#history-body tr[data-call-id='{call_id}']"
        await page.wait_visible(past)
        assert "Jane Example" in str(await page.text(past))
        assert await page.data(past, "outcome") == "answered"
        await page.type("#history-q", "no such company")
        await page.click("#history-filters button[type=submit]")
        await page.wait_js("return document.querySelectorAll('#history-body tr').length === 0")
        await page.type("#history-q", "Example BV")
        await page.click("#history-filters button[type=submit]")
        await page.wait_visible(past)
        await page.type("#history-q", "")
        await page.click("#history-filters button[type=submit]")
        await page.wait_visible(past)
        # The filters: it was answered, inbound.
        await page.click("#history-missed")
        await page.wait_js("return document.querySelectorAll('#history-body tr').length === 0")
        await page.click("#history-missed")
        await page.wait_visible(past)
        await page.select("#history-direction", "outbound")
        await page.wait_js("return document.querySelectorAll('#history-body tr').length === 0")
        await page.select("#history-direction", "inbound")
        await page.wait_visible(past)
        await page.screenshot("history")
        # Dialling from the history: one click rings 201's own phone; cancelled from the page.
        await page.click(f"{past} .call-number")
        back = await desk.wait_incoming(timeout=15)
        await page.wait_data("#dial-progress", "state", "phone_ringing")
        assert (await page.text(".dial-to") or "").startswith(f"Calling {KNOWN_CALLER}")
        await page.click("#dial-cancel")
        await page.wait_data("#dial-progress", "state", "cancelled")
        await desk.wait_call_state(back["call"], "DISCONNECTED", timeout=10)


async def test_a_colleague_calls_puts_the_call_on_hold_and_takes_it_back(
    gateway: GatewayProcess, page_factory: PageFactory
) -> None:
    page = await page_factory(gateway.http_url)
    await page.open("/")
    await page.login("201", API_PASSWORDS["201"])
    async with await phone(gateway, "201") as desk, await phone(gateway, "202") as colleague:
        call = await colleague.call(f"sip:201@{DOMAIN}")
        incoming = await desk.wait_incoming(timeout=15)
        await page.wait_data(CARD, "state", "delivered")
        # 202 is not among the extensions 201 may see: no name, only what it is.
        assert await page.text(f"{CARD} .caller-name") == "Extension 202"
        await desk.answer(incoming["call"], 200)
        await colleague.wait_call_state(call, "CONFIRMED")
        await page.wait_data(CARD, "state", "established")
        await wait_presence(page, "201", "busy", "Extension 202")
        # On hold and back: the card and the live list follow; on hold is still busy.
        await colleague.hold(call)
        await page.wait_data(CARD, "state", "held")
        assert await page.text(f"{CARD} .incoming-title") == "On hold"
        assert await page.text("#live-calls .call .chip") == "On hold"
        await wait_presence(page, "201", "busy", "On hold")
        await page.screenshot("on-hold")
        await colleague.unhold(call)
        await page.wait_data(CARD, "state", "established")
        await desk.hangup(incoming["call"])
        await colleague.wait_call_state(call, "DISCONNECTED")
    await page.wait_data(CARD, "state", "cleared")
    await wait_presence(page, "201", "idle")
    stages = await page.texts("#live-calls .call .timeline .stage")
    assert stages == ["Offered", "Ringing", "Answered", "On hold", "Resumed", "Ended"]


async def test_unknown_caller_gets_the_new_contact_pop_also_in_the_embedded_panel(
    gateway: GatewayProcess, page_factory: PageFactory
) -> None:
    page = await page_factory(gateway.http_url, width=380, height=760)
    await page.open("/embed")
    await page.login("201", API_PASSWORDS["201"])
    async with (
        await phone(gateway, "201") as desk,
        await trunk_call(gateway, UNKNOWN_CALLER, scenario_name="uac_busy") as trunk,
    ):
        incoming = await desk.wait_incoming(timeout=15)
        await page.wait_visible(f"{CARD} a.new-contact")
        assert await page.count(f"{CARD} a.open-crm") == 0
        link = urlsplit(str(await page.href(f"{CARD} a.new-contact")))
        assert (link.scheme, link.netloc, link.path) == ("https", "crm.example", "/new")
        assert parse_qs(link.query)["phone"] == [UNKNOWN_CALLER]
        assert await page.text(f"{CARD} .caller-name") == UNKNOWN_CALLER
        assert await page.data(CARD, "lookup") == "miss"
        # The narrow panel: no wider than its frame.
        assert await page.js("return document.documentElement.scrollWidth <= window.innerWidth")
        await page.screenshot("embed-new-contact")
        await desk.hangup(incoming["call"], 486)
        (await trunk.wait(timeout=20)).check(calls=1)
    await page.wait_data(CARD, "state", "failed")


async def test_a_late_recognition_fills_in_the_card(
    gateway_factory: GatewayFactory, page_factory: PageFactory, tmp_path: Path
) -> None:
    redis = RedisProcess.start(tmp_path / "redis")
    try:
        async with DelayRelay(redis.port) as relay:
            budget = (
                '[tenants.recognition]\nfields = ["name", "company", "crm_id"]\n'
                "budget_ms = 20\ntimeout_ms = 5000\n"
                '[[tenants.recognition.screen_pop]]\nname = "crm"\nwhen = "hit"\n'
                'url = "https://crm.example/contacts/{contact.crm_id}"\n'
            )
            gw = await gateway_factory(redis_url=relay.url, recognition=budget)
            await put_contact(
                gw, KNOWN_CALLER, name="Late Larry", company="Slow Lane Ltd", crm_id="C-7"
            )
            page = await page_factory(gw.http_url)
            await page.open("/")
            await page.login("201", API_PASSWORDS["201"])
            async with await phone(gw, "201") as desk:
                # Every answer from Redis now takes a second: the look-up misses its budget,
                # and call.recognized reaches the page about a second after call.offered.
                relay.delay = 1.0
                async with await trunk_call(gw, scenario_name="uac_busy") as trunk:
                    incoming = await desk.wait_incoming(timeout=20)
                    # First the number alone, with the look-up still pending...
                    pending = await page.wait_js(
                        f"const c = document.querySelector('{CARD}');"
                        "return c && c.dataset.lookup === 'pending' && c.textContent",
                        what="a card with the look-up pending",
                    )  # fmt: skip
                    assert "Late Larry" not in pending and KNOWN_CALLER in pending
                    assert await page.count(f"{CARD} a.open-crm") == 0
                    await page.screenshot("late-recognition-pending")
                    # ...then the same card with the name, once call.recognized arrives.
                    await page.wait_data(CARD, "lookup", "hit", timeout=30)
                    stages = await page.texts("#live-calls .call .timeline .stage")
                    assert stages[0] == "Offered" and "Caller recognized" in stages
                    relay.delay = 0.0
                    assert await page.text(f"{CARD} .caller-name") == "Late Larry"
                    assert await page.text(f"{CARD} .caller-company") == "Slow Lane Ltd"
                    assert (
                        await page.href(f"{CARD} a.open-crm") == "https://crm.example/contacts/C-7"
                    )
                    assert await page.count(CARD) == 1
                    await desk.hangup(incoming["call"], 486)
                    (await trunk.wait(timeout=30)).check(calls=1)
            await page.wait_data(CARD, "state", "failed", timeout=30)
    finally:
        redis.stop()


async def test_a_contact_written_as_html_is_shown_as_text_and_runs_nothing(
    gateway: GatewayProcess, page_factory: PageFactory
) -> None:
    hostile = "<img src=x onerror=alert(1)>"
    company = '<script>alert("company")</script><b>bold</b>'
    await put_contact(
        gateway, KNOWN_CALLER, name=hostile, company=company, crm_id="javascript:alert(1)"
    )
    page = await page_factory(gateway.http_url)
    await page.open("/")
    await page.login("201", API_PASSWORDS["201"])
    await page.js(RECORD_NOTIFICATIONS)
    # Had any of it run, alert() would say so here.
    await page.js("window.alerts = []; window.alert = (m) => window.alerts.push(String(m));")
    async with await phone(gateway, "201") as desk, await trunk_call(gateway) as trunk:
        incoming = await desk.wait_incoming(timeout=15)
        await wait_name(page, hostile)
        assert await page.text(f"{CARD} .caller-company") == company
        await wait_presence(page, "201", "ringing", hostile)
        # Nothing of it became markup: no image, no script, no bold anywhere on the page.
        assert await page.count("img, script:not([src]), b") == 0
        await wait_notifications(page, hostile)
        # The screen pop's escaped URL is still an https link into the CRM.
        crm = urlsplit(str(await page.href(f"{CARD} a.open-crm")))
        assert (crm.scheme, crm.netloc) == ("https", "crm.example")
        await page.screenshot("hostile-contact-as-text")
        await desk.answer(incoming["call"], 200)
        await page.wait_data(CARD, "state", "established")
        await desk.hangup(incoming["call"])
        (await trunk.wait(timeout=20)).check(calls=1)
    assert await page.alert_text() is None
    assert await page.js("return window.alerts") == []
