"""The event path's recognition: budget, pending → call.recognized, hard cap, errors, and
the order of a held call's events. The index is a stand-in whose answers the test
releases; the same behaviour against a real (slowed, stopped) Redis is in
tests/integration/test_recognition.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gateway.calls.events import CallEvent, Party
from gateway.config import Recognition, ScreenPop, Settings, Tenant
from gateway.config.templates import parse_template
from gateway.enrichment import Enricher
from gateway.recognition.cache import Contact, ContactCache
from gateway.recognition.index import Found, IndexUnavailable
from gateway.recognition.lookup import Recognizer
from gateway.stats import Counters
from tests.waiting import wait_until

NUMBER = "+31612345678"


class SlowIndex:
    """get() waits until the test releases it, then answers or fails."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.contact: Contact | None = Contact("crm", {"name": "Zoë & Co", "crm_id": "C 1/2"})
        self.fail = False
        self.calls = 0

    def ask(self, tenant: str, number: str, answer: object) -> bool:
        return False  # no connection open: the recognizer takes the task path (`get`)

    async def get(self, tenant: str, number: str) -> Contact | None:
        self.calls += 1
        await self.release.wait()
        if self.fail:
            raise IndexUnavailable("connection refused")
        return self.contact


def settings(budget_ms: float = 20, timeout_ms: float = 2000) -> Settings:
    fields = ("name", "crm_id")
    pops = (
        ScreenPop("crm", "hit", parse_template("https://crm.example/c/{contact.crm_id}", fields)),
        ScreenPop("new", "miss", parse_template("https://crm.example/new?phone={number}", fields)),
    )
    rec = Recognition(fields=fields, budget_ms=budget_ms, timeout_ms=timeout_ms, screen_pop=pops)
    return Settings(tenants=(Tenant("acme", "Acme", ("acme.test",), recognition=rec),))


def event(kind: str = "call.offered", *, direction: str = "inbound", call: str = "c1",
          number: str | None = NUMBER) -> CallEvent:  # fmt: skip
    calling = Party(number_raw="0612345678", number_e164=number)
    called = Party(number_raw="+31201234567", number_e164="+31201234567")
    return CallEvent(
        type=kind, occurred_at="2026-11-22T10:00:00Z", node="n", tenant="acme", call_id=call,
        conversation_id="conv-" + call, direction=direction, calling=calling, called=called,
        extension="201",
    )  # fmt: skip


class Harness:
    def __init__(self, cfg: Settings | None = None, cache: ContactCache | None = None) -> None:
        self.index = SlowIndex()
        self.cache = cache or ContactCache(100, ttl=60, negative_ttl=60)
        self.counters = Counters()
        self.recognizer = Recognizer(self.index, self.cache, self.counters)  # type: ignore[arg-type]
        self.out: list[CallEvent] = []
        self.enricher = Enricher(cfg or settings(), self.recognizer, self.out.append)

    def types(self) -> list[str]:
        return [e.type for e in self.out]

    async def until(self, check: Callable[[], bool], timeout: float = 2.0) -> None:
        await wait_until(check, timeout)


async def test_answer_within_budget_enriches_the_offered_event() -> None:
    h = Harness(settings(budget_ms=1000))
    h.enricher.submit(event())
    h.enricher.submit(event("call.delivered"))
    assert h.out == []  # held: the offered event waits for its look-up, ringing waits too
    h.index.release.set()
    await h.until(lambda: len(h.out) == 2)
    offered, delivered = h.out
    assert (offered.type, delivered.type) == ("call.offered", "call.delivered")
    assert offered.lookup is not None and offered.lookup.status == "hit"
    assert offered.lookup.cache == "miss" and offered.lookup.budget_ms == 1000
    assert offered.lookup.contact == {"name": "Zoë & Co", "crm_id": "C 1/2"}
    assert offered.screen_pop is not None
    assert [(p.name, p.url) for p in offered.screen_pop] == [
        ("crm", "https://crm.example/c/C%201%2F2")
    ]


async def test_a_cached_answer_goes_out_synchronously() -> None:
    h = Harness()
    h.cache.put("acme", NUMBER, None, h.cache.epoch)  # known: not a contact
    h.enricher.submit(event())
    assert h.types() == ["call.offered"] and h.index.calls == 0
    lookup = h.out[0].lookup
    assert lookup is not None and (lookup.status, lookup.cache) == ("miss", "hit")
    assert h.out[0].screen_pop is not None
    assert h.out[0].screen_pop[0].url == "https://crm.example/new?phone=%2B31612345678"


async def test_late_answer_pending_then_recognized_and_held_events_follow() -> None:
    h = Harness(settings(budget_ms=10))
    h.enricher.submit(event())
    h.enricher.submit(event("call.delivered"))
    h.enricher.submit(event("call.offered", call="other"))  # another call is not held up
    await h.until(lambda: len(h.out) == 3)  # both budgets ran out: pending
    assert sorted((e.call_id, e.type) for e in h.out if e.type == "call.offered") == [
        ("c1", "call.offered"),
        ("other", "call.offered"),
    ]
    first, second = [e for e in h.out if e.call_id == "c1"]
    assert (first.type, first.call_id) == ("call.offered", "c1")
    assert first.lookup is not None and first.lookup.status == "pending"
    assert first.lookup.latency_ms is not None and first.lookup.latency_ms >= 10
    assert first.screen_pop is None
    assert (second.type, second.call_id) == ("call.delivered", "c1")
    h.index.release.set()
    await h.until(lambda: "call.recognized" in h.types())
    recognized = next(e for e in h.out if e.type == "call.recognized")
    assert recognized.call_id == "c1" and recognized.conversation_id == "conv-c1"
    assert recognized.lookup is not None and recognized.lookup.status == "hit"
    assert recognized.screen_pop is not None and recognized.calling == first.calling


async def test_no_answer_by_the_hard_cap_is_a_timeout() -> None:
    h = Harness(settings(budget_ms=5, timeout_ms=30))
    h.enricher.submit(event())
    await h.until(lambda: "call.recognized" in h.types())
    recognized = h.out[-1]
    assert recognized.lookup is not None and recognized.lookup.status == "timeout"
    assert recognized.screen_pop is None
    assert h.counters.lookups["timeout", "miss"] == 1
    assert h.enricher.pending == 0


async def test_redis_unavailable_is_status_error_and_the_events_flow() -> None:
    h = Harness(settings(budget_ms=1000))
    h.index.fail = True
    h.index.release.set()
    h.enricher.submit(event())
    h.enricher.submit(event("call.cleared"))
    await h.until(lambda: len(h.out) == 2)
    assert h.types() == ["call.offered", "call.cleared"]
    assert h.out[0].lookup is not None and h.out[0].lookup.status == "error"
    assert h.out[0].screen_pop is None


@pytest.mark.parametrize(
    ("direction", "number", "looked_up"),
    [
        ("inbound", NUMBER, True),
        ("internal", NUMBER, False),  # a colleague: nothing to recognize
        ("inbound", None, False),  # anonymous, a short number, a SIP user
    ],
)
async def test_who_is_looked_up(direction: str, number: str | None, looked_up: bool) -> None:
    h = Harness(settings(budget_ms=1000))
    h.index.release.set()
    h.enricher.submit(event(direction=direction, number=number))
    await h.until(lambda: len(h.out) == 1)
    assert (h.out[0].lookup is not None) is looked_up


async def test_outbound_looks_up_the_called_number() -> None:
    h = Harness(settings(budget_ms=1000))
    h.index.release.set()
    h.enricher.submit(event(direction="outbound"))
    await h.until(lambda: len(h.out) == 1)
    assert h.out[0].lookup is not None and h.out[0].lookup.status == "hit"


async def test_too_many_lookups_in_flight_answer_error_at_once() -> None:
    h = Harness(settings(budget_ms=1000))
    h.enricher.max_pending = 1
    h.enricher.submit(event(call="a"))
    h.enricher.submit(event(call="b"))
    assert h.types() == ["call.offered"] and h.out[0].call_id == "b"
    assert h.out[0].lookup is not None and h.out[0].lookup.status == "error"
    h.index.release.set()
    await h.until(lambda: len(h.out) == 2)


async def test_close_releases_held_events() -> None:
    h = Harness(settings(budget_ms=1000))
    h.enricher.submit(event())
    h.enricher.submit(event("call.delivered"))
    await asyncio.sleep(0)
    await h.enricher.close()
    assert h.types() == ["call.offered", "call.delivered"]
    assert h.out[0].lookup is not None and h.out[0].lookup.status == "error"


async def test_disabled_tenant_is_not_looked_up() -> None:
    cfg = Settings(
        tenants=(Tenant("acme", "Acme", ("a.test",), recognition=Recognition(enabled=False)),)
    )
    h = Harness(cfg)
    h.enricher.submit(event())
    assert h.types() == ["call.offered"] and h.out[0].lookup is None


class ReaderIndex:
    """An index whose connection is open: ask() writes the question, the test plays the
    connection's reader and answers it."""

    def __init__(self) -> None:
        self.answers: list[Callable[[Found], None]] = []

    def ask(self, tenant: str, number: str, answer: Callable[[Found], None]) -> bool:
        self.answers.append(answer)
        return True


async def test_the_readers_answer_publishes_the_held_events_there_and_then() -> None:
    index = ReaderIndex()
    counters = Counters()
    recognizer = Recognizer(index, ContactCache(100, 60, 60), counters)  # type: ignore[arg-type]
    out: list[CallEvent] = []
    enricher = Enricher(settings(budget_ms=1000), recognizer, out.append)
    tasks = asyncio.all_tasks()
    enricher.submit(event())
    enricher.submit(event("call.delivered"))
    assert asyncio.all_tasks() == tasks and out == [] and enricher.pending == 1
    [answer] = index.answers
    answer(Contact("crm", {"name": "Jan", "crm_id": "7"}))
    # Within the reader's call: no task, no loop iteration between the answer and the events.
    assert [e.type for e in out] == ["call.offered", "call.delivered"]
    assert out[0].lookup is not None and (out[0].lookup.status, out[0].lookup.cache) == (
        "hit",
        "miss",
    )
    assert enricher.pending == 0 and counters.lookups["hit", "miss"] == 1


async def test_the_readers_late_answer_follows_as_call_recognized() -> None:
    index = ReaderIndex()
    recognizer = Recognizer(index, ContactCache(100, 60, 60), Counters())  # type: ignore[arg-type]
    out: list[CallEvent] = []
    enricher = Enricher(settings(budget_ms=5), recognizer, out.append)
    enricher.submit(event())
    await wait_until(lambda: len(out) == 1, 2.0)
    assert out[0].lookup is not None and out[0].lookup.status == "pending"
    index.answers[0](IndexUnavailable("connection lost"))
    assert [e.type for e in out] == ["call.offered", "call.recognized"]
    assert out[1].lookup is not None and out[1].lookup.status == "error"
    assert enricher.pending == 0
