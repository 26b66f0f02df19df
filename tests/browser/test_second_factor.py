"""The web client's login with a second factor, in Debian's chromium on a real gateway:
the password, then a code field the page shows because the gateway asked for one; a
wrong code sends the user back to the password (the challenge went with it); the right
one signs in and subscribes; a recovery code works there too. Enrolment: a user the
tenant obliges to enrol does it at the login (the QR code, the otpauth:// URI the test's
"app" reads off the page, the first code, the recovery codes shown once), and a
signed-in user does it from the user menu; neither leaves a secret in the browser's
storage or on the page."""

from __future__ import annotations

import base64
import json
import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.security import totp
from tests.browser.chrome import Page
from tests.browser.conftest import PageFactory
from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import ADMIN, API_PASSWORDS, RECOGNITION, GatewayProcess
from tests.security.test_api_second_factor import Phone, enrol

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


# --- enrolment ------------------------------------------------------------------------------

QR_LOADED = (
    "const img = document.querySelector(arguments[0]);"
    "return Boolean(img && img.complete && img.naturalWidth > 0"
    " && img.src.startsWith('data:image/svg+xml;base64,'));"
)


async def phone_from_page(page: Page, uri_field: str) -> tuple[Phone, str]:
    """The authenticator app: the otpauth:// URI the page shows, read off it as the
    app reads the QR code; and the secret."""
    uri = str(await page.js("return document.querySelector(arguments[0]).value", uri_field))
    assert uri.startswith("otpauth://totp/"), uri
    secret = parse_qs(urlsplit(uri).query)["secret"][0]
    return Phone(secret), secret


async def stored_in_browser(page: Page) -> str:
    return str(
        await page.js(
            "return JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage)])"
        )
    )


async def assert_nothing_secret_kept(page: Page, secret: str, codes: list[str]) -> None:
    """No trace of the secret or the recovery codes in the browser's storage, nor left
    on the page once their step is over."""
    stored = await stored_in_browser(page)
    page_now = str(await page.js("return document.documentElement.outerHTML"))
    for where in (stored, page_now):
        for text in (secret, secret.lower(), "otpauth", *codes):
            assert text not in where, (text, where[:200])


async def test_a_user_the_tenant_obliges_enrols_at_login(
    gateway_factory: GatewayFactory, page_factory: PageFactory
) -> None:
    gateway = await gateway_factory(
        recognition=RECOGNITION + '\n[tenants.totp]\npolicy = "admins"\n'
    )
    await gateway.login("201")  # a user: the password gives a token (waits for the seed)
    page = await page_factory(gateway.http_url)
    await page.open("/")
    await page.type("#login-username", ADMIN)
    await page.type("#login-password", API_PASSWORDS[ADMIN])
    await page.click("#login-submit")

    # The enrolment step: the QR code (an SVG data: URI the CSP lets in), the URI to copy.
    await page.wait_visible("#login-totp-qr")
    assert await page.data("#login-form", "step") == "enrol"
    assert await page.wait_js(QR_LOADED, "#login-totp-qr", what="the QR code shown")
    phone, secret = await phone_from_page(page, "#login-totp-uri")
    await page.screenshot("login-enrol")
    await page.type("#login-totp-code", phone.code())
    await page.click("#login-submit")

    # The ten recovery codes, shown once, and "I have saved them" before going on.
    await page.wait_visible("#login-totp-recovery-codes")
    codes = await page.texts("#login-totp-recovery-codes li")
    assert len(set(codes)) == 10
    assert all(re.fullmatch(r"[a-z2-9]{5}-[a-z2-9]{5}", c) for c in codes), codes
    assert await page.js("return document.querySelector('#login-totp-saved').required")
    assert not await page.js("return document.querySelector('#login-form').checkValidity()")
    assert secret not in str(await page.js("return document.documentElement.outerHTML"))
    await page.screenshot("login-recovery-codes")
    await page.click("#login-totp-saved")
    await page.click("#login-submit")
    await page.wait_js(LIVE, what="signed in after the enrolment")
    assert "sipgw.token" in await stored_in_browser(page)
    await assert_nothing_secret_kept(page, secret, codes)

    # From now on the login asks for the code; one of the recovery codes works too.
    await page.js("sessionStorage.clear()")
    await page.open("/")
    await password_step(page, ADMIN)
    await page.type("#login-code", phone.code())
    await page.click("#login-submit")
    await page.wait_js(LIVE, what="signed in with the enrolled second factor")
    await page.js("sessionStorage.clear()")
    await page.open("/")
    await password_step(page, ADMIN)
    await page.type("#login-code", codes[3])
    await page.click("#login-submit")
    await page.wait_js(LIVE, what="signed in with a recovery code")
    await assert_nothing_secret_kept(page, secret, codes)


async def test_a_signed_in_user_enrols_from_the_menu(
    gateway: GatewayProcess, page_factory: PageFactory
) -> None:
    page = await page_factory(gateway.http_url)
    # The wrong code below is a 401 the page expects (and keeps the session for).
    page.expected_errors.append("/v1/auth/totp/confirm - Failed to load resource")
    await page.open("/")
    await page.login("202", API_PASSWORDS["202"])  # policy "optional": the password alone
    await page.click("#user-button")
    await page.wait_visible("#totp-setup")
    assert await page.js("return document.querySelector('#totp-status').hidden")
    await page.click("#totp-setup")
    await page.wait_visible("#totp-qr")
    assert await page.wait_js(QR_LOADED, "#totp-qr", what="the QR code shown")
    phone, secret = await phone_from_page(page, "#totp-uri")

    right = phone.code()
    await page.type("#totp-code", f"{(int(right) + 1) % 1_000_000:06d}")
    await page.click("#totp-submit")
    await page.wait_visible("#totp-error")
    assert await page.text("#totp-error") == "Wrong code: type the one your app shows now."
    # Still signed in, the dialog still open on the same secret: the next code confirms.
    assert await page.data("#connection", "state") == "live"
    await page.type("#totp-code", right)
    await page.click("#totp-submit")
    await page.wait_visible("#totp-recovery-codes")
    codes = await page.texts("#totp-recovery-codes li")
    assert len(set(codes)) == 10
    await page.screenshot("menu-recovery-codes")
    await page.click("#totp-saved")
    await page.click("#totp-submit")
    await page.wait_js(
        "return !document.querySelector('#totp-dialog').open", what="the dialog closed"
    )
    await assert_nothing_secret_kept(page, secret, codes)
    await page.click("#user-button")
    await page.wait_visible("#totp-status")
    assert await page.text("#totp-status") == "Two-step sign-in is on · 10 recovery codes left"
    assert await page.js("return document.querySelector('#totp-setup').hidden")

    # The next login asks for the code.
    await page.js("sessionStorage.clear()")
    await page.open("/")
    await password_step(page, "202")
    await page.type("#login-code", phone.code())
    await page.click("#login-submit")
    await page.wait_js(LIVE, what="signed in with the code")


async def test_an_enrolled_user_makes_new_recovery_codes_and_turns_it_off_from_the_menu(
    gateway: GatewayProcess, page_factory: PageFactory
) -> None:
    page = await page_factory(gateway.http_url)
    # The wrong code below is a 401 the page expects (and keeps the session for).
    page.expected_errors.append("/v1/auth/totp/disable - Failed to load resource")
    await page.open("/")
    await page.login("202", API_PASSWORDS["202"])  # "optional": the password alone, for now
    # Enrolled meanwhile (another tab, the API); the first code is of the step before
    # now, so that this test's two codes still fall in the window (no waiting for time).
    phone, old = await enrol_a_step_early(gateway, "202")
    await page.open("/")  # the same session, the menu read afresh
    await page.wait_js(LIVE, what="signed in again from the session")

    await page.click("#user-button")
    await page.wait_visible("#totp-renew")
    assert await page.js("return document.querySelector('#totp-setup').hidden")
    await page.click("#totp-renew")
    await page.wait_visible("#totp-code")
    await page.type("#totp-code", phone.code())
    await page.click("#totp-submit")
    await page.wait_visible("#totp-recovery-codes")
    codes = await page.texts("#totp-recovery-codes li")
    assert len(set(codes)) == 10 and not set(codes) & set(old)
    await page.click("#totp-saved")
    await page.click("#totp-submit")
    await page.wait_js(
        "return !document.querySelector('#totp-dialog').open", what="the dialog closed"
    )
    secret = base64.b32encode(phone.key).decode().rstrip("=")
    await assert_nothing_secret_kept(page, secret, [*codes, *old])

    await page.click("#user-button")
    await page.wait_visible("#totp-off")
    await page.click("#totp-off")
    await page.wait_visible("#totp-code")
    right = phone.code()
    await page.type("#totp-code", f"{(int(right) + 1) % 1_000_000:06d}")
    await page.click("#totp-submit")
    await page.wait_visible("#totp-error")
    assert await page.data("#connection", "state") == "live"  # still signed in
    await page.js("document.querySelector('#totp-code').value = ''")
    await page.type("#totp-code", right)
    await page.click("#totp-submit")
    await page.wait_js(
        "return !document.querySelector('#totp-dialog').open", what="the dialog closed"
    )
    await page.click("#user-button")
    await page.wait_visible("#totp-setup")  # off: it may be set up again
    assert await page.js("return document.querySelector('#totp-off').hidden")


async def enrol_a_step_early(gateway: GatewayProcess, user: str) -> tuple[Phone, list[str]]:
    token = await gateway.login(user)
    status, raw = await gateway.http("POST", "/v1/auth/totp/enrol", None, token=token)
    assert status == 200, raw
    phone = Phone(json.loads(raw)["secret"])
    phone.last = totp.time_step(time.time()) - 1  # its first code: the step before now
    body = {"code": phone.used()}
    status, raw = await gateway.http("POST", "/v1/auth/totp/confirm", body, token=token)
    assert status == 200, raw
    return phone, list(json.loads(raw)["recovery_codes"])
