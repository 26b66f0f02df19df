"""The runtime's side of the recognized caller's name on the callee's phone.

The proxy (gateway/proxy/caller_display.py) asks ``now()`` for every inbound INVITE it
forwards: this reads the tenant's ``[tenants.caller_display]``, the callee's phone
profile and the node's contact cache, all in memory, and answers at once. Only when
the cache does not know the caller and the tenant lets the INVITE wait does ``ask()``
go to Redis (the recognizer shares the round trip with the call.offered look-up the
enricher makes for the same number), and hand the answer back to the proxy on the
event loop; the proxy forwards on the answer or when the wait is up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from gateway.calls.tracker import E164Of, calling_party
from gateway.config import Settings, Tenant
from gateway.proxy.caller_display import Shown, Wait, clean_display
from gateway.proxy.context import ServerContext
from gateway.proxy.core import Proxy
from gateway.recognition.lookup import Recognition, Recognizer
from gateway.sip.errors import SIPParseError

log = logging.getLogger("sipgw.caller_names")

# The tenant, the headers the callee's phone reads, the caller's E.164 number and URI.
Subject = tuple[Tenant, tuple[str, ...], str, str]


class CallerNames:
    def __init__(
        self,
        settings: Settings,
        proxy: Proxy,
        recognizer: Recognizer,
        e164: E164Of,
        *,
        rearm: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.proxy = proxy
        self.recognizer = recognizer
        self.e164 = e164
        self.rearm = rearm  # the proxy's timers may have changed (branches started)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- what the proxy calls -------------------------------------------------------------
    def now(self, ctx: object) -> Shown | Wait | None:
        subject = self._subject(ctx)
        if subject is None:
            return None
        tenant, headers, number, uri = subject
        answer = self.recognizer.cached(tenant.id, number)
        if answer is not None:
            return _shown(tenant, answer, "cache", headers, uri)
        wait = tenant.caller_display.wait_ms / 1000
        return Wait(wait, subject) if wait > 0 else None

    def ask(self, wait: Wait, done: Callable[[Shown | None], None]) -> None:
        subject = cast(Subject, wait.subject)  # what `now` worked out
        if len(self._tasks) >= self.settings.recognition.max_pending:
            # Beyond the node's bound on look-ups in flight (a flood of unknown callers)
            # the INVITE goes on at once, unchanged, as the enricher's events do.
            done(None)
            return
        task = asyncio.get_running_loop().create_task(self._ask(subject, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    # -- the look-up ------------------------------------------------------------------------
    def _subject(self, ctx: object) -> Subject | None:
        """The tenant, the headers the callee's phone reads, the caller's E.164 number
        and URI, or None when this call shows no name."""
        assert isinstance(ctx, ServerContext)
        tenant = self.settings.tenant_by_id(ctx.tenant or "")
        if tenant is None or ctx.extension is None:
            return None
        policy = tenant.caller_display
        if not policy.enabled or not tenant.recognition.enabled:
            return None
        headers = self._headers(tenant, ctx.extension)
        if not headers:
            return None
        peer = ctx.peer
        try:
            uri, party = calling_party(ctx.request, "inbound", peer.caller_id if peer else ())
        except SIPParseError:
            return None
        number = party.number_e164 or self.e164(tenant.id, uri, peer.region if peer else None)
        if number is None:
            return None
        return tenant, headers, number, party.uri or str(uri)

    def _headers(self, tenant: Tenant, extension: str) -> tuple[str, ...]:
        """Where the callee's phone reads a caller's name: its profile's say, else the
        tenant's."""
        proxy = self.proxy
        user = proxy.directory.user(tenant, extension)
        if user is None:
            return tenant.caller_display.headers
        bindings = proxy.location.bindings(tenant.id, user.extension, proxy.clock())
        profile = proxy.directory.phones.for_bindings(tenant, user, bindings)
        if profile.caller_display is not None:
            return profile.caller_display
        return tenant.caller_display.headers

    async def _ask(self, subject: Subject, done: Callable[[Shown | None], None]) -> None:
        tenant, headers, number, uri = subject
        shown: Shown | None = None
        try:
            answer = await self.recognizer.lookup(tenant.id, number)
            shown = _shown(tenant, answer, "redis", headers, uri)
        except asyncio.CancelledError:
            raise
        except Exception:  # the call goes on unchanged; the event says nothing was shown
            log.exception("caller name look-up failed")
        try:
            done(shown)
        finally:
            self.rearm()


def _shown(
    tenant: Tenant, answer: Recognition, answered_by: str, headers: tuple[str, ...], uri: str
) -> Shown | None:
    contact = answer.contact
    if contact is None:
        return None
    value = contact.fields.get(tenant.caller_display.field)
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return None
    name = clean_display(str(value))
    if not name:
        return None
    return Shown(name, answered_by, headers, uri, contact.source)
