"""The API's directory of tenants, users and tokens, kept in Redis.

Seeded from ``Settings`` at start (``seed``): every configured tenant and user is
written with ``source = "config"``; a configured user that disappeared, or whose
password, role or extensions changed, loses its tokens. A restart, or another node's
start, with the same configuration changes nothing: the configured password is checked
against the stored hash (each load salts its own hash afresh). ``sipgw tenant create`` and
``sipgw user add`` add records with ``source = "cli"``, which seeding leaves alone
(except when the configuration takes the name over). Every node reads the same Redis,
so a login on one node gives a token valid on all of them, and a revocation is
effective everywhere at once.

Key layout: see ``gateway.security.keys``.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import math
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Literal, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from gateway.config import Settings, Tenant, User
from gateway.config.second_factor import SecondFactor
from gateway.config.syntax import show
from gateway.redis_link import LinkOptions, RedisTarget, client
from gateway.security import keys, tenant_keys
from gateway.security.audit import AuditEntry, AuditLog, redacted
from gateway.security.key_migration import migrate_keys
from gateway.security.passwords import PasswordVerifier, needs_rehash, password_problem
from gateway.security.principal import ROLES, Principal, Role
from gateway.security.second_factor import (
    Challenge,
    NewEnrolment,
    Passed,
    SecondFactorError,
    SecondFactors,
)
from gateway.security.throttle import (
    Attempt,
    CounterStore,
    LoginThrottle,
    RedisCounterStore,
    ThrottlePolicy,
)
from gateway.security.tickets import (
    MAX_TICKETS_PER_TOKEN,
    TICKET_TTL,
    new_ticket,
    parse_ticket,
)
from gateway.security.tokens import (
    LoginRefused,
    Token,
    looks_like_token,
    new_token,
    token_hash,
    token_id,
)
from gateway.security.totp_sealing import KeyRing
from gateway.security.user_settings import UserSettings

log = logging.getLogger("sipgw.security")

TENANT_ID = re.compile(r"[a-z0-9-]{1,32}")
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
EXTENSION = re.compile(r"[0-9]{2,8}")
MAX_TOKENS_PER_USER = 50  # the oldest are revoked beyond it
SYNC_TOKEN_TTL = 365 * 24 * 3600.0  # default lifetime of a sync token
Source = Literal["config", "cli"]
# Why a token's live sessions end: logout, `sipgw token` revocation, eviction past
# MAX_TOKENS_PER_USER or a changed user ("token revoked"), expiry, the user's removal.
SessionEnd = Literal["token revoked", "token expired", "user removed"]


class DirectoryError(ValueError):
    """A request the directory refuses (unknown tenant, name taken, weak password…);
    the message is fit for an operator."""


class DirectoryUnavailable(RuntimeError):
    """Redis cannot be reached: nobody can be authenticated right now (HTTP 503)."""


@dataclass(frozen=True)
class TenantRecord:
    id: str
    name: str
    source: Source
    created_at: float = 0.0


@dataclass(frozen=True, repr=False)
class UserRecord:
    """An API user as stored in ``{tenant}:users``."""

    username: str
    role: Literal["admin", "user"]
    extension: str | None = None  # its own extension (SIP users have one)
    extensions: tuple[str, ...] = ()  # watched besides its own
    password_hash: str | None = field(default=None, compare=True)
    source: Source = "cli"

    def __repr__(self) -> str:
        hashed = "'***'" if self.password_hash else "None"
        return (
            f"UserRecord(username={self.username!r}, role={self.role!r}, "
            f"extension={self.extension!r}, extensions={self.extensions!r}, "
            f"password_hash={hashed}, source={self.source!r})"
        )

    @property
    def visible_extensions(self) -> frozenset[str]:
        if self.role == "admin":
            return frozenset()
        own = () if self.extension is None else (self.extension,)
        return frozenset((*own, *self.extensions))

    def to_json(self) -> str:
        data = asdict(self)
        data["extensions"] = list(self.extensions)
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> UserRecord:
        data = json.loads(text)
        return cls(
            username=str(data["username"]),
            role="admin" if data.get("role") == "admin" else "user",
            extension=data.get("extension"),
            extensions=tuple(data.get("extensions") or ()),
            password_hash=data.get("password_hash"),
            source="config" if data.get("source") == "config" else "cli",
        )

    @classmethod
    def from_config(cls, user: User) -> UserRecord:
        return cls(
            username=user.username,
            role=user.role,
            extension=user.extension,
            extensions=user.extensions,
            password_hash=user.api_password_hash,
            source="config",
        )


def _role(text: str) -> Role | None:
    return next((r for r in ROLES if r == text), None)


def _printable(text: str) -> str:
    """Text from a client, made fit for the audit log: no control characters, bounded."""
    return "".join(c if c.isprintable() else "?" for c in text[:64])


def operator_source() -> str:
    """How CLI actions are attributed in the audit log: "cli:<os user>@<host>"."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "?"
    return f"cli:{who}@{socket.gethostname()}"


# Index one token under its user: add, drop expired entries, cap the count (returning
# the evicted token hashes), and let the indexes expire with their last token.
# Two sorted sets of the same members: by expiry (what has expired) and by issue order
# (what to evict). Evicting by expiry alone let tokens of one millisecond tie, and
# ZPOPMIN then took them in the order of their random hashes, not the oldest.
# Both indexes are entered in the tenant's key index (tenant_keys.py) as they expire.
# KEYS[1] = {t}:tokens:<user>, KEYS[2] = {t}:token-order:<user>, KEYS[3] = {t}:keys
# ARGV = digest, expires_ms, now_ms, max
_INDEX_TOKEN = (
    tenant_keys.INDEX_KEY_LUA
    + """
local top = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
local seq = 1
if #top > 0 then seq = tonumber(top[2]) + 1 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
for _, digest in ipairs(expired) do redis.call('ZREM', KEYS[2], digest) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
local evicted = {}
if excess > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[2], excess)
  for i = 1, #popped, 2 do
    evicted[#evicted + 1] = popped[i]
    redis.call('ZREM', KEYS[1], popped[i])
  end
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #last > 0 then
  redis.call('PEXPIREAT', KEYS[1], last[2])
  redis.call('PEXPIREAT', KEYS[2], last[2])
  index_key(KEYS[3], KEYS[1], last[2])
  index_key(KEYS[3], KEYS[2], last[2])
end
return evicted
"""
)


class Directory:
    """Tenants, users and tokens of the HTTP API (contract: docs/events-contract.md)."""

    def __init__(
        self,
        redis: str | RedisTarget,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        verify_concurrency: int = 2,
        counters: CounterStore | None = None,
    ) -> None:
        self.settings = settings
        self.security = settings.security
        self._clock = clock
        # No loop of its own around Redis: redis-py's retries (a few quick tries) are
        # what smooths a blip, and a connection idle for 30 s is checked before use. The
        # library's protocol, which this code and its tests were written against.
        # `redis`: a URL, or the [redis] settings (one server, a cluster or Sentinel);
        # a RedisCluster serves the same commands, every multi-key one within a tenant's
        # slot (security/keys.py).
        self._redis = cast(aioredis.Redis, client(
            redis,
            name="directory",
            options=LinkOptions(
                connect_timeout=5.0,
                decode_responses=True,
                health_check_interval=30,
                library_retries=True,
                protocol=None,
            ),
        ))  # fmt: skip
        self.audit = AuditLog(
            self._redis,
            maxlen=self.security.audit_maxlen,
            node=settings.node.name,
            clock=clock,
        )
        policy = ThrottlePolicy(
            max_failures=self.security.login_max_failures,
            max_failures_per_source=self.security.login_max_failures_per_source,
            lockout=self.security.login_lockout,
        )
        self.throttle = LoginThrottle(counters or RedisCounterStore(self._redis), policy)
        self.verifier = PasswordVerifier(verify_concurrency)
        self.second_factors = SecondFactors(
            self._redis, audit=self.audit, throttle=self.throttle, verifier=self.verifier,
            keyring=KeyRing.from_settings(settings), clock=clock,
        )  # fmt: skip
        self._index_token = self._redis.register_script(_INDEX_TOKEN)
        self._unlink_indexed = self._redis.register_script(tenant_keys.UNLINK_INDEXED)
        self.seeded = False  # the configuration has been copied to Redis
        # True while seed_when_available() has not finished: the configured users are not
        # in Redis yet, so a login must hear "retry" (503), not "invalid credentials".
        self.seed_pending = False

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self, *, seed: bool = True) -> None:
        """Check Redis answers, then (``seed``) copy the configuration's tenants and users.

        Raises ``DirectoryUnavailable`` when Redis cannot be reached."""
        async with self._redis_errors():
            await self._redis.ping()
            await migrate_keys(self._redis)
            await self.seal_second_factors()
            if seed:
                await self.seed()
        await self.verifier.warm_up()

    async def seed_when_available(self, retry: float = 5.0) -> None:
        """Seed as soon as Redis answers, retrying every ``retry`` seconds: for the
        gateway, whose SIP side must start (and run) without Redis. Run it as a task;
        ``seeded`` turns True when done."""
        self.seed_pending = True
        try:
            await self._seed_retrying(retry)
        finally:
            self.seed_pending = False

    async def _seed_retrying(self, retry: float) -> None:
        await self.verifier.warm_up()
        failures = 0
        while True:
            try:
                async with self._redis_errors():
                    await self.seal_second_factors()
                    await self.seed()
            except DirectoryUnavailable as exc:
                if failures == 0:
                    log.warning(
                        "cannot seed the API directory yet, retrying", extra={"error": str(exc)}
                    )
                failures += 1
                await asyncio.sleep(retry)
                continue
            if failures:
                log.info("API directory seeded", extra={"attempts": failures + 1})
            return

    async def seal_second_factors(self) -> int:
        """Seal with the current key the TOTP secrets of every tenant stored in clear
        or with an older key (second_factor.py), at each start: no user need log in
        for it. How many were sealed."""
        tenants = [str(t) for t in await self._redis.hkeys(keys.TENANTS)]
        sealed = await self.second_factors.seal_stored(tenants)
        if sealed:
            log.info("TOTP secrets sealed with the current key", extra={"count": sealed})
        return sealed

    async def stop(self) -> None:
        await self._redis.aclose()

    @property
    def default_tenant(self) -> str | None:
        """The tenant of a login that names none: ``default_tenant``, else the only one."""
        if self.settings.default_tenant is not None:
            return self.settings.default_tenant
        if len(self.settings.tenants) == 1:
            return self.settings.tenants[0].id
        return None

    @contextlib.asynccontextmanager
    async def _redis_errors(self) -> AsyncIterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise DirectoryUnavailable(f"Redis unavailable: {exc}") from exc

    # -- seeding ---------------------------------------------------------------------------
    async def seed(self) -> None:
        """Make Redis agree with the configuration (idempotent; every node does it)."""
        await self._seed()
        self.seeded = True

    async def _seed(self) -> None:
        await migrate_keys(self._redis)
        now = self._clock()
        configured = {t.id: t for t in self.settings.tenants}
        stored = await self._tenant_records()
        for tenant in self.settings.tenants:
            record = stored.get(tenant.id)
            if record is None or record.source != "config" or record.name != tenant.name:
                created = now if record is None else record.created_at
                await self._put_tenant(TenantRecord(tenant.id, tenant.name, "config", created))
            await self._seed_users(tenant)
        for tenant_id, record in stored.items():
            if record.source == "config" and tenant_id not in configured:
                deleted = await self._remove_tenant(tenant_id)
                await self.audit.record(
                    None, "tenant.remove", "ok", source="config", ref=tenant_id,
                    detail=f"keys={deleted}",
                )  # fmt: skip

    async def _seed_users(self, tenant: Tenant) -> None:
        existing = await self._user_records(tenant.id)
        wanted = {u.username for u in tenant.users}
        for user in tenant.users:
            old = existing.get(user.username)
            record, revokes = await self._seed_record(user, old)
            if old == record:
                continue
            await self._redis.hset(keys.users(tenant.id), user.username, record.to_json())
            if revokes:
                revoked = await self.revoke_user(tenant.id, user.username)
                detail = f"changed by the configuration; {revoked} tokens revoked"
                await self.audit.record(
                    tenant.id, "user.update", "ok", user=user.username, source="config",
                    detail=detail,
                )  # fmt: skip
        for username, old in existing.items():
            if old.source == "config" and username not in wanted:
                await self.remove_user(
                    tenant.id, username, source="config", why="removed from the configuration"
                )

    async def _seed_record(self, user: User, old: UserRecord | None) -> tuple[UserRecord, bool]:
        """The record to store for a configured user, and whether replacing ``old`` with
        it revokes the user's tokens: a new password, role or extensions do, and so does
        taking over a CLI user. The same password keeps its stored hash (no rewrite),
        unless that hash has outdated parameters: then the fresh one replaces it, and
        the tokens stand."""
        record = UserRecord.from_config(user)
        if old is None:
            return record, False
        if not await self._same_password(user, old.password_hash):
            return record, True
        if old.password_hash is not None and not needs_rehash(old.password_hash):
            record = replace(record, password_hash=old.password_hash)
        return record, replace(old, password_hash=record.password_hash) != record

    async def _same_password(self, user: User, stored: str | None) -> bool:
        """True when ``stored`` (the hash in Redis) is of the API password the
        configuration gives ``user`` now; both None (no API login) count as the same.

        A configured ``api_password_hash`` compares as it is. A configured
        ``api_password`` was hashed with a fresh salt at this load, so its hash never
        equals the stored one: the password itself is verified against the stored hash,
        one Argon2 verification (~25 ms in a worker thread, sharing the logins' slots)
        per such user at every seed, which every start of every node runs."""
        if stored == user.api_password_hash:
            return True
        if stored is None or user.api_password is None:
            return False
        return await self.verifier.verify(stored, user.api_password)

    # -- tenants ---------------------------------------------------------------------------
    async def _tenant_records(self) -> dict[str, TenantRecord]:
        raw = await self._redis.hgetall(keys.TENANTS)
        records: dict[str, TenantRecord] = {}
        for tenant_id, text in raw.items():
            data = json.loads(text)
            records[str(tenant_id)] = TenantRecord(
                id=str(tenant_id),
                name=str(data.get("name", "")),
                source="config" if data.get("source") == "config" else "cli",
                created_at=float(data.get("created_at", 0.0)),
            )
        return records

    async def _put_tenant(self, record: TenantRecord) -> None:
        data = {"name": record.name, "source": record.source, "created_at": record.created_at}
        await self._redis.hset(keys.TENANTS, record.id, json.dumps(data))

    async def tenants(self) -> dict[str, TenantRecord]:
        async with self._redis_errors():
            return await self._tenant_records()

    async def tenant_exists(self, tenant: str) -> bool:
        async with self._redis_errors():
            return bool(await self._redis.hexists(keys.TENANTS, tenant))

    async def create_tenant(self, tenant_id: str, name: str, *, source: str = "") -> TenantRecord:
        """Add an API-only tenant (users, tokens, events; no SIP domains)."""
        if not TENANT_ID.fullmatch(tenant_id):
            raise DirectoryError(
                f"tenant id must be 1-32 of a-z, 0-9 and '-', got {show(tenant_id)}"
            )
        if tenant_id == keys.NODE_TAG.strip("{}"):
            raise DirectoryError(f"tenant id {show(tenant_id)} is reserved")
        if not name.strip() or any(ord(c) < 0x20 for c in name):
            raise DirectoryError("tenant name must be non-empty text without control characters")
        record = TenantRecord(tenant_id, name, "cli", self._clock())
        async with self._redis_errors():
            data = {"name": name, "source": "cli", "created_at": record.created_at}
            added = await self._redis.hsetnx(keys.TENANTS, tenant_id, json.dumps(data))
            if not added:
                raise DirectoryError(f"tenant {show(tenant_id)} exists already")
            await self.audit.record(tenant_id, "tenant.create", "ok", source=source, detail=name)
        return record

    async def delete_tenant(self, tenant_id: str, *, source: str = "") -> int:
        """Delete an API-only tenant and every piece of its data: keys deleted.

        A tenant of the configuration is refused: remove it from the file, and the next
        start deletes its data the same way (`seed`)."""
        async with self._redis_errors():
            if not await self._redis.hexists(keys.TENANTS, tenant_id):
                raise DirectoryError(f"unknown tenant {show(tenant_id)}")
            deleted = await self._remove_tenant(tenant_id)
            await self.audit.record(
                None, "tenant.delete", "ok", source=source, ref=tenant_id, detail=f"keys={deleted}"
            )
        return deleted

    async def _remove_tenant(self, tenant_id: str) -> int:
        """Revoke every token of a tenant, then delete all its keys: users, events,
        contacts, audit, and every key in its index (tenant_keys.py). Only a line in the
        global audit stream says it existed. No SCAN: the keys are all on the shard of
        the tenant's slot, the tokens each on their own (found in the token indexes)."""
        index = keys.key_index(tenant_id)
        prefix = keys.user_tokens_prefix(tenant_id)
        for name in await self._redis.zrange(index, 0, -1):
            if str(name).startswith(prefix):
                await self._revoke_index(str(name))
        fixed = [k for k in keys.fixed_keys(tenant_id) if k != index]
        deleted = int(
            await self._unlink_indexed(
                keys=[index, *fixed], args=[keys.tenant_tag(tenant_id) + ":"]
            )
        )
        await self._redis.hdel(keys.TENANTS, tenant_id)
        await self._redis.srem(keys.LOCATION_TENANTS, tenant_id)
        await self._redis.srem(keys.WEBHOOK_TENANTS, tenant_id)
        return deleted

    # -- users -----------------------------------------------------------------------------
    async def _user_records(self, tenant: str) -> dict[str, UserRecord]:
        raw = await self._redis.hgetall(keys.users(tenant))
        return {str(name): UserRecord.from_json(str(text)) for name, text in raw.items()}

    async def user(self, tenant: str, username: str) -> UserRecord | None:
        async with self._redis_errors():
            text = await self._redis.hget(keys.users(tenant), username)
        return None if text is None else UserRecord.from_json(str(text))

    async def users(self, tenant: str) -> dict[str, UserRecord]:
        async with self._redis_errors():
            return await self._user_records(tenant)

    async def add_user(
        self,
        tenant: str,
        username: str,
        password: str | None,
        *,
        role: str = "user",
        extension: str | None = None,
        extensions: Iterable[str] = (),
        replace: bool = False,
        source: str = "",
    ) -> UserRecord:
        """Add (or with ``replace`` overwrite, revoking its tokens) an API user of a tenant.

        Users of the configuration cannot be changed here: edit the file."""
        if not USERNAME.fullmatch(username):
            raise DirectoryError(
                f"username must be 1-64 letters, digits, '.', '_' or '-', got {show(username)}"
            )
        if role not in ("admin", "user"):
            raise DirectoryError(f'role must be "admin" or "user", got {show(role)}')
        watched = tuple(dict.fromkeys(extensions))
        for ext in (*((extension,) if extension else ()), *watched):
            if not EXTENSION.fullmatch(ext):
                raise DirectoryError(f"extension must be 2-8 digits, got {show(ext)}")
        if role == "admin" and watched:
            raise DirectoryError("an admin sees every extension: give no watched extensions")
        if password is not None:
            problem = password_problem(password)
            if problem is not None:
                raise DirectoryError(f"password {problem}")
        async with self._redis_errors():
            if not await self._redis.hexists(keys.TENANTS, tenant):
                raise DirectoryError(f"unknown tenant {show(tenant)}")
            old = await self.user(tenant, username)
            if old is not None and old.source == "config":
                raise DirectoryError(
                    f"user {show(username)} of tenant {show(tenant)} comes from the "
                    "configuration file: change it there"
                )
            if old is not None and not replace:
                raise DirectoryError(f"user {show(username)} exists already (use --replace)")
            hashed = None if password is None else await self.verifier.hash(password)
            record = UserRecord(
                username=username,
                role=cast(Literal["admin", "user"], role),
                extension=extension,
                extensions=tuple(e for e in watched if e != extension),
                password_hash=hashed,
                source="cli",
            )
            await self._redis.hset(keys.users(tenant), username, record.to_json())
            detail = f"role {role}"
            if old is not None:
                revoked = await self.revoke_user(tenant, username)
                detail += f"; replaced, {revoked} tokens revoked"
            await self.audit.record(
                tenant, "user.add", "ok", user=username, source=source, detail=detail
            )
        return record

    async def remove_user(
        self, tenant: str, username: str, *, source: str = "", why: str = "removed"
    ) -> bool:
        """Remove a user and revoke its tokens (its live subscriptions end, "user
        removed"); False if there was no such user."""
        async with self._redis_errors():
            if not await self._redis.hdel(keys.users(tenant), username):
                return False
            await self._redis.hdel(keys.user_settings(tenant), username)
            await self.second_factors.remove(tenant, username)
            revoked = await self.revoke_user(tenant, username)
            await self.audit.record(
                tenant, "user.remove", "ok", user=username, source=source,
                detail=f"{why}; {revoked} tokens revoked",
            )  # fmt: skip
        return True

    # -- logins ----------------------------------------------------------------------------
    async def login(
        self, tenant: str | None, username: str, password: str, source: str
    ) -> Token | Challenge | LoginRefused:
        """Check a username and password; a token on success, or a ``Challenge`` when
        the user owes a second factor (second_factor.py: ``complete_login`` or, for an
        enrolment, ``confirm_second_factor`` ends the login).

        An unknown tenant, an unknown user, a user without API password and a wrong
        password all give ``LoginRefused("invalid")`` after the same work (a dummy
        Argon2 verification stands in for a missing hash). Every attempt is audited and
        counted by the throttle. Raises ``DirectoryUnavailable`` if Redis is down.
        """
        tenant_id = tenant if tenant is not None else self.default_tenant
        shown_tenant = tenant or ""
        if tenant_id is not None and not TENANT_ID.fullmatch(tenant_id):
            tenant_id = None  # no such tenant can exist; keep it out of key names
            shown_tenant = redacted(shown_tenant, "tenant")
        valid_username = USERNAME.fullmatch(username) is not None
        if not valid_username:
            # No such user can exist, and the text may be a password typed in the wrong
            # field: it is neither logged nor audited, nor used in a key.
            username = redacted(username, "username")
        async with self._redis_errors():
            known_tenant = tenant_id is not None and bool(
                await self._redis.hexists(keys.TENANTS, tenant_id)
            )
            audit_tenant = tenant_id if known_tenant else None
            detail = "" if known_tenant else f"tenant {show(_printable(shown_tenant))}"
            gate = await self.throttle.acquire(
                tenant_id if known_tenant and valid_username else None, username, source
            )
            if not isinstance(gate, Attempt):
                await self.audit.record(
                    audit_tenant, "login", "throttled", user=username, source=source,
                    detail=f"{gate.scope} locked for {math.ceil(gate.retry_after)} s",
                )  # fmt: skip
                return LoginRefused("throttled", gate.retry_after)
            record = None
            if known_tenant and valid_username and tenant_id is not None:
                text = await self._redis.hget(keys.users(tenant_id), username)
                record = None if text is None else UserRecord.from_json(str(text))
            password_hash = None if record is None else record.password_hash
            ok = await self.verifier.verify(password_hash, password)
            if not ok or record is None or tenant_id is None:
                await self.throttle.failed(gate)
                if not known_tenant:
                    result = "unknown_tenant"
                elif record is None:
                    result = "unknown_user"
                elif password_hash is None:
                    result = "no_api_password"
                else:
                    result = "bad_password"
                await self.audit.record(
                    audit_tenant, "login", result, user=username, source=source, detail=detail
                )
                return LoginRefused("invalid")
            if record.source == "cli" and password_hash and needs_rehash(password_hash):
                await self._rehash(tenant_id, record, password)
            policy = self.second_factor_policy(tenant_id)
            need = await self.second_factors.needed(tenant_id, username, record.role, policy)
            if need is not None:
                await self.throttle.passed(gate)
                challenge = await self.second_factors.challenge(tenant_id, username, need)
                await self.audit.record(
                    tenant_id, "login", "second_factor", user=username, source=source,
                    ref=challenge.ref, detail=f"{need} owed",
                )  # fmt: skip
                return challenge
            await self.throttle.succeeded(gate)
            token = await self._issue(
                tenant_id, record.username, record.role, record.visible_extensions,
                self.security.token_ttl,
            )  # fmt: skip
            await self.audit.record(
                tenant_id, "login", "ok", user=username, source=source,
                ref=token.principal.token_id,
            )  # fmt: skip
        return token

    # -- the second factor (second_factor.py) -------------------------------------------------
    def second_factor_policy(self, tenant: str) -> SecondFactor:
        """``[tenants.totp]`` of a configured tenant; an API-only tenant's is the default."""
        configured = self.settings.tenant_by_id(tenant)
        return SecondFactor() if configured is None else configured.totp

    async def complete_login(
        self, challenge: str, *, code: str | None, recovery_code: str | None, source: str
    ) -> Token | LoginRefused:
        """The second step of a login: the code (or a recovery code) for the challenge
        the password step gave. The challenge is used up by this attempt."""
        async with self._redis_errors():
            taken = await self.second_factors.take(challenge, "code")
            event = "login.totp" if code is not None else "login.recovery"
            if taken is None:
                await self._bad_challenge(challenge, event, source)
                return LoginRefused("invalid")
            outcome = await self.second_factors.check(
                taken, code=code, recovery_code=recovery_code, source=source
            )
            if isinstance(outcome, LoginRefused):
                return outcome
            detail = ""
            if outcome.method == "recovery code":
                left = await self.second_factors.recovery_codes_left(taken.tenant, taken.user)
                detail = f"{left} recovery codes left"
            return await self._second_factor_token(outcome, event, source, taken.ref, detail)

    async def _bad_challenge(self, challenge: str, event: str, source: str) -> None:
        """Audit a step with a challenge that is unknown, expired, used or of another
        kind, in its tenant's log when it names a known one (never the text itself)."""
        tenant = challenge.split(".", 1)[0] if "." in challenge else ""
        known = TENANT_ID.fullmatch(tenant) is not None and bool(
            await self._redis.hexists(keys.TENANTS, tenant)
        )
        await self.audit.record(tenant if known else None, event, "bad_challenge", source=source)

    async def _second_factor_token(
        self, passed: Passed, event: str, source: str, ref: str, detail: str = ""
    ) -> Token | LoginRefused:
        record = await self.user(passed.tenant, passed.user)
        if record is None:  # removed between the two steps
            await self.audit.record(
                passed.tenant, event, "unknown_user", user=passed.user, source=source, ref=ref
            )
            return LoginRefused("invalid")
        token = await self._issue(
            passed.tenant, record.username, record.role, record.visible_extensions,
            self.security.token_ttl,
        )  # fmt: skip
        await self.audit.record(
            passed.tenant, event, "ok", user=passed.user, source=source,
            ref=token.principal.token_id, detail=detail or f"challenge {ref}",
        )  # fmt: skip
        return token

    async def enrol_second_factor(
        self, tenant: str, username: str, *, source: str = ""
    ) -> NewEnrolment:
        """A new TOTP secret for a user (pending until confirmed). Raises
        ``DirectoryError`` when the tenant's policy is off, the user is unknown or has a
        confirmed second factor already."""
        policy = self.second_factor_policy(tenant)
        if not policy.enabled:
            raise DirectoryError(f"tenant {show(tenant)} uses no second factor (policy off)")
        async with self._redis_errors():
            if await self.user(tenant, username) is None:
                raise DirectoryError(f"tenant {show(tenant)} has no user {show(username)}")
            try:
                return await self.second_factors.begin(
                    tenant, username, issuer=policy.issuer, source=source
                )
            except SecondFactorError as err:
                raise DirectoryError(str(err)) from None

    async def enrol_with_challenge(self, challenge: str, *, source: str) -> NewEnrolment | None:
        """Enrolment during a login that the policy obliges to enrol: the "enrol"
        challenge stays for the confirmation. None for a challenge that is not one."""
        async with self._redis_errors():
            found = await self.second_factors.peek(challenge, "enrol")
        if found is None:
            async with self._redis_errors():
                await self._bad_challenge(challenge, "totp.enrol", source)
            return None
        return await self.enrol_second_factor(found.tenant, found.user, source=source)

    async def confirm_second_factor(
        self, tenant: str, username: str, code: str, *, source: str = ""
    ) -> tuple[str, ...] | LoginRefused:
        """Confirm a pending enrolment with its first code: the ten recovery codes."""
        async with self._redis_errors():
            outcome = await self.second_factors.confirm(tenant, username, code, source=source)
        return outcome if isinstance(outcome, LoginRefused) else outcome.recovery_codes

    async def new_recovery_codes(
        self, tenant: str, username: str, code: str, *, source: str = ""
    ) -> tuple[str, ...] | LoginRefused:
        """Ten new recovery codes for a current code; the old ones stop working."""
        async with self._redis_errors():
            return await self.second_factors.new_recovery_codes(
                tenant, username, code, source=source
            )

    async def turn_off_second_factor(
        self, tenant: str, username: str, code: str, *, source: str = ""
    ) -> LoginRefused | None:
        """A user's own switch-off of its second factor, for a current code."""
        async with self._redis_errors():
            return await self.second_factors.turn_off(tenant, username, code, source=source)

    async def confirm_with_challenge(
        self, challenge: str, code: str, *, source: str
    ) -> tuple[Token, tuple[str, ...]] | LoginRefused:
        """Confirm the enrolment of a login the policy obliged to enrol: the token, and
        the recovery codes. The challenge is used up by this attempt."""
        async with self._redis_errors():
            taken = await self.second_factors.take(challenge, "enrol")
            if taken is None:
                await self._bad_challenge(challenge, "totp.confirm", source)
                return LoginRefused("invalid")
            outcome = await self.second_factors.confirm(
                taken.tenant, taken.user, code, source=source, ref=taken.ref
            )
            if isinstance(outcome, LoginRefused):
                return outcome
            token = await self._second_factor_token(outcome, "login.totp", source, taken.ref)
        if isinstance(token, LoginRefused):
            return token
        return token, outcome.recovery_codes

    async def disable_second_factor(self, tenant: str, username: str, *, source: str = "") -> bool:
        """Remove a user's second factor (an admin's action, audited); False if none."""
        async with self._redis_errors():
            if await self.user(tenant, username) is None:
                raise DirectoryError(f"tenant {show(tenant)} has no user {show(username)}")
            return await self.second_factors.disable(tenant, username, source=source)

    async def reset_second_factor(self, tenant: str, username: str, *, source: str = "") -> int:
        """Remove a user's second factor, oblige the user to enrol again at the next
        login, and revoke the user's tokens (a lost phone): how many were revoked."""
        async with self._redis_errors():
            if await self.user(tenant, username) is None:
                raise DirectoryError(f"tenant {show(tenant)} has no user {show(username)}")
            revoked = await self.revoke_user(tenant, username)
            await self.second_factors.reset(
                tenant, username, source=source, detail=f"{revoked} tokens revoked"
            )
        return revoked

    async def _rehash(self, tenant: str, record: UserRecord, password: str) -> None:
        """Upgrade a stored hash made with older parameters, now that the password is
        known to be right."""
        hashed = await self.verifier.hash(password)
        updated = UserRecord(**{**asdict(record), "password_hash": hashed})
        await self._redis.hset(keys.users(tenant), record.username, updated.to_json())

    # -- tokens ----------------------------------------------------------------------------
    async def _issue(
        self,
        tenant: str,
        user: str | None,
        role: Role,
        extensions: frozenset[str],
        ttl: float,
    ) -> Token:
        bearer = new_token()
        digest = token_hash(bearer)
        now = self._clock()
        expires_at = now + ttl
        expires_ms = math.ceil(expires_at * 1000)
        mapping: dict[FieldT, EncodableT] = {
            "tenant": tenant,
            "user": user or "",
            "role": role,
            "extensions": json.dumps(sorted(extensions)),
            "issued_at": repr(now),
            "expires_at": repr(expires_at),
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.token(digest), mapping=mapping)
            pipe.pexpireat(keys.token(digest), expires_ms)
            await pipe.execute()
        evicted = await self._index_token(
            keys=[
                keys.user_tokens(tenant, user),
                keys.token_order(tenant, user),
                keys.key_index(tenant),
            ],
            args=[digest, expires_ms, math.floor(now * 1000), MAX_TOKENS_PER_USER],
        )
        if evicted:
            await self._delete_tokens(str(d) for d in evicted)
        principal = Principal(
            tenant=tenant,
            user=user,
            role=role,
            extensions=extensions,
            token_id=token_id(digest),
            expires_at=expires_at,
        )
        return Token(bearer=bearer, principal=principal)

    async def create_token(
        self,
        tenant: str,
        *,
        user: str | None = None,
        role: str | None = None,
        ttl: float | None = None,
        source: str = "",
    ) -> Token:
        """A token without a password (operators, integrations): for ``user`` (its role
        and extensions), or with ``role="sync"`` and no user for contact sync."""
        if ttl is not None and not (0 < ttl <= 10 * 365 * 24 * 3600):
            raise DirectoryError("ttl must be more than 0 and at most 10 years (in seconds)")
        async with self._redis_errors():
            if not await self._redis.hexists(keys.TENANTS, tenant):
                raise DirectoryError(f"unknown tenant {show(tenant)}")
            if user is None:
                if role != "sync":
                    raise DirectoryError('a token without a user must have role "sync"')
                token = await self._issue(
                    tenant, None, "sync", frozenset(), SYNC_TOKEN_TTL if ttl is None else ttl
                )
            else:
                record = await self.user(tenant, user)
                if record is None:
                    raise DirectoryError(f"tenant {show(tenant)} has no user {show(user)}")
                if role is not None and role != record.role:
                    raise DirectoryError(
                        f"user {show(user)} has role {show(record.role)}; a token cannot "
                        f"have another ({show(role)})"
                    )
                token = await self._issue(
                    tenant, user, record.role, record.visible_extensions,
                    self.security.token_ttl if ttl is None else ttl,
                )  # fmt: skip
            await self.audit.record(
                tenant, "token.create", "ok", user=user, source=source,
                ref=token.principal.token_id, detail=f"role {token.role}",
            )  # fmt: skip
        return token

    async def token(self, bearer: str) -> Principal | None:
        """The principal of a valid token; None for an unknown, revoked, expired or
        malformed one. Raises ``DirectoryUnavailable`` if Redis is down."""
        if not looks_like_token(bearer):
            return None
        return await self._principal(token_hash(bearer))

    async def _principal(self, digest: str) -> Principal | None:
        """The principal of the token stored under ``digest``, if it is valid now."""
        async with self._redis_errors():
            data = await self._redis.hgetall(keys.token(digest))
        if not data:
            return None
        try:
            expires_at = float(data["expires_at"])
            role = _role(str(data["role"]))
            extensions = frozenset(str(e) for e in json.loads(data["extensions"]))
            tenant = str(data["tenant"])
        except (KeyError, ValueError, TypeError):
            log.warning("malformed token record", extra={"ref": token_id(digest)})
            return None
        if expires_at <= self._clock() or role is None:
            return None
        return Principal(
            tenant=tenant,
            user=str(data.get("user") or "") or None,
            role=role,
            extensions=extensions,
            token_id=token_id(digest),
            expires_at=expires_at,
        )

    # -- subscription tickets (gateway/security/tickets.py) ---------------------------------
    async def issue_ticket(self, bearer: str, principal: Principal) -> str | None:
        """A single-use ticket opening one event subscription as the token ``bearer``
        (whose principal is ``principal``) within ``TICKET_TTL`` seconds; None when the
        token was issued ``MAX_TICKETS_PER_TOKEN`` within the last ``TICKET_TTL``."""
        tenant = principal.tenant
        issued_key = keys.tickets_issued(tenant, principal.token_id)
        ticket = new_ticket(tenant)
        parsed = parse_ticket(ticket)
        assert parsed is not None
        ticket_key = keys.ticket(tenant, parsed[1])
        now = self._clock()
        async with self._redis_errors():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(issued_key, 0, ex=TICKET_TTL, nx=True)
                pipe.incr(issued_key)
                tenant_keys.index_in(pipe, tenant, issued_key, now + TICKET_TTL, now)
                _, issued, *_ = await pipe.execute()
            if int(issued) > MAX_TICKETS_PER_TOKEN:
                return None
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(ticket_key, token_hash(bearer), ex=TICKET_TTL)
                tenant_keys.index_in(pipe, tenant, ticket_key, now + TICKET_TTL, now)
                await pipe.execute()
        return ticket

    async def redeem_ticket(self, ticket: str) -> tuple[Principal, str] | None:
        """Take a ticket (it is gone afterwards, on every node): the principal of its
        token and the token's hash, for the session checks. None for a ticket that is
        malformed, unknown, already used or expired, or whose token no longer stands."""
        parsed = parse_ticket(ticket)
        if parsed is None:
            return None
        tenant, digest = parsed
        async with self._redis_errors():
            token_digest = await self._redis.getdel(keys.ticket(tenant, digest))
        if token_digest is None:
            return None
        principal = await self._principal(str(token_digest))
        if principal is None or principal.tenant != tenant:
            return None
        return principal, str(token_digest)

    # -- the web client's per-user settings --------------------------------------------------
    async def user_settings(self, tenant: str, username: str) -> UserSettings:
        async with self._redis_errors():
            text = await self._redis.hget(keys.user_settings(tenant), username)
        return UserSettings.from_json(None if text is None else str(text))

    async def save_user_settings(self, tenant: str, username: str, settings: UserSettings) -> None:
        async with self._redis_errors():
            await self._redis.hset(keys.user_settings(tenant), username, settings.to_json())

    async def epoch(self) -> str:
        """The id of the data set Redis holds now, made when missing. A session remembers
        it at its start: a token missing under another epoch was lost with Redis's data
        (a restart without persistence, a flush), not revoked."""
        async with self._redis_errors():
            await self._redis.set(keys.EPOCH, secrets.token_hex(8), nx=True)
            return str(await self._redis.get(keys.EPOCH))

    async def session_end(
        self, bearer: str, principal: Principal, epoch: str | None = None
    ) -> SessionEnd | None:
        """Why a live session (an event subscription) of this token must end now, or None
        while the token is valid. One EXISTS per call while valid; Redis errors raise
        ``DirectoryUnavailable``. ``epoch``: ``epoch()`` when the session started."""
        return await self.session_end_of(token_hash(bearer), principal, epoch)

    async def session_end_of(
        self, digest: str, principal: Principal, epoch: str | None = None
    ) -> SessionEnd | None:
        """``session_end`` of the token stored under ``digest`` (a session opened with a
        ticket knows its token by its hash only)."""
        now = self._clock()
        if principal.expires_at is not None and principal.expires_at <= now:
            return "token expired"
        async with self._redis_errors():
            if await self._redis.exists(keys.token(digest)):
                return None
            if epoch is not None and await self.epoch() != epoch:
                # Redis lost every token and every revocation with them: nothing says
                # this one was revoked. It lives on until it expires (checked above).
                return None
            if principal.expires_at is not None and principal.expires_at <= now + 1.0:
                return "token expired"  # Redis expired the key a moment before our clock
            if principal.user is not None and not await self._redis.hexists(
                keys.users(principal.tenant), principal.user
            ):
                return "user removed"
        return "token revoked"

    async def revoke(self, bearer: str, *, source: str = "", event: str = "token.revoke") -> None:
        """Revoke a token at once, on every node (logout: ``event="logout"``)."""
        if not looks_like_token(bearer):
            return
        digest = token_hash(bearer)
        async with self._redis_errors():
            data = await self._redis.hgetall(keys.token(digest))
            if not data:
                return
            tenant, user = str(data.get("tenant", "")), str(data.get("user") or "") or None
            await self._redis.delete(keys.token(digest))
            await self._redis.zrem(keys.user_tokens(tenant, user), digest)
            await self._redis.zrem(keys.token_order(tenant, user), digest)
            await self.audit.record(
                tenant, event, "ok", user=user, source=source, ref=token_id(digest)
            )

    async def revoke_user(self, tenant: str, username: str | None) -> int:
        """Revoke every token of a user (``None``: the tenant's sync tokens); how many."""
        async with self._redis_errors():
            await self._redis.delete(keys.token_order(tenant, username))
            return await self._revoke_index(keys.user_tokens(tenant, username))

    async def _revoke_index(self, index: str) -> int:
        digests = [str(d) for d in await self._redis.zrange(index, 0, -1)]
        await self._delete_tokens(digests)
        await self._redis.delete(index)
        return len(digests)

    async def _delete_tokens(self, digests: Iterable[str]) -> None:
        # One DEL per key: token keys live in different Redis Cluster slots.
        async with self._redis.pipeline(transaction=False) as pipe:
            for digest in digests:
                pipe.delete(keys.token(digest))
            await pipe.execute()

    # -- audit -----------------------------------------------------------------------------
    async def audit_entries(
        self, tenant: str | None, *, count: int = 100, before: str | None = None
    ) -> list[AuditEntry]:
        async with self._redis_errors():
            return await self.audit.entries(tenant, count=count, before=before)
