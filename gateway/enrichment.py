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

Waiting costs no task: the look-up's HGET is written inside `submit`, right after the
forward (Recognizer.ask), and the answer is handed over by the connection's reader,
which publishes the event there and then; the budget and the hard cap are loop timers.
A task or a loop iteration in between would let the call's own 180 and 200, which
arrive a fraction of a millisecond after the forward, be routed before its event.

Internal calls and parties without an E.164 number (anonymous, short numbers, SIP
users) are not looked up: their events carry no `lookup`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

from gateway.calls.events import CallEvent, Lookup, Party, ScreenPop, rfc3339
from gateway.config import Recognition as TenantRecognition
from gateway.config import Settings
from gateway.recognition.lookup import Asked, Recognition, Recognizer
from gateway.recognition.screenpop import render, values_for

log = logging.getLogger("sipgw.enrichment")

Publish = Callable[[CallEvent], None]


class _Offer:
    """One `call.offered` waiting for its look-up: within the budget (`released`
    False), then, released as pending, until the hard cap."""

    __slots__ = ("asked", "event", "party", "rec", "released", "start", "timer")

    def __init__(
        self, event: CallEvent, rec: TenantRecognition, party: Party, start: float
    ) -> None:
        self.event = event
        self.rec = rec
        self.party = party
        self.start = start
        self.released = False
        self.asked: Asked | None = None
        self.timer: asyncio.TimerHandle | None = None


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
        self._waiting: set[_Offer] = set()

    @property
    def pending(self) -> int:
        return len(self._waiting)

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
        elif len(self._waiting) >= self.max_pending:
            self.publish(self._enriched(event, rec, party, self.recognizer.gave_up("error", start)))
        else:
            assert event.call_id is not None  # offered events always have one
            offer = _Offer(event, rec, party, start)
            self._held[event.call_id] = []
            self._waiting.add(offer)
            loop = asyncio.get_running_loop()
            offer.timer = loop.call_later(rec.budget_ms / 1000, self._budget_over, offer)
            offer.asked = self.recognizer.ask(
                event.tenant, number, lambda answer: self._answered(offer, answer)
            )

    async def close(self) -> None:
        """Stop waiting: every held event goes out (the look-ups end as "error")."""
        for offer in list(self._waiting):
            if offer.asked is not None:
                offer.asked.cancel()
            self._finish(offer)
            if not offer.released:
                answer = self.recognizer.gave_up("error", offer.start)
                self._release(
                    offer.event, self._enriched(offer.event, offer.rec, offer.party, answer)
                )

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

    def _answered(self, offer: _Offer, answer: Recognition) -> None:
        """The look-up's answer (from the connection's reader, or a task): the offered
        event enriched if still held, else `call.recognized` after the pending one."""
        self._finish(offer)
        event, rec, party = offer.event, offer.rec, offer.party
        released = offer.released
        try:
            if not released:
                enriched = self._enriched(event, rec, party, answer)
                released = True
                self._release(event, enriched)
            else:
                self.publish(self._recognized(event, rec, party, answer))
        except Exception:  # a bug here must never cost the call its events
            log.exception("caller recognition failed")
            if not released:
                self._release(event, event)

    def _budget_over(self, offer: _Offer) -> None:
        """No answer within the budget: the offered event goes out as pending, and the
        look-up is waited for until the hard cap (`timeout_ms`)."""
        event, rec, start = offer.event, offer.rec, offer.start
        offer.released = True
        elapsed = self.clock() - start
        pending = Lookup("pending", latency_ms=round(elapsed * 1000, 3), budget_ms=rec.budget_ms)
        try:
            self._release(event, dataclasses.replace(event, lookup=pending))
        finally:
            left = max(0.0, rec.timeout_ms / 1000 - elapsed)
            offer.timer = asyncio.get_running_loop().call_later(left, self._timed_out, offer)

    def _timed_out(self, offer: _Offer) -> None:
        if offer.asked is not None:
            offer.asked.cancel()
        self._finish(offer)
        answer = self.recognizer.gave_up("timeout", offer.start)
        self.publish(self._recognized(offer.event, offer.rec, offer.party, answer))

    def _finish(self, offer: _Offer) -> None:
        """The offer waits no more: its timer stops and it leaves the count of pending."""
        if offer.timer is not None:
            offer.timer.cancel()
            offer.timer = None
        self._waiting.discard(offer)

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
