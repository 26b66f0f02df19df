"""Fixtures of the browser tests: a real gateway (tests/integration's), real SIP peers
(tests/peers) and Debian's chromium, headless."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.browser.chrome import Page, require_chromium
from tests.integration.conftest import gateway, gateway_factory  # noqa: F401 (fixtures)

PageFactory = Callable[..., Awaitable[Page]]


@pytest.fixture
async def page_factory(tmp_path: Path) -> AsyncIterator[PageFactory]:
    """Start headless chromium pages on a gateway; each is closed after the test, and
    its console must hold no error (a script error, a CSP violation) but those the test
    expects (`page.expected_errors`)."""
    require_chromium()
    pages: list[Page] = []

    async def start(base_url: str, **size: int) -> Page:
        page = await Page.start(base_url, tmp_path, **size)
        pages.append(page)
        return page

    yield start
    problems = []
    for page in pages:
        try:
            errors = await page.console_errors(allow=page.expected_errors)
        finally:
            await page.close()
        problems += errors
    assert problems == [], "browser console errors:\n" + "\n".join(problems)
