"""Click-to-dial requests readable and cancellable on every node, through Redis.

A dial request lives where it was placed: in the `Originator` of the node (worker 0)
that took the ``POST /v1/calls``, because its calls' transactions and dialogs are
there. Behind a balancer the ``GET`` and ``DELETE`` that follow may reach another node,
so the owner shares what those need: the request's public view (`DialRequest.to_dict()`,
what ``GET`` answers) is written to Redis on every change, and a ``DELETE`` that lands
elsewhere is relayed to the owner, which cancels it as a local ``DELETE`` would.

Redis
    ``{tenant}:dial:<id>``  string, JSON ``{"node", "tenant", "request"}``: the owner's
        name and the request's view. In the tenant's hash tag like every key of a
        tenant (its Redis Cluster slot), and entered in the tenant's key index
        ``{tenant}:keys`` (security/tenant_keys.py) before each write, so deleting the
        tenant finds it without a SCAN (the index entry goes first: a key never exists
        unlisted, and an entry whose key is gone costs nothing). It expires
        ``[dial] keep_finished`` after its last write: a finished request is then gone
        from every node at the time the owner forgets it, and the owner writes each
        unfinished one again every third of that (`refresh`), so a request whose node
        went away is forgotten ``keep_finished`` later.
    ``sipgw:dials:{<node>}``  pub/sub channel of one node (a tag of its own): the
        cancellations relayed to it and the answers to those it relayed, JSON
        (`encode_message`). Sharded pub/sub (``SSUBSCRIBE``/``SPUBLISH``) on a cluster,
        on the master of the channel's slot; classic pub/sub on one server or with
        Sentinel.

Why a key per request and not one hash per tenant: Redis 7.0 has no expiry per hash
field, and a request's expiry is its own. Why sharded pub/sub on a cluster: the relay
needs the number of subscribers a message reached (none: the owner is not listening,
answer 503 at once). A cluster counts a classic ``PUBLISH``'s receivers on the node that
took it alone (redis-py 8.2 happens to send it to the node of the channel's slot, where
the owner listens, but that is the library's choice); ``SPUBLISH`` goes to that master
by definition, and is not copied to every node.

The SIP path never waits on Redis (DESIGN.md): `changed()`, called by the Originator
inside the SIP core, only notes the request in a dict (one entry per request, so a
request that changes three times while Redis is away is written once, in its latest
state); the writer task serializes and writes it. The dict is bounded
(``max_pending``); a request that finds it full is not shared (``dropped``, logged once
per overflow) and still works on its own node. A batch that fails goes back into the
dict and the link reconnects with backoff (`RedisLink`); writes are idempotent SETs.

Trust: a relayed cancellation names the tenant and the id, and the owner cancels only
a request of that tenant with that id (`Originator.cancel`), so a message that names
another tenant cancels nothing. The node that relays has checked the caller's token
against the stored view first, as for a local request. Whoever can publish on Redis can
still cancel any request whose tenant and id they know: see docs/security.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection

from gateway.dial.originate import DialError, DialRequest, Originator
from gateway.redis_link import (
    LINK_ERRORS,
    Backoff,
    Client,
    LinkOptions,
    RedisLink,
    RedisTarget,
    client,
    dedicated_connection,
    raise_if_cancelled,
    serve_until_one_ends,
    shard_connection,
)
from gateway.security import tenant_keys

log = logging.getLogger("sipgw.dial")

KEY_INFIX = ":dial:"
CHANNEL_PREFIX = "sipgw:dials:"
STEADY = 10.0  # seconds a session must have served for a reconnection to start quick
MAX_MESSAGE = 64 * 1024  # bytes: a relay message is a few hundred

_TENANT = re.compile(r"[a-z0-9-]{1,32}")
# The Originator's ids are UUIDv7 text; anything else names no request (and never
# reaches a key).
_DIAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # config/loader.py's node names
_TOKEN = re.compile(r"[0-9a-f]{32}")


# -- names -----------------------------------------------------------------------------
def is_dial_id(text: str) -> bool:
    return _DIAL_ID.fullmatch(text) is not None


def dial_key(tenant: str, dial_id: str) -> str:
    """``{tenant}:dial:<id>``; ValueError for a tenant or id that is not one."""
    if _TENANT.fullmatch(tenant) is None or not is_dial_id(dial_id):
        raise ValueError(f"invalid dial request {tenant!r}/{dial_id!r}")
    return "{" + tenant + "}" + KEY_INFIX + dial_id


def node_channel(node: str) -> str:
    """``sipgw:dials:{<node>}``: what is relayed to `node` (its own hash tag)."""
    if _NODE.fullmatch(node) is None:
        raise ValueError(f"invalid node name {node!r}")
    return CHANNEL_PREFIX + "{" + node + "}"


# -- the stored view ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StoredDial:
    """A dial request as its owner last wrote it to Redis."""

    tenant: str
    node: str  # the owner: the node whose Originator holds it
    view: dict[str, Any]  # DialRequest.to_dict() as JSON

    @property
    def id(self) -> str:
        return str(self.view["id"])

    @property
    def requested_by(self) -> str:
        return str(self.view["requested_by"])

    @property
    def extension(self) -> str:
        return str(self.view["from"])

    @property
    def state(self) -> str:
        return str(self.view["state"])

    @property
    def finished(self) -> bool:
        return self.view["finished"] is True


def encode_record(request: DialRequest, node: str) -> bytes:
    record = {"node": node, "tenant": request.tenant, "request": request.to_dict()}
    return json.dumps(record, separators=(",", ":")).encode()


def decode_record(tenant: str, dial_id: str, data: bytes) -> StoredDial | None:
    """The stored request of `tenant` with `dial_id`, or None when the value is not one
    (a key is only trusted for what it says of itself: the tenant and id inside must
    be the ones asked for)."""
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    node, view = record.get("node"), record.get("request")
    if not (
        record.get("tenant") == tenant
        and isinstance(node, str)
        and isinstance(view, dict)
        and view.get("id") == dial_id
        and isinstance(view.get("state"), str)
        and isinstance(view.get("requested_by"), str)
        and isinstance(view.get("from"), str)
        and isinstance(view.get("finished"), bool)
    ):
        return None
    return StoredDial(tenant, node, view)


# -- relay messages ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CancelAsk:
    """A node's request: cancel `tenant`'s request `id`, answer on `reply_to`'s channel."""

    token: str
    tenant: str
    id: str
    reply_to: str


@dataclass(frozen=True, slots=True)
class CancelReply:
    """The owner's answer, as its local ``DELETE`` would give it: 200 with the view, or
    a `DialError`'s status and message."""

    token: str
    status: int
    view: dict[str, Any] | None = None
    detail: str | None = None


def encode_message(message: CancelAsk | CancelReply) -> bytes:
    if isinstance(message, CancelAsk):
        body: dict[str, Any] = {
            "op": "cancel", "token": message.token, "tenant": message.tenant,
            "id": message.id, "reply_to": message.reply_to,
        }  # fmt: skip
    else:
        body = {
            "op": "reply", "token": message.token, "status": message.status,
            "view": message.view, "detail": message.detail,
        }  # fmt: skip
    return json.dumps(body, separators=(",", ":")).encode()


def decode_message(data: bytes) -> CancelAsk | CancelReply | None:
    """A relay message, or None when it is not a well-formed one of ours."""
    if len(data) > MAX_MESSAGE:
        return None
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    token = body.get("token")
    if not (isinstance(token, str) and _TOKEN.fullmatch(token)):
        return None
    op = body.get("op")
    if op == "cancel":
        tenant, dial_id, reply_to = body.get("tenant"), body.get("id"), body.get("reply_to")
        if (
            isinstance(tenant, str)
            and _TENANT.fullmatch(tenant)
            and isinstance(dial_id, str)
            and is_dial_id(dial_id)
            and isinstance(reply_to, str)
            and _NODE.fullmatch(reply_to)
        ):
            return CancelAsk(token, tenant, dial_id, reply_to)
        return None
    if op == "reply":
        status, view, detail = body.get("status"), body.get("view"), body.get("detail")
        if (
            isinstance(status, int)
            and not isinstance(status, bool)
            and 200 <= status <= 599
            and (view is None or isinstance(view, dict))
            and (detail is None or isinstance(detail, str))
        ):
            return CancelReply(token, status, view, detail)
    return None


# -- the shared table ------------------------------------------------------------------
class SharedDials:
    """The dial requests of this node in Redis, and the other nodes' read from there;
    see the module docstring.

    Numbers for tests and logs: ``connected``, ``written`` (request states Redis
    stored), ``dropped`` (changes not queued: full), ``relayed`` (cancellations sent to
    another node), ``served`` (cancellations this node carried out for another),
    ``bad_messages``, and the link's ``errors``.
    """

    def __init__(
        self,
        node: str,
        keep_finished: float,
        *,
        max_pending: int = 10_000,
        batch_size: int = 256,
        relay_timeout: float = 2.0,
        socket_timeout: float = 2.0,
        ping_interval: float = 5.0,
        backoff: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        self.node = node
        self.channel = node_channel(node)
        self.ttl_ms = max(1000, round(keep_finished * 1000))
        # An unfinished request is written again before its key could expire.
        self.refresh = min(max(keep_finished / 3, 0.2), 300.0)
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.relay_timeout = relay_timeout
        self.socket_timeout = socket_timeout
        self.ping_interval = ping_interval
        self.backoff = backoff
        self._pending: dict[str, DialRequest] = {}  # by id: to be written
        self._live: dict[str, DialRequest] = {}  # by id: not finished, written again
        self._wake = asyncio.Event()
        self._waiting: dict[str, asyncio.Future[CancelReply]] = {}  # by token
        self._serving: set[asyncio.Task[None]] = set()
        self._originator: Originator | None = None
        self._run_sip: Callable[[Callable[[], DialRequest]], DialRequest] | None = None
        self._redis: Client | None = None
        self._sharded = False  # a cluster: SSUBSCRIBE/SPUBLISH
        self._link = RedisLink(on_change=self._link_changed)
        self._overflow_logged = False
        self.connected = False
        self.written = 0
        self.dropped = 0
        self.relayed = 0
        self.served = 0
        self.bad_messages = 0

    @property
    def errors(self) -> int:
        return self._link.errors

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- the SIP side (synchronous, never waits) -------------------------------------
    def changed(self, request: DialRequest) -> None:
        """The Originator's `on_change`: note `request` for the writer."""
        if request.finished:
            self._live.pop(request.id, None)
        else:
            self._live[request.id] = request
        if request.id not in self._pending and len(self._pending) >= self.max_pending:
            self.dropped += 1
            if not self._overflow_logged:
                self._overflow_logged = True
                log.warning("dial requests: write queue full; states not shared")
            return
        self._pending[request.id] = request
        self._wake.set()

    def serve(
        self, originator: Originator, run: Callable[[Callable[[], DialRequest]], DialRequest]
    ) -> None:
        """Carry out cancellations relayed to this node on `originator`, through `run`
        (the SIP server's: the work may send, and arm timers)."""
        self._originator = originator
        self._run_sip = run

    # -- the API side ----------------------------------------------------------------------
    async def read(self, tenant: str, dial_id: str) -> StoredDial | None:
        """The request as its owner last wrote it, None when there is none (or the id
        cannot be one). DialError 503 when Redis cannot be asked."""
        if not is_dial_id(dial_id) or _TENANT.fullmatch(tenant) is None:
            return None
        redis = self._redis
        if redis is None:
            raise DialError(503, "dial requests of other nodes cannot be read yet; retry")
        try:
            data = await redis.get(dial_key(tenant, dial_id))
        except LINK_ERRORS as exc:
            log.warning("dial requests: read failed", extra={"error": str(exc)})
            raise DialError(
                503, "dial requests of other nodes cannot be read (Redis unavailable); retry"
            ) from None
        if not isinstance(data, bytes):
            return None
        stored = decode_record(tenant, dial_id, data)
        if stored is None:
            self.bad_messages += 1
        return stored

    async def relay_cancel(self, stored: StoredDial) -> CancelReply:
        """Ask the owner of `stored` to cancel it; its answer (200 with the new view,
        or 409 …). DialError 503 when the owner cannot be reached, 504 when it does not
        answer within ``relay_timeout``."""
        if stored.node == self.node:
            # Ours by the record, but not in our table: this node restarted since.
            raise DialError(409, _gone(stored.node))
        redis = self._redis
        if redis is None or not self.connected:
            raise DialError(503, "cannot reach the node of this dial request (Redis unavailable)")
        ask = CancelAsk(secrets.token_hex(16), stored.tenant, stored.id, self.node)
        answer: asyncio.Future[CancelReply] = asyncio.get_running_loop().create_future()
        self._waiting[ask.token] = answer
        try:
            try:
                receivers = await self._publish(redis, stored.node, encode_message(ask))
            except LINK_ERRORS:
                raise DialError(
                    503, "cannot reach the node of this dial request (Redis unavailable)"
                ) from None
            if not receivers:
                raise DialError(
                    503,
                    f"node {stored.node}, which placed this call, is not reachable; "
                    "the call may still be up: retry, or wait for it to end",
                )
            self.relayed += 1
            try:
                async with asyncio.timeout(self.relay_timeout):
                    reply = await answer
            except TimeoutError:
                raise DialError(
                    504,
                    f"node {stored.node}, which placed this call, did not answer within "
                    f"{self.relay_timeout:g} s; the call may still be up: retry",
                ) from None
        finally:
            self._waiting.pop(ask.token, None)
        if reply.status == 404:  # the owner does not hold it: it restarted since
            raise DialError(409, _gone(stored.node))
        return reply

    # -- the asynchronous side -----------------------------------------------------------------
    async def run(self, target: RedisTarget | str) -> None:
        """Write, refresh and relay until cancelled: reconnect with backoff whenever
        Redis goes away. Never raises but CancelledError."""
        redis = client(
            target,
            name="dials",
            options=LinkOptions(
                socket_timeout=self.socket_timeout,
                connect_timeout=min(self.socket_timeout, 2.0),
            ),
        )
        self._redis = redis
        self._sharded = isinstance(redis, RedisCluster)
        try:
            await self._link.run(
                lambda: self._session(redis),
                Backoff(*self.backoff),
                steady=STEADY,
                failure_log="dial requests: sharing round failed",
                logger=log,
            )
        finally:
            self._redis = None
            self.connected = False
            for task in self._serving:
                task.cancel()
            for waiting in self._waiting.values():
                waiting.cancel()
            await redis.aclose()

    async def _session(self, redis: Client) -> None:
        conn = await self._subscriber(redis)
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
            command = "SSUBSCRIBE" if self._sharded else "SUBSCRIBE"
            await conn.send_command(command, self.channel)
            reply = await conn.read_response(timeout=self.socket_timeout)
            raise_if_cancelled()
            if not (isinstance(reply, list) and reply and reply[0] == command.lower().encode()):
                raise ConnectionError(f"unexpected answer to {command}: {reply!r:.80}")
            self.connected = True
            self._link.came_up()
            # What changed while Redis was away is in _pending already; the live ones
            # are written again, in case Redis restarted empty.
            self._pending.update(self._live)
            await self._serve(conn, redis)
        finally:
            self.connected = False
            await conn.disconnect()

    async def _subscriber(self, redis: Client) -> Connection:
        if isinstance(redis, RedisCluster):
            # The master of the channel's slot, where SPUBLISH sends; looked up again
            # after a failure (a failover may have moved it).
            return await shard_connection(redis, self.channel, refresh=self._link.errors > 0)
        assert isinstance(redis, Redis)
        return dedicated_connection(redis)

    async def _serve(self, conn: Connection, redis: Client) -> None:
        tasks = {
            asyncio.create_task(self._listen(conn, redis), name="dials-listen"),
            asyncio.create_task(self._write(redis), name="dials-write"),
        }
        await serve_until_one_ends(tasks, "dial sharing")

    async def _write(self, redis: Client) -> None:
        loop = asyncio.get_running_loop()
        refresh_at = loop.time() + self.refresh
        while True:
            if not self._pending:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(refresh_at):
                        await self._wake.wait()
            if loop.time() >= refresh_at:
                self._pending.update(self._live)
                refresh_at = loop.time() + self.refresh
            if not self._pending:
                continue
            batch = [self._pending.pop(key) for key in list(self._pending)[: self.batch_size]]
            try:
                pipe = redis.pipeline(transaction=False)
                now = time.time()
                for request in batch:
                    self._store(pipe, request, now)
                await pipe.execute()
            except BaseException:
                for request in batch:  # the same object holds the latest state
                    self._pending.setdefault(request.id, request)
                raise
            self.written += len(batch)
            if not self._pending:
                self._overflow_logged = False
            raise_if_cancelled()

    def _store(self, pipe: Any, request: DialRequest, now: float) -> None:
        """Queue the writes of `request`'s record: its entry in the tenant's index, then
        the key (a pipeline sends a slot's commands in order, and both are in the
        tenant's slot)."""
        key = dial_key(request.tenant, request.id)
        tenant_keys.index_in(pipe, request.tenant, key, now + self.ttl_ms / 1000, now)
        pipe.set(key, encode_record(request, self.node), px=self.ttl_ms)

    async def _publish(self, redis: Client, node: str, data: bytes) -> int:
        """Send `data` on `node`'s channel: the number of subscribers it reached."""
        channel = node_channel(node)
        if self._sharded:
            return int(await redis.spublish(channel, data))
        return int(await redis.publish(channel, data))

    async def _listen(self, conn: Connection, redis: Client) -> None:
        kind = b"smessage" if self._sharded else b"message"
        pinged = False
        while True:
            reply = await conn.read_response(timeout=self.ping_interval)
            raise_if_cancelled()
            if reply is None:
                if pinged:
                    raise TimeoutError(f"no answer from redis for {2 * self.ping_interval:.0f} s")
                await conn.send_command("PING")
                pinged = True
                continue
            pinged = False
            if (
                isinstance(reply, list)
                and len(reply) == 3
                and reply[0] == kind
                and isinstance(reply[2], bytes)
            ):
                self._on_message(reply[2], redis)

    def _on_message(self, data: bytes, redis: Client) -> None:
        message = decode_message(data)
        if message is None:
            self.bad_messages += 1
            return
        if isinstance(message, CancelReply):
            waiting = self._waiting.get(message.token)
            if waiting is not None and not waiting.done():
                waiting.set_result(message)
            return
        reply, request = self._cancel(message)
        task = asyncio.create_task(self._answer(redis, message.reply_to, reply, request))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    def _cancel(self, ask: CancelAsk) -> tuple[CancelReply, DialRequest | None]:
        """Cancel as a local DELETE would: only `ask.tenant`'s request `ask.id`."""
        originator, run = self._originator, self._run_sip
        if originator is None or run is None:
            return CancelReply(ask.token, 503, detail="click-to-dial is not running there"), None
        try:
            request = run(lambda: originator.cancel(ask.tenant, ask.id))
        except DialError as err:
            return CancelReply(ask.token, err.status, detail=err.message), None
        self.served += 1
        log.info(
            "dial request cancelled for another node",
            extra={"dial_id": request.id, "tenant": request.tenant, "by_node": ask.reply_to},
        )
        return CancelReply(ask.token, 200, view=request.to_dict()), request

    async def _answer(
        self, redis: Client, node: str, reply: CancelReply, request: DialRequest | None
    ) -> None:
        try:
            if request is not None:
                # Stored before the answer goes: a GET on the asking node that follows
                # its DELETE's answer reads the new state (the writer writes it too).
                pipe = redis.pipeline(transaction=False)
                self._store(pipe, request, time.time())
                await pipe.execute()
            await self._publish(redis, node, encode_message(reply))
        except LINK_ERRORS as exc:  # the asking node answers 504 by itself
            log.warning("dial requests: reply not sent", extra={"error": str(exc)})

    def _link_changed(self, up: bool, error: str | None) -> None:
        if up:
            log.info("dial requests: redis is back", extra={"pending": self.pending})
        else:
            log.warning(
                "dial requests: redis unavailable; other nodes cannot read or cancel "
                "this node's requests meanwhile",
                extra={"error": error, "pending": self.pending},
            )


def _gone(node: str) -> str:
    return f"node {node} no longer holds this dial request (it restarted); nothing to cancel"
