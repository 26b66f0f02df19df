"""The event path's look-up (Recognizer.ask) on a real redis-server: answered by the
connection's reader without a task once the connection is open, through a task before,
counted once, cached, and silent once cancelled."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.recognition import keys
from gateway.recognition.cache import Contact, ContactCache
from gateway.recognition.index import ContactIndex, Upsert
from gateway.recognition.lookup import Recognition, Recognizer
from gateway.stats import Counters
from tests.waiting import wait_until

_tenants = itertools.count()
NUMBER = "+31612345678"


@pytest.fixture
def tenant() -> str:
    return f"ask-{next(_tenants)}-{int(time.time() * 1000) % 100000}"


@pytest.fixture
async def index(redis_server: str) -> AsyncIterator[ContactIndex]:
    idx = ContactIndex(redis_server)
    yield idx
    await idx.close()


def recognizer_of(index: ContactIndex) -> tuple[Recognizer, Counters, ContactCache]:
    counters = Counters()
    # Cached answers stay: invalidations are not followed here (see test_contact_index).
    cache = ContactCache(100, ttl=60, negative_ttl=60)
    return Recognizer(index, cache, counters), counters, cache


async def test_with_the_connection_open_the_reader_answers_and_no_task_runs(
    index: ContactIndex, tenant: str
) -> None:
    await index.apply(tenant, "crm", [Upsert(NUMBER, {"name": "Jan"})], [])
    await index.get(tenant, "+31600000000")  # opens the look-ups' connection
    recognizer, counters, cache = recognizer_of(index)
    answers: list[Recognition] = []
    tasks = asyncio.all_tasks()
    asked = recognizer.ask(tenant, NUMBER, answers.append)
    assert asyncio.all_tasks() == tasks  # the HGET is written; nothing waits in a task
    assert answers == []  # never answered from within ask
    await wait_until(lambda: answers != [], 2.0, "the answer")
    [answer] = answers
    assert (answer.status, answer.cache) == ("hit", "miss")
    assert answer.contact == Contact("crm", {"name": "Jan"})
    assert not asked.wanted
    assert counters.lookups["hit", "miss"] == 1 and sum(counters.lookups.values()) == 1
    cached = recognizer.cached(tenant, NUMBER)
    assert cached is not None and cached.contact == Contact("crm", {"name": "Jan"})
    assert cache.get(tenant, "+31699999999") == (False, None)


async def test_before_the_connection_is_open_a_task_answers(
    index: ContactIndex, tenant: str
) -> None:
    recognizer, counters, _ = recognizer_of(index)
    answers: list[Recognition] = []
    recognizer.ask(tenant, NUMBER, answers.append)
    await wait_until(lambda: answers != [], 5.0, "the answer")
    assert (answers[0].status, answers[0].cache) == ("miss", "miss")
    assert counters.lookups["miss", "miss"] == 1
    # The connection is open now: the next number goes the direct way.
    tasks = asyncio.all_tasks()
    recognizer.ask(tenant, "+31611111111", answers.append)
    assert asyncio.all_tasks() == tasks
    await wait_until(lambda: len(answers) == 2, 2.0, "the second answer")


async def test_an_error_reply_is_status_error_and_nothing_is_cached(
    redis_server: str, index: ContactIndex, tenant: str
) -> None:
    client = aioredis.Redis.from_url(redis_server)
    try:
        await client.set(keys.contacts(tenant), "not a hash")
        await index.get(tenant + "-other", NUMBER)  # opens the look-ups' connection
        recognizer, counters, cache = recognizer_of(index)
        answers: list[Recognition] = []
        recognizer.ask(tenant, NUMBER, answers.append)
        await wait_until(lambda: answers != [], 2.0, "the answer")
        assert answers[0].status == "error" and answers[0].contact is None
        assert counters.lookups["error", "miss"] == 1
        assert cache.get(tenant, NUMBER) == (False, None)
    finally:
        await client.delete(keys.contacts(tenant))
        await client.aclose()


async def test_a_cancelled_question_is_neither_answered_nor_counted(
    index: ContactIndex, tenant: str
) -> None:
    await index.get(tenant, "+31600000000")
    recognizer, counters, _ = recognizer_of(index)
    answers: list[Recognition] = []
    recognizer.ask(tenant, NUMBER, answers.append).cancel()
    # A look-up asked after it, on the same connection, is answered after it.
    after = await recognizer.lookup(tenant, "+31622222222")
    assert after.status == "miss"
    assert answers == [] and sum(counters.lookups.values()) == 1


async def test_a_lookup_of_the_same_number_shares_the_round_trip(
    index: ContactIndex, tenant: str
) -> None:
    await index.apply(tenant, "crm", [Upsert(NUMBER, {"name": "Jan"})], [])
    await index.get(tenant, "+31600000000")
    recognizer, counters, _ = recognizer_of(index)
    answers: list[Recognition] = []
    recognizer.ask(tenant, NUMBER, answers.append)
    joined = await recognizer.lookup(tenant, NUMBER)  # joins the HGET in flight
    assert joined.status == "hit" and joined.cache == "miss"
    await wait_until(lambda: answers != [], 2.0, "the answer")
    assert answers[0].status == "hit"
    assert counters.lookups["hit", "miss"] == 2
