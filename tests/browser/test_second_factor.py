"""The web client's login with a second factor, in Debian's chromium on a real gateway:
the password, then a code field the page shows because the gateway asked for one; a
wrong code sends the user back to the password (the challenge went with it); the right
one signs in and subscribes; a recovery code works there too."""

from __future__ import annotations

import pytest

from tests.browser.chrome import Page
from tests.browser.conftest import PageFactory
from tests.integration.gateway import API_PASSWORDS, GatewayProcess
from tests.security.test_api_second_factor import enrol

pytestmark = [pytest.mark.peers, pytest.mark.browser]

LIVE = "return document.querySelector('#connection')?.dataset.state === 'live'"


async def password_step(page: Page, user: str) -> None:
    await page.type("#login-username", user)
    await page.type("#login-password", API_PASSWORDS[user])
    await page.click("#login-submit")
    await page.wait_visible("#login-code")
    assert await page.data("#login-form", "step") == "code"
    assert not await page.js("return document.querySelector('#login-first-step').offsetParent")
    assert await page.text("#login-submit") == "Verify"


async def test_the_login_asks_for_the_code_when_the_gateway_does(
    gateway: GatewayProcess, page_factory: PageFactory
) -> None:
    phone, recovery = await enrol(gateway, "201")
    page = await page_factory(gateway.http_url)
    # The refused attempt below is a 401 the page expects, not a fault of the page.
    page.expected_errors.append("/v1/auth/totp/verify - Failed to load resource")
    await page.open("/")

    await password_step(page, "201")
    right = phone.code()
    await page.type("#login-code", f"{(int(right) + 1) % 1_000_000:06d}")
    await page.click("#login-submit")
    await page.wait_visible("#login-username")
    assert await page.text("#login-error") == "Wrong or expired code: sign in again."
    assert await page.data("#login-form", "step") == "password"

    await password_step(page, "201")
    await page.screenshot("login-second-factor")
    await page.type("#login-code", right)
    await page.click("#login-submit")
    await page.wait_js(LIVE, what="signed in with the code and subscribed")
    # The token is kept as ever; the challenge is not (it stood for the password).
    stored = await page.js("return JSON.stringify(Object.entries(sessionStorage))")
    assert "acme." not in stored and "sipgw.token" in stored

    # Signed out, a recovery code signs in the same way.
    await page.js("sessionStorage.clear()")
    await page.open("/")
    await password_step(page, "201")
    await page.type("#login-code", recovery[0].upper())
    await page.click("#login-submit")
    await page.wait_js(LIVE, what="signed in with a recovery code")
