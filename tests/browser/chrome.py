"""Debian's chromium, headless, driven by Selenium through Debian's chromium-driver.

    page = await Page.start(gateway.http_url, tmp_path)
    await page.open("/")
    await page.login("201", API_PASSWORDS["201"])
    name = await page.wait_js("return document.querySelector('.caller-name')?.textContent")
    await page.screenshot("incoming-call")
    await page.close()

Nothing is downloaded: both binaries are the Debian packages (scripts/install-system-deps.sh)
and Selenium is told their paths, so its own driver manager never runs. Every Selenium
call is blocking, so each one runs in a thread: the test's event loop keeps serving the
SIP peers and relays meanwhile. Waits poll the page with one script per poll (a page
has no event a test process could await) and end at a deadline.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.peers.process import in_ci

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).with_name("artifacts")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--lang=en-GB",
]
T = TypeVar("T")


def require_chromium() -> None:
    """Skip when Debian's chromium or chromium-driver is missing; fail under CI, where
    `make test` installs both."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not missing:
        return
    message = (
        f"{' and '.join(missing)} not installed (Debian packages chromium and "
        "chromium-driver: scripts/install-system-deps.sh)"
    )
    if in_ci():
        pytest.fail(f"{message}; CI must install them")
    pytest.skip(message)


class Page:
    """One headless chromium with one tab, on the gateway at `base_url`."""

    def __init__(self, driver: Any, base_url: str, profile: Path) -> None:
        self.driver = driver
        self.base_url = base_url.rstrip("/")
        self.profile = profile
        self.console: list[dict[str, Any]] = []
        # Console errors a test causes on purpose (a dropped connection's failed fetches).
        self.expected_errors: list[str] = []

    @classmethod
    async def start(
        cls, base_url: str, workdir: Path, *, width: int = 1360, height: int = 900
    ) -> Page:
        require_chromium()
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        profile = workdir / f"chromium-profile-{time.monotonic_ns()}"
        profile.mkdir(parents=True)
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in [*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]:
            options.add_argument(flag)
        # The page's console (errors, CSP violations) is read back after each test.
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(
            executable_path=str(CHROMEDRIVER), log_output=str(workdir / "chromedriver.log")
        )
        driver = await asyncio.to_thread(webdriver.Chrome, options=options, service=service)
        driver.set_script_timeout(30)
        driver.set_page_load_timeout(30)
        return cls(driver, base_url, profile)

    async def close(self) -> None:
        try:
            await self.read_console()
        finally:
            await asyncio.to_thread(self.driver.quit)
            shutil.rmtree(self.profile, ignore_errors=True)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    # -- navigation and input -----------------------------------------------------------

    async def open(self, path: str = "/") -> None:
        await self.call(self.driver.get, self.base_url + path)

    async def js(self, script: str, *args: Any) -> Any:
        return await self.call(self.driver.execute_script, script, *args)

    async def wait_js(self, script: str, *args: Any, timeout: float = 20, what: str = "") -> Any:
        """Run `script` until it returns something truthy (within `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = await self.js(script, *args)
            except Exception as err:  # a node replaced mid-script: poll again
                last = err
            if last and not isinstance(last, Exception):
                return last
            if time.monotonic() > deadline:
                shot = await self.screenshot(f"timeout-{int(time.time() * 1000)}")
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what or script} "
                    f"(last: {last!r}; screenshot {shot})"
                )
            await asyncio.sleep(0.05)  # no page event reaches the test process: poll

    async def wait_visible(self, css: str, *, timeout: float = 20) -> None:
        await self.wait_js(
            "const el = document.querySelector(arguments[0]);"
            "return Boolean(el && el.offsetParent !== null);",
            css, timeout=timeout, what=f"{css} visible",
        )  # fmt: skip

    async def text(self, css: str) -> str | None:
        found = await self.js(
            "const el = document.querySelector(arguments[0]); return el ? el.textContent : null;",
            css,
        )
        return None if found is None else str(found)

    async def texts(self, css: str) -> list[str]:
        found = await self.js(
            "return [...document.querySelectorAll(arguments[0])].map((e) => e.textContent);", css
        )
        return [str(t) for t in found]

    async def count(self, css: str) -> int:
        return int(await self.js("return document.querySelectorAll(arguments[0]).length", css))

    async def data(self, css: str, key: str) -> str | None:
        """`data-<key>` of the first element matching `css` (key in camelCase)."""
        found = await self.js(
            "return document.querySelector(arguments[0])?.dataset[arguments[1]] ?? null", css, key
        )
        return None if found is None else str(found)

    async def wait_data(self, css: str, key: str, value: str, *, timeout: float = 20) -> None:
        await self.wait_js(
            "return document.querySelector(arguments[0])?.dataset[arguments[1]] === arguments[2]",
            css, key, value, timeout=timeout, what=f"{css} data-{key}={value}",
        )  # fmt: skip

    async def href(self, css: str) -> str | None:
        found = await self.js("return document.querySelector(arguments[0])?.href ?? null", css)
        return None if found is None else str(found)

    async def click(self, css: str) -> None:
        await self.wait_visible(css)

        def click() -> None:
            from selenium.webdriver.common.by import By

            self.driver.find_element(By.CSS_SELECTOR, css).click()

        await self.call(click)

    async def type(self, css: str, text: str) -> None:
        await self.wait_visible(css)

        def type_() -> None:
            from selenium.webdriver.common.by import By

            element = self.driver.find_element(By.CSS_SELECTOR, css)
            element.clear()
            element.send_keys(text)

        await self.call(type_)

    async def select(self, css: str, value: str) -> None:
        """Choose the option of `value` in a <select>, as a user would."""
        await self.wait_visible(css)

        def select() -> None:
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support.select import Select

            Select(self.driver.find_element(By.CSS_SELECTOR, css)).select_by_value(value)

        await self.call(select)

    async def login(self, username: str, password: str) -> None:
        await self.type("#login-username", username)
        await self.type("#login-password", password)
        await self.click("#login-submit")
        await self.wait_js(
            "return document.querySelector('#connection')?.dataset.state === 'live'",
            what="the client logged in and subscribed (connection live)",
        )

    async def resize(self, width: int, height: int) -> None:
        await self.call(self.driver.set_window_size, width, height)

    # -- evidence -----------------------------------------------------------------------

    async def screenshot(self, name: str) -> Path:
        """Save the viewport as tests/browser/artifacts/<name>.png (gitignored)."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        await self.call(self.driver.save_screenshot, str(path))
        return path

    async def read_console(self) -> list[dict[str, Any]]:
        """The browser console since the last read (kept in `self.console` too)."""
        entries: list[dict[str, Any]] = await self.call(self.driver.get_log, "browser")
        self.console += entries
        return entries

    async def console_errors(self, *, allow: Sequence[str] = ()) -> list[str]:
        """Console messages at error level, but those containing one of `allow`."""
        await self.read_console()
        return [
            e["message"]
            for e in self.console
            if e.get("level") == "SEVERE" and not any(a in e["message"] for a in allow)
        ]

    async def alert_text(self) -> str | None:
        """The text of an open alert() dialog, or None."""

        def probe() -> str | None:
            from selenium.common.exceptions import NoAlertPresentException

            try:
                return str(self.driver.switch_to.alert.text)
            except NoAlertPresentException:
                return None

        return await self.call(probe)

    async def dump(self) -> str:
        """What the page shows, for a failing assertion's message."""
        body = await self.js("return document.body.innerText")
        return json.dumps(body)[:4000]
