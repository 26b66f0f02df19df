"""A user sees only their own extension; an admin sees the whole tenant: two browsers
side by side while a real call rings at 201."""

from __future__ import annotations

import pytest

from tests.browser.calls import KNOWN_CALLER, phone, put_contact, trunk_call
from tests.browser.chrome import Page
from tests.browser.conftest import PageFactory
from tests.integration.gateway import API_PASSWORDS, PASSWORDS, GatewayProcess

pytestmark = [pytest.mark.peers, pytest.mark.browser]


async def presence(page: Page) -> dict[str, str]:
    rows = await page.js(
        "return [...document.querySelectorAll('#presence .presence-row')]"
        ".map((r) => [r.dataset.extension, r.dataset.presence])")  # fmt: skip
    return dict(rows)


async def test_a_user_sees_their_own_extension_and_an_admin_the_tenant(
    gateway: GatewayProcess, page_factory: PageFactory
) -> None:
    await put_contact(
        gateway, KNOWN_CALLER, name="Jane Example", company="Example BV", crm_id="C-1001"
    )
    user = await page_factory(gateway.http_url)
    admin = await page_factory(gateway.http_url)
    for page, name in ((user, "202"), (admin, "203")):
        await page.open("/")
        await page.login(name, API_PASSWORDS[name])
    assert await presence(user) == {"202": "idle"}
    assert await presence(admin) == {ext: "idle" for ext in sorted(PASSWORDS)}
    assert await user.js("return document.querySelector('#history-extension').hidden")
    assert not await admin.js("return document.querySelector('#history-extension').hidden")

    async with await phone(gateway, "201") as desk, await trunk_call(gateway) as trunk:
        incoming = await desk.wait_incoming(timeout=15)
        await admin.wait_js(
            "return document.querySelector(\"#presence [data-extension='201']\")"
            "?.dataset.presence === 'ringing'", what="201 ringing on the admin's page")  # fmt: skip
        call_id = await admin.wait_js(
            "return document.querySelector('#live-calls .call')?.dataset.callId"
        )
        assert "ext 201" in str(await admin.text("#live-calls .call .ext"))
        await admin.screenshot("team-presence-admin")
        await desk.answer(incoming["call"], 200)
        await admin.wait_js(
            "return document.querySelector(\"#presence [data-extension='201']\")"
            "?.dataset.presence === 'busy'")  # fmt: skip
        await desk.hangup(incoming["call"])
        (await trunk.wait(timeout=20)).check(calls=1)
    await admin.wait_js(
        "return document.querySelector(\"#presence [data-extension='201']\")"
        "?.dataset.presence === 'idle'")  # fmt: skip

    # The admin's history has the call; 202's has nothing of 201's, live or past.
    await admin.click("#tab-history")
    await admin.wait_visible(f"#history-body tr[data-call-id='{call_id}']")
    await user.click("#tab-history")
    await user.click("#history-filters button[type=submit]")  # a fresh load, after the call
    await user.wait_data("#view-history", "loading", "false")
    assert await user.count("#history-body tr") == 0
    assert await user.count("#live-calls .call, .incoming-card") == 0
    assert await presence(user) == {"202": "idle"}

    # Signing out revokes the token at the gateway and forgets it in the tab.
    token = str(await user.js("return sessionStorage.getItem('sipgw.token')"))
    assert (await gateway.http_get("/v1/me", token=token))[0] == 200
    await user.click("#user-button")
    await user.click("#logout")
    await user.wait_visible("#login-username")
    assert await user.js("return sessionStorage.getItem('sipgw.token')") is None
    assert (await gateway.http_get("/v1/me", token=token))[0] == 401
