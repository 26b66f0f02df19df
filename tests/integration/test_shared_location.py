"""SharedLocation on a real redis-server: "workers" (proxies with their own
SharedLocation in this test process) see each other's registrations, expiry is kept by
Redis and by memory, and a Redis restart loses nothing registered during the outage."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.proxy.core import Proxy
from gateway.runtime.shared_location import CHANNEL, SharedLocation, aor_key
from gateway.security import keys as security_keys
from gateway.sip.digest import DigestClient
from gateway.sip.message import Request, Response
from gateway.stats import Counters
from gateway.transport.addresses import Source
from tests.integration.gateway import RedisProcess
from tests.peers.ports import free_tcp_port
from tests.unit.proxy_harness import CONFIG, PASSWORDS, TRUNK, FakeTransport, request, settings_from
from tests.waiting import wait_until

GW = ("127.0.0.1", 5060)
PHONE_201 = ("127.0.0.1", 5201)  # UDP, behind NAT: its Contact is a private address
PHONE_202 = ("127.0.0.1", 5202)  # TCP
CONTACT_201 = "sip:201@192.168.1.10:5060"


class Worker:
    """One worker process's proxy, driven by hand, with its SharedLocation replicating."""

    def __init__(self, config: str, tmp: Path, name: str) -> None:
        self.origin = f"test/{name}/{id(self)}"
        self.location = SharedLocation(backoff_max=0.5)
        self.transport = FakeTransport()
        loop = asyncio.get_running_loop()
        self.proxy = Proxy(
            settings_from(config, tmp),
            transport=self.transport,
            counters=Counters(),
            clock=loop.time,
            location=self.location,
            auth_secret=b"unit-test-secret-0123456789",
        )
        self.task: asyncio.Task[None] | None = None

    async def start(self, url: str) -> Worker:
        self.task = asyncio.create_task(self.location.run(url, self.origin))
        await wait_until(lambda: self.location.connected, 10, f"{self.origin} connected")
        return self

    async def stop(self) -> None:
        started = time.monotonic()
        await self.location.stop()
        assert self.task is None or self.task.done(), "replication still running"
        assert time.monotonic() - started < 1.5

    def now(self) -> float:
        return self.proxy.clock()

    def contacts(self, extension: str) -> list[str]:
        return sorted(b.contact_uri for b in self.location.bindings("acme", extension, self.now()))

    def feed(self, text: str, src: tuple[str, int], transport: str, conn: int | None) -> Response:
        data = text.replace("\r\n", "\n").replace("\n", "\r\n").encode()
        before = len(self.transport.sent)
        self.proxy.receive(data, Source(transport, src, GW, conn))
        answers = [s.msg for s in self.transport.sent[before:]]
        responses = [m for m in answers if isinstance(m, Response)]
        assert responses, f"no answer to {text[:40]!r}"
        return responses[-1]

    def register(
        self,
        user: str,
        src: tuple[str, int],
        contact: str,
        *,
        expires: int = 600,
        transport: str = "udp",
        conn: int | None = None,
        cseq: int = 1,
    ) -> Response:
        """REGISTER with digest (challenge, then the answer), like a phone."""
        via = transport.upper()

        def attempt(number: int, extra: str = "") -> str:
            text = request(
                "REGISTER", "sip:acme.test", src=src, from_=f"<sip:{user}@acme.test>;tag=r",
                to=f"<sip:{user}@acme.test>", call_id=f"reg-{user}-{src[1]}", cseq=number,
                extra=f"Expires: {expires}{extra}", transport=via,
            )  # fmt: skip
            return text.replace(f"<sip:peer@{src[0]}:{src[1]}>", f"<{contact}>")

        challenge = self.feed(attempt(cseq), src, transport, conn)
        assert challenge.status == 401
        auth = DigestClient(user, PASSWORDS[user]).authorization(
            challenge.get_all("WWW-Authenticate")[0], "REGISTER", "sip:acme.test"
        )
        return self.feed(attempt(cseq + 1, f"\nAuthorization: {auth}"), src, transport, conn)

    def invite_from_trunk(self, did: str) -> set[tuple[str, str, int, int | None]]:
        """A call from the carrier: where this worker forwards it (one per binding), as
        (transport, host, port, connection)."""
        before = len(self.transport.sent)
        text = request("INVITE", f"sip:{did}@127.0.0.1", src=TRUNK)
        self.proxy.receive(
            text.replace("\r\n", "\n").replace("\n", "\r\n").encode(), Source("udp", TRUNK, GW)
        )
        sent = [
            s
            for s in self.transport.sent[before:]
            if isinstance(s.msg, Request) and s.msg.method == "INVITE"
        ]
        return {(s.target.transport, s.target.host, s.target.port, s.target.conn_id) for s in sent}


WorkerFactory = Callable[..., Awaitable[Worker]]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of this test alone (no other test's AORs), stopped at the end."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisProcess.start(tmp_path / "redis", port=free_tcp_port())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def workers(tmp_path: Path, own_redis: RedisProcess) -> AsyncIterator[WorkerFactory]:
    started: list[Worker] = []
    config = CONFIG.replace("registrar_min_expires = 60", "registrar_min_expires = 1")

    async def start(url: str | None = None) -> Worker:
        workdir = tmp_path / f"w{len(started)}"
        workdir.mkdir()
        worker = Worker(config, workdir, f"w{len(started)}")
        started.append(worker)
        return await worker.start(url or own_redis.url)

    yield start
    for worker in started:
        await worker.stop()


@pytest.fixture
async def redis(own_redis: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(own_redis.url, protocol=2)
    yield client
    await client.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Bounded polling of Redis itself (no event announces that a key expired)."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


# -- tests ---------------------------------------------------------------------------------
async def test_a_phone_registered_on_one_worker_is_called_through_another(
    workers: WorkerFactory, redis: aioredis.Redis
) -> None:
    a, b = await workers(), await workers()
    assert a.register("201", PHONE_201, CONTACT_201).status == 200  # UDP behind NAT
    tcp_contact = "sip:202@127.0.0.1:5202;transport=tcp"
    assert a.register("202", PHONE_202, tcp_contact, transport="tcp", conn=7).status == 200

    await wait_until(lambda: b.contacts("201") == [CONTACT_201], 5, "201 seen by b")
    await wait_until(lambda: b.contacts("202") == [tcp_contact], 5, "202 seen by b")

    # The NAT'ed UDP phone is reached at its source address from either worker.
    assert a.invite_from_trunk("+31201234567") == {("udp", *PHONE_201, None)}
    assert b.invite_from_trunk("+31201234567") == {("udp", *PHONE_201, None)}
    (nated,) = b.location.bindings("acme", "201", b.now())
    assert nated.behind_nat and nated.source.local == GW  # the port its NAT lets in
    # The TCP phone's connection belongs to a: b can only open one of its own.
    (held,) = b.location.bindings("acme", "202", b.now())
    assert held.source.conn_id is None and held.origin == a.origin
    (mine,) = a.location.bindings("acme", "202", a.now())
    assert mine.source.conn_id == 7 and mine.origin is None

    stored = await redis.hgetall(aor_key("acme", "201"))
    assert list(stored) == [CONTACT_201.encode()]
    ttl = await redis.pttl(aor_key("acme", "201"))
    assert 590_000 < ttl <= 600_000  # the binding's expiry
    # `sipgw tenant delete` unlinks the tenant's keys: ours are among them.
    tenant_keys = {k async for k in redis.scan_iter(match=security_keys.tenant_pattern("acme"))}
    assert {aor_key("acme", "201").encode(), aor_key("acme", "202").encode()} <= tenant_keys


async def test_deregistration_through_another_worker_propagates(
    workers: WorkerFactory, redis: aioredis.Redis
) -> None:
    a, b = await workers(), await workers()
    assert a.register("201", PHONE_201, CONTACT_201).status == 200
    await wait_until(lambda: b.contacts("201") == [CONTACT_201], 5, "201 seen by b")

    # The phone's next REGISTER (Expires: 0, same Call-ID, next CSeq) lands on b.
    assert b.register("201", PHONE_201, CONTACT_201, expires=0, cseq=3).status == 200
    assert b.contacts("201") == []
    await wait_until(lambda: a.contacts("201") == [], 5, "201 gone from a")
    assert await redis.exists(aor_key("acme", "201")) == 0


async def test_two_phones_of_one_extension_registering_at_once_on_two_workers(
    workers: WorkerFactory, redis: aioredis.Redis
) -> None:
    a, b = await workers(), await workers()
    desk, soft = "sip:201@192.168.1.10:5060", "sip:201@192.168.1.11:5060"
    # Both answered before either worker's change reached Redis.
    assert a.register("201", PHONE_201, desk).status == 200
    assert b.register("201", ("127.0.0.1", 5211), soft).status == 200

    both = sorted([desk, soft])
    await wait_until(lambda: a.contacts("201") == both and b.contacts("201") == both, 5, "both")
    assert sorted(await redis.hkeys(aor_key("acme", "201"))) == [c.encode() for c in both]


async def test_a_worker_started_later_loads_every_registration(workers: WorkerFactory) -> None:
    a, b = await workers(), await workers()
    assert a.register("201", PHONE_201, CONTACT_201).status == 200
    assert b.register("202", PHONE_202, "sip:202@127.0.0.1:5202").status == 200
    await wait_until(lambda: a.location.pending == 0 and b.location.pending == 0, 5, "written")
    await wait_until(lambda: a.contacts("202") != [] and b.contacts("201") != [], 5, "seen")

    c = await workers()
    # Loaded before it reports itself connected: no wait.
    assert c.contacts("201") == [CONTACT_201]
    assert c.contacts("202") == ["sip:202@127.0.0.1:5202"]
    (held,) = c.location.bindings("acme", "201", c.now())
    assert held.origin == a.origin and held.behind_nat
    assert held.remaining(c.now()) > 590


async def test_expiry_is_kept_by_redis_and_by_memory(
    workers: WorkerFactory, redis: aioredis.Redis
) -> None:
    a, b = await workers(), await workers()
    assert a.register("201", PHONE_201, CONTACT_201, expires=1).status == 200
    await wait_until(lambda: b.contacts("201") == [CONTACT_201], 5, "201 seen by b")
    assert 0 < await redis.pttl(aor_key("acme", "201")) <= 1000

    async def key_gone() -> bool:
        return await redis.exists(aor_key("acme", "201")) == 0

    await eventually(key_gone, 5, "redis to expire the AOR")
    await wait_until(lambda: a.contacts("201") == [] and b.contacts("201") == [], 5, "expired")
    a.location.purge(a.now())
    b.location.purge(b.now())
    assert len(a.location) == len(b.location) == 0

    d = await workers()  # nothing to load
    assert len(d.location) == 0


async def test_registrations_made_while_redis_is_down_reach_the_others(
    workers: WorkerFactory, own_redis: RedisProcess, tmp_path: Path
) -> None:
    a, b = await workers(), await workers()
    assert a.register("201", PHONE_201, CONTACT_201).status == 200
    await wait_until(lambda: b.contacts("201") == [CONTACT_201], 5, "201 seen by b")

    own_redis.stop()
    await wait_until(lambda: not a.location.connected and not b.location.connected, 15, "down")
    # SIP goes on from memory on both sides.
    assert a.register("202", PHONE_202, "sip:202@127.0.0.1:5202").status == 200
    assert b.register("201", ("127.0.0.1", 5211), "sip:201@192.168.1.11:5060").status == 200
    assert b.invite_from_trunk("+31201234567") == {
        ("udp", *PHONE_201, None),
        ("udp", "127.0.0.1", 5211, None),
    }
    assert b.contacts("202") == []

    # Back, empty (no persistence): each worker writes its own bindings again.
    restarted = RedisProcess.start(tmp_path / "redis-again", port=own_redis.port)
    try:
        # Whichever reconnects first, b never loses a's phone meanwhile.
        await wait_until(lambda: b.location.connected, 15, "b reconnected")
        assert CONTACT_201 in b.contacts("201")
        both = sorted([CONTACT_201, "sip:201@192.168.1.11:5060"])
        await wait_until(
            lambda: b.contacts("202") == ["sip:202@127.0.0.1:5202"] and a.contacts("201") == both,
            15,
            "the outage's registrations on both workers",
        )
        assert b.contacts("201") == both
        client = aioredis.Redis.from_url(restarted.url, protocol=2)
        try:
            assert await client.exists(aor_key("acme", "201"), aor_key("acme", "202")) == 2
            assert len(await client.hkeys(aor_key("acme", "201"))) == 2
        finally:
            await client.aclose()
    finally:
        for worker in (a, b):
            await worker.location.stop()
        restarted.stop()
    assert a.location.redis_errors >= 1 and b.location.redis_errors >= 1


async def test_garbage_on_the_channel_is_ignored(
    workers: WorkerFactory, redis: aioredis.Redis
) -> None:
    a = await workers()
    await redis.publish(CHANNEL, b"\x00 not ours")
    await wait_until(lambda: a.location.bad_messages == 1, 5, "the message counted")
    assert a.location.connected
    assert a.register("201", PHONE_201, CONTACT_201).status == 200
    await wait_until(lambda: a.location.applied >= 1, 5, "own write echoed")
