"""Between the call tracker and the bus: caller recognition added to `call.offered`.

The tracker and the recognizer are siblings that never import each other; this module
joins them. For every `call.offered` whose remote party has an E.164 number (the
caller of an inbound call, the called number of an outbound one), it looks the number
up and renders the tenant's screen-pop templates:

- answered from the local cache: the event goes out at once with `lookup` and
  `screen_pop` (no task, no await: the common case of a busy tenant);
- else the event waits for Redis at most the tenant's `budget_ms`; in time, it goes out
  enriched; late, it goes out with `lookup.status = "pending"` and `call.recognized`
  follows with the answer, or with `lookup.status = "timeout"` after `timeout_ms`;
- Redis unreachable: `lookup.status = "error"`, nothing else changes.

While a call's offered event waits, that call's later events (ringing, a fast answer
or cancel) queue behind it, so a subscriber always sees `call.offered` first. Other
calls are never held up. The number of look-ups waiting is bounded (`max_pending`);
beyond it an offered event goes out at once with `lookup.status = "error"`.

Internal calls and parties without an E.164 number (anonymous, short numbers, SIP
users) are not looked up: their events carry no `lookup`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable

from gateway.calls.events import CallEvent, Lookup, Party, ScreenPop, rfc3339
from gateway.config import Recognition as TenantRecognition
from gateway.config import Settings
from gateway.recognition.lookup import Recognition, Recognizer
from gateway.recognition.screenpop import render, values_for

log = logging.getLogger("sipgw.enrichment")

Publish = Callable[[CallEvent], None]


class Enricher:
    def __init__(
        self,
        settings: Settings,
        recognizer: Recognizer,
        publish: Publish,
        *,
        max_pending: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.settings = settings
        self.recognizer = recognizer
        self.publish = publish
        self.max_pending = settings.recognition.max_pending if max_pending is None else max_pending
        self.clock = clock
        self._held: dict[str, list[CallEvent]] = {}  # call_id -> events queued behind
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def submit(self, event: CallEvent) -> None:
        """Publish `event` now, or once its call's offered event has its look-up."""
        held = self._held.get(event.call_id or "")
        if held is not None:
            held.append(event)
            return
        if event.type != "call.offered":
            self.publish(event)
            return
        found = self._subject(event)
        if found is None:
            self.publish(event)
            return
        rec, party, number = found
        start = self.clock()
        answer = self.recognizer.cached(event.tenant, number)
        if answer is not None:
            self.publish(self._enriched(event, rec, party, answer))
        elif len(self._tasks) >= self.max_pending:
            self.publish(self._enriched(event, rec, party, self.recognizer.gave_up("error", start)))
        else:
            assert event.call_id is not None  # offered events always have one
            self._held[event.call_id] = []
            task = asyncio.get_running_loop().create_task(
                self._resolve(event, rec, party, number, start)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop waiting: every held event goes out (the look-ups end as "error")."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the look-up of one call ----------------------------------------------------------
    def _subject(self, event: CallEvent) -> tuple[TenantRecognition, Party, str] | None:
        """The tenant's settings, the remote party and its number, if it is looked up."""
        tenant = self.settings.tenant_by_id(event.tenant)
        if tenant is None or not tenant.recognition.enabled:
            return None
        if event.direction == "inbound":
            party = event.calling
        elif event.direction == "outbound":
            party = event.called
        else:
            return None
        if party is None or party.number_e164 is None:
            return None
        return tenant.recognition, party, party.number_e164

    async def _resolve(
        self, event: CallEvent, rec: TenantRecognition, party: Party, number: str, start: float
    ) -> None:
        lookup = asyncio.ensure_future(self.recognizer.lookup(event.tenant, number))
        released = False
        try:
            await asyncio.wait({lookup}, timeout=rec.budget_ms / 1000)
            if lookup.done():
                released = True
                self._release(event, self._enriched(event, rec, party, lookup.result()))
                return
            pending = Lookup(
                "pending",
                latency_ms=round((self.clock() - start) * 1000, 3),
                budget_ms=rec.budget_ms,
            )
            released = True
            self._release(event, dataclasses.replace(event, lookup=pending))
            left = rec.timeout_ms / 1000 - (self.clock() - start)
            try:
                answer = await asyncio.wait_for(lookup, max(0.0, left))
            except TimeoutError:
                answer = self.recognizer.gave_up("timeout", start)
            self.publish(self._recognized(event, rec, party, answer))
        except asyncio.CancelledError:
            lookup.cancel()
            if not released:
                answer = self.recognizer.gave_up("error", start)
                self._release(event, self._enriched(event, rec, party, answer))
            raise
        except Exception:  # a bug here must never cost the call its events
            log.exception("caller recognition failed")
            if not released:
                self._release(event, event)

    def _release(self, event: CallEvent, offered: CallEvent) -> None:
        queued = self._held.pop(event.call_id or "", [])
        self.publish(offered)
        for later in queued:
            self.publish(later)

    # -- building the events --------------------------------------------------------------
    def _enriched(
        self, event: CallEvent, rec: TenantRecognition, party: Party, answer: Recognition
    ) -> CallEvent:
        return dataclasses.replace(
            event,
            lookup=self._lookup(rec, answer),
            screen_pop=self._screen_pop(event, rec, party, answer),
        )

    def _recognized(
        self, event: CallEvent, rec: TenantRecognition, party: Party, answer: Recognition
    ) -> CallEvent:
        return CallEvent(
            type="call.recognized",
            occurred_at=rfc3339(time.time()),
            node=event.node,
            tenant=event.tenant,
            call_id=event.call_id,
            sip_call_id=event.sip_call_id,
            from_tag=event.from_tag,
            conversation_id=event.conversation_id,
            parent_call_id=event.parent_call_id,
            direction=event.direction,
            calling=event.calling,
            called=event.called,
            extension=event.extension,
            created_at=event.created_at,
            originate=event.originate,
            lookup=self._lookup(rec, answer),
            screen_pop=self._screen_pop(event, rec, party, answer),
        )

    @staticmethod
    def _lookup(rec: TenantRecognition, answer: Recognition) -> Lookup:
        contact = answer.contact
        return Lookup(
            answer.status,
            cache=answer.cache,
            latency_ms=answer.latency_ms,
            budget_ms=rec.budget_ms,
            source=contact.source if contact is not None else None,
            contact=dict(contact.fields) if contact is not None else None,
        )

    def _screen_pop(
        self, event: CallEvent, rec: TenantRecognition, party: Party, answer: Recognition
    ) -> tuple[ScreenPop, ...] | None:
        pops = rec.pops_for(answer.status)
        if not pops:
            return None
        tenant = self.settings.tenant_by_id(event.tenant)
        values = values_for(
            party.number_e164,
            party.number_raw,
            tenant.region if tenant is not None else "ZZ",
            answer.contact.fields if answer.contact is not None else None,
            call_id=event.call_id,
            conversation_id=event.conversation_id,
            extension=event.extension,
            direction=event.direction,
            tenant=event.tenant,
            display=party.display,
        )
        return tuple(ScreenPop(pop.name, render(pop.template, values)) for pop in pops)
