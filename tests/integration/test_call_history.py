"""The call history builder (gateway/api/history.py) on real events: SIP messages through
the real call tracker, the events through the real bus into a real redis-server, the
rows read back from the stream. No HTTP here (tests/integration/test_web_api.py has it).

Calls overlap: their events are interleaved in the stream the way a busy tenant's are,
so a call's last event sits far from its first, and pages end in the middle of calls.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.api.history import HistoryPage, HistoryQuery, history_page
from gateway.bus import EventBus
from gateway.calls.events import CallEvent, Lookup, ScreenPop
from gateway.calls.tracker import CallTracker, Meta
from gateway.stats import Counters
from tests.unit.test_call_tracker import LOCAL, NO, PHONE, Leg, Step, sdp
from tests.waiting import wait_until

CONTACT = {"name": "Jane Example", "company": "Example BV", "crm_id": "C-1"}
POP = ScreenPop("crm", "https://crm.example/contacts/C-1")


def inbound(extension: str) -> Meta:
    return Meta("?", "inbound", extension, source="udp:192.0.2.1:5060")


def outbound(extension: str) -> Meta:
    return Meta("?", "outbound", extension, source="udp:192.0.2.20:5062")


class Calls:
    """Call flows of one tenant, each with its own dialog, fed to one real tracker."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.count = itertools.count()

    def leg(self, caller: str = "+31612345678", callee: str = "+31201234567") -> Leg:
        n = next(self.count)
        return Leg(
            call_id=f"{n}-{uuid.uuid4().hex[:8]}@trunk.example.net",
            caller=f"<sip:{caller}@trunk.example.net>",
            callee=f"<sip:{callee}@gw.example.com>",
            ruri=f"sip:{callee}@gw.example.com",
            from_tag=f"from-{n}",
            to_tag=f"to-{n}",
        )

    def meta(self, meta: Meta) -> Meta:
        return dataclasses.replace(meta, tenant=self.tenant)

    def answered(self, extension: str = "201", caller: str = "+31612345678") -> list[Step]:
        leg = self.leg(caller)
        bye = leg.request("BYE")
        return [
            (leg.invite(), self.meta(inbound(extension))), (leg.reply(180), PHONE),
            (leg.reply(200, body=sdp()), PHONE), (leg.ack(), NO), (bye, NO),
            (leg.answer(bye), NO),
        ]  # fmt: skip

    def busy(self, extension: str = "201") -> list[Step]:
        leg = self.leg("+31611111111")
        return [(leg.invite(), self.meta(inbound(extension))), (leg.reply(486), LOCAL)]

    def missed(self, extension: str = "201") -> list[Step]:
        leg = self.leg("+31622222222")
        cancel = leg.cancel()
        return [
            (leg.invite(), self.meta(inbound(extension))), (leg.reply(180), PHONE),
            (cancel, NO), (leg.reply(487), LOCAL),
        ]  # fmt: skip

    def dialled_out(self, extension: str = "202") -> list[Step]:
        leg = self.leg(caller=extension, callee="+31612345678")
        bye = leg.request("BYE")
        return [
            (leg.invite(), self.meta(outbound(extension))), (leg.reply(180), PHONE),
            (leg.reply(200, body=sdp()), PHONE), (leg.ack(), NO), (bye, NO),
            (leg.answer(bye), NO),
        ]  # fmt: skip

    def ringing(self, extension: str = "201") -> list[Step]:
        leg = self.leg("+31633333333")
        return [(leg.invite(), self.meta(inbound(extension))), (leg.reply(180), PHONE)]


def interleaved(flows: list[list[Step]]) -> list[Step]:
    """The flows' steps taken in turn: every call overlaps the others."""
    return [s for group in itertools.zip_longest(*flows) for s in group if s is not None]


def recognized(offered: CallEvent) -> CallEvent:
    """What the enricher publishes when a look-up answers after its budget."""
    return CallEvent(
        type="call.recognized", occurred_at=offered.occurred_at, node=offered.node,
        tenant=offered.tenant, call_id=offered.call_id, sip_call_id=offered.sip_call_id,
        from_tag=offered.from_tag, conversation_id=offered.conversation_id,
        direction=offered.direction, calling=offered.calling, called=offered.called,
        extension=offered.extension, created_at=offered.created_at,
        lookup=Lookup("hit", contact=CONTACT, source="crm"), screen_pop=(POP,),
    )  # fmt: skip


@pytest.fixture
async def bus(redis_server: str) -> AsyncIterator[EventBus]:
    bus = EventBus(redis_server, counters=Counters())
    await bus.start()
    yield bus
    await bus.stop()


async def publish(bus: EventBus, events: list[CallEvent]) -> None:
    before = bus.published
    for event in events:
        assert bus.publish(event)
    await wait_until(lambda: bus.published == before + len(events), what="events in the stream")


def track(
    tenant: str, steps: list[Step], *, recognize: frozenset[int] = frozenset()
) -> list[CallEvent]:
    """The tracker's events for `steps`; the call.offered of the calls numbered in
    `recognize` (by order of their first event) gets its contact as an enricher in time
    would put it."""
    tracker = CallTracker("gw-1")
    now = time.time()
    events: list[CallEvent] = []
    offered = 0
    for msg, meta in steps:
        now += 0.5  # the calls take their time: durations of whole seconds
        for event in tracker.observe(msg, meta, now=now):
            if event.type == "call.offered":
                if offered in recognize:
                    event = dataclasses.replace(
                        event, lookup=Lookup("hit", contact=CONTACT, source="crm"),
                        screen_pop=(POP,),
                    )  # fmt: skip
                offered += 1
            events.append(event)
    assert all(e.tenant == tenant for e in events)
    return events


def last_events(events: list[CallEvent]) -> list[CallEvent]:
    """Each call's call.failed / call.cleared, newest first: the history's order."""
    return [e for e in reversed(events) if e.type in ("call.failed", "call.cleared")]


async def every_row(bus: EventBus, tenant: str, query: HistoryQuery, **opts: int) -> list[Any]:
    """All pages of `query` (following next_cursor), as the rows' dicts."""
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        page: HistoryPage = await history_page(
            bus, tenant, dataclasses.replace(query, before=cursor), **opts
        )
        rows += [r.to_dict() for r in page.rows]
        if page.next_cursor is None:
            return rows
        cursor = page.next_cursor
    raise AssertionError("history paging did not end")


def tenant_id() -> str:
    return "h-" + uuid.uuid4().hex[:12]


async def test_one_row_per_ended_call_with_outcome_contact_and_times(bus: EventBus) -> None:
    tenant = tenant_id()
    calls = Calls(tenant)
    flows = [calls.answered(), calls.busy(), calls.missed("202"), calls.dialled_out("202"),
             calls.ringing()]  # fmt: skip
    events = track(tenant, interleaved(flows), recognize=frozenset({0}))
    await publish(bus, events)

    page = await history_page(bus, tenant, HistoryQuery(visible=None))
    rows = {r.call_id: r.to_dict() for r in page.rows}
    assert page.next_cursor is None
    # Newest ending first; the call still ringing is no row.
    assert [r.call_id for r in page.rows] == [e.call_id for e in last_events(events)]
    assert len(rows) == 4

    by_outcome = {r["outcome"]: r for r in rows.values()}
    assert set(by_outcome) == {"answered", "busy", "missed"} and len(rows) == 4
    answered_in, answered_out = sorted(
        (r for r in rows.values() if r["outcome"] == "answered"), key=lambda r: r["direction"]
    )
    assert answered_in["direction"] == "inbound" and answered_in["extension"] == "201"
    assert answered_in["from"] == "+31612345678" and answered_in["to"] == "+31201234567"
    assert answered_in["contact"] == CONTACT
    assert answered_in["screen_pop"] == [POP.to_dict()]
    assert answered_in["answered_at"] is not None and answered_in["duration_s"] >= 1
    assert answered_in["missed"] is False and answered_in["cause"] == "normal"
    assert answered_out["direction"] == "outbound" and answered_out["extension"] == "202"
    assert answered_out["to"] == "+31612345678" and answered_out["contact"] is None

    assert by_outcome["busy"]["cause"] == "busy" and by_outcome["busy"]["duration_s"] == 0
    assert by_outcome["busy"]["answered_at"] is None
    missed = by_outcome["missed"]
    assert missed["missed"] is True and missed["cause"] == "cancelled"
    assert missed["extension"] == "202" and missed["from"] == "+31622222222"
    for row in rows.values():
        source = next(e for e in events if e.call_id == row["call_id"] and e.ended_at)
        assert row["conversation_id"] == source.conversation_id
        assert row["started_at"] == source.created_at and row["ended_at"] == source.ended_at


async def test_a_contact_recognized_after_the_call_ended_is_on_its_row(bus: EventBus) -> None:
    tenant = tenant_id()
    calls = Calls(tenant)
    events = track(tenant, calls.missed())
    offered = next(e for e in events if e.type == "call.offered")
    # The look-up outlived its budget and the call: call.recognized comes after the end.
    await publish(bus, [dataclasses.replace(offered, lookup=Lookup("pending")), *events[1:]])
    await publish(bus, [recognized(offered)])

    page = await history_page(bus, tenant, HistoryQuery(visible=None))
    (row,) = page.rows
    assert row.contact == CONTACT and row.outcome == "missed"


async def test_filters_and_visibility(bus: EventBus) -> None:
    tenant = tenant_id()
    calls = Calls(tenant)
    flows = [calls.answered("201"), calls.missed("201"), calls.busy("202"),
             calls.dialled_out("202"), calls.missed("203")]  # fmt: skip
    events = track(tenant, interleaved(flows), recognize=frozenset({0}))
    await publish(bus, events)

    async def outcomes(**query: Any) -> list[tuple[str, str]]:
        q = HistoryQuery(**{"visible": None, **query})
        return sorted((r["extension"], r["outcome"]) for r in await every_row(bus, tenant, q))

    assert await outcomes(visible=frozenset({"201"})) == [("201", "answered"), ("201", "missed")]
    assert await outcomes(visible=frozenset({"202", "203"}), extensions=frozenset({"203"})) == [
        ("203", "missed")
    ]
    assert await outcomes(missed=True) == [("201", "missed"), ("203", "missed")]
    assert await outcomes(missed=False, direction="inbound") == [
        ("201", "answered"), ("202", "busy")
    ]  # fmt: skip
    assert await outcomes(direction="outbound") == [("202", "answered")]
    # q: a recognized name, a company, a number in any form a person types.
    assert await outcomes(q="jane") == [("201", "answered")]
    assert await outcomes(q="EXAMPLE bv") == [("201", "answered")]
    assert await outcomes(q="06 2222 2222") == [("201", "missed"), ("203", "missed")]
    assert await outcomes(q="+31 6 1234") == [("201", "answered"), ("202", "answered")]
    assert await outcomes(q="nobody") == []
    started = [time.time() - 3600, time.time() + 3600]
    assert len(await outcomes(since=started[0], until=started[1])) == 5
    assert await outcomes(since=started[1]) == []
    assert await outcomes(until=started[0]) == []


@pytest.mark.parametrize(("limit", "page_size", "max_scan"), [(1, 500, 10_000), (3, 4, 10_000),
                                                              (50, 5, 10), (2, 3, 7)])  # fmt: skip
async def test_paging_gives_every_row_once_in_order(
    bus: EventBus, limit: int, page_size: int, max_scan: int
) -> None:
    """Small pages, short reads and a small scan budget: pages end in the middle of
    calls, and still every row comes exactly once, in order, with its contact."""
    tenant = tenant_id()
    calls = Calls(tenant)
    flows = [
        [calls.answered, calls.busy, calls.missed, calls.dialled_out][i % 4]() for i in range(24)
    ]
    events = track(tenant, interleaved(flows), recognize=frozenset(range(0, 24, 4)))
    await publish(bus, events)

    whole = await every_row(bus, tenant, HistoryQuery(visible=None, limit=200))
    paged = await every_row(
        bus, tenant, HistoryQuery(visible=None, limit=limit), page_size=page_size,
        max_scan=max_scan,
    )  # fmt: skip
    assert [r["call_id"] for r in whole] == [e.call_id for e in last_events(events)]
    assert [r["call_id"] for r in paged] == [r["call_id"] for r in whole]
    if max_scan >= 10_000:  # with enough of a budget, nothing is left out of a row
        assert paged == whole
    contacts = [r for r in whole if r["contact"] == CONTACT]
    assert len(contacts) == 6


async def test_an_empty_or_unknown_stream_has_no_rows(bus: EventBus) -> None:
    page = await history_page(bus, tenant_id(), HistoryQuery(visible=None))
    assert page.rows == [] and page.next_cursor is None
