"""The second factor of API logins: TOTP enrolments, recovery codes, login challenges.

A login with a second factor has two steps (docs/security.md, "Second factor"):

1. the password (``Directory.login``). Right, and the user owes a code, it gives no
   token but a *challenge*: 256 random bits naming their tenant (the shape of a
   subscription ticket, tickets.py), known to Redis by their SHA-256 only, good for
   ``CHALLENGE_TTL`` seconds and for one attempt;
2. the code (``Directory.complete_login``): the challenge is taken (GETDEL: one attempt,
   on any node), the attempt is counted by the very counters of the password step
   (throttle.py), and the code is checked against the user's secret. A right code gives
   the token; a wrong one, and the login starts again from the password.

A user the tenant's policy obliges (config/second_factor.py) but who has no second
factor yet gets an "enrol" challenge instead: with it, and nothing else, the user
enrols and confirms, and the confirmation gives the token.

A code is accepted once: Redis keeps, per user, the last time step a code was accepted
for, and a script moves it forward only (RFC 6238 §5.2), so the same code, or an older
one, is refused on every node even within its 90 s window. Recovery codes (ten, shown
once at confirmation) are stored as Argon2id hashes, one hash field each: HDEL takes one
away, so of two logins racing with the same code exactly one gets it.

The TOTP secret is stored sealed (AES-GCM, with a key from the node's configuration that
never reaches Redis, bound to its tenant and user: totp_sealing.py). A secret that does
not open (a wrong ``[security] totp_key``, altered bytes, another user's record copied)
fails the login closed: logged without the secret, audited as "unreadable_secret". A
secret stored in clear before sealing existed, or sealed with an older key, still works,
and is sealed with the current key when the node starts (``seal_stored``) and whenever it
is used again (a node of the older version may still be writing).

The secret is never logged, never returned after enrolment, and goes with the user
(``remove``); an admin may ``disable`` a user's second factor, or ``reset`` it (the user
must enrol again at the next login, and the user's tokens are revoked).
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from gateway.config.second_factor import SecondFactor
from gateway.security import keys, tenant_keys, totp
from gateway.security.audit import AuditLog
from gateway.security.passwords import PasswordVerifier
from gateway.security.throttle import Attempt, LoginThrottle
from gateway.security.tickets import new_ticket, parse_ticket
from gateway.security.tokens import LoginRefused, token_id
from gateway.security.totp_sealing import KeyRing, SealError

log = logging.getLogger("sipgw.security")

CHALLENGE_TTL = 300  # seconds between the password and the code
RECOVERY_CODES = 10
# Recovery codes: 10 letters and digits that cannot be mistaken for one another when
# read off paper (no 0/o, 1/l/i), as "xxxxx-xxxxx": 31**10, about 2**49.5.
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
_RECOVERY_LENGTH = 10
ChallengeKind = Literal["code", "enrol"]
Need = Literal["code", "enrol"] | None

# Accept a code's time step only if it is after the last one accepted for this user.
# KEYS[1] = {t}:totp-steps, ARGV = username, step. 1: accepted, 0: replayed.
_ACCEPT_STEP = """
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
local step = tonumber(ARGV[2])
if step <= last then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# Replace a record only if it is still the one read (a reset or a confirmation in
# between wins). KEYS[1] = {t}:totp, ARGV = username, the JSON read, the new JSON.
_REPLACE_RECORD = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


class SecondFactorError(ValueError):
    """A request about a second factor that cannot be done (the message says why)."""


@dataclass(frozen=True, repr=False)
class Enrolment:
    """A user's TOTP record in ``{t}:totp``: a secret pending confirmation or confirmed,
    or no secret at all after an admin's reset (the user must enrol)."""

    sealed: str = ""  # the base32 secret sealed (totp_sealing.py); "" after a reset
    confirmed: bool = False
    created_at: float = 0.0
    reset: bool = False
    # The base32 secret of a record written before sealing existed ("secret" in its
    # JSON), or of one written with no key to seal with; never written by to_json.
    clear: str = ""
    stored: str = field(default="", compare=False)  # the JSON as read from Redis

    def __repr__(self) -> str:
        return f"Enrolment(confirmed={self.confirmed}, reset={self.reset})"

    @property
    def has_secret(self) -> bool:
        return bool(self.sealed or self.clear)

    def to_json(self) -> str:
        data: dict[str, object] = {"sealed": self.sealed, "confirmed": self.confirmed,
                                   "created_at": self.created_at, "reset": self.reset}  # fmt: skip
        if self.clear:
            data["secret"] = self.clear
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Enrolment:
        data = json.loads(text)
        return cls(
            sealed=str(data.get("sealed") or ""),
            confirmed=data.get("confirmed") is True,
            created_at=float(data.get("created_at") or 0.0),
            reset=data.get("reset") is True,
            clear=str(data.get("secret") or ""),
            stored=text,
        )


@dataclass(frozen=True)
class Challenge:
    """The answer to a right password that owes a second factor: ``bearer`` (shown to
    the client once) stands for the rest of the login for ``CHALLENGE_TTL`` seconds."""

    bearer: str = field(repr=False)
    kind: ChallengeKind
    tenant: str
    user: str
    expires_at: float

    @property
    def ref(self) -> str:
        parsed = parse_ticket(self.bearer)
        return "" if parsed is None else token_id(parsed[1])


@dataclass(frozen=True)
class NewEnrolment:
    """What enrolment shows once: the secret, as text and as the otpauth:// URI."""

    secret: str = field(repr=False)
    uri: str = field(repr=False)


@dataclass(frozen=True)
class Passed:
    """A second step that succeeded: the login may have its token."""

    tenant: str
    user: str
    method: Literal["totp", "recovery code", "enrolment"]
    recovery_codes: tuple[str, ...] = field(default=(), repr=False)


def new_recovery_code() -> str:
    chars = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(_RECOVERY_LENGTH))
    return f"{chars[:5]}-{chars[5:]}"


def normalize_recovery_code(text: str) -> str | None:
    """A recovery code as typed (any case, spaces or dashes anywhere) in its stored
    form, or None when it cannot be one (refused without an Argon2 check)."""
    plain = "".join(c for c in text.lower() if c not in " -")
    if len(plain) != _RECOVERY_LENGTH or any(c not in _RECOVERY_ALPHABET for c in plain):
        return None
    return f"{plain[:5]}-{plain[5:]}"


class SecondFactors:
    """TOTP records, recovery codes and login challenges of every tenant, in Redis."""

    def __init__(
        self,
        redis: Redis,
        *,
        audit: AuditLog,
        throttle: LoginThrottle,
        verifier: PasswordVerifier,
        keyring: KeyRing,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._audit = audit
        self._throttle = throttle
        self._verifier = verifier
        self._keyring = keyring
        self._clock = clock
        self._accept_step = redis.register_script(_ACCEPT_STEP)
        self._replace_record = redis.register_script(_REPLACE_RECORD)

    # -- records ---------------------------------------------------------------------------
    async def enrolment(self, tenant: str, user: str) -> Enrolment | None:
        text = await self._redis.hget(keys.totp(tenant), user)
        return None if text is None else Enrolment.from_json(str(text))

    async def recovery_codes_left(self, tenant: str, user: str) -> int:
        fields = [f"{user}:{n}" for n in range(RECOVERY_CODES)]
        found = await self._redis.hmget(keys.totp_recovery(tenant), fields)
        return sum(1 for value in found if value is not None)

    async def needed(self, tenant: str, user: str, role: str, policy: SecondFactor) -> Need:
        """What a login with a right password still owes: a code, an enrolment, or
        nothing (None)."""
        if not policy.enabled:
            return None
        record = await self.enrolment(tenant, user)
        if record is not None and record.confirmed:
            return "code"
        if (record is not None and record.reset) or policy.required_for(role):
            return "enrol"
        return None

    async def begin(self, tenant: str, user: str, *, issuer: str, source: str) -> NewEnrolment:
        """A new secret for ``user``, pending until ``confirm``; replaces a pending one.
        A confirmed second factor is never replaced here (an admin resets it first)."""
        record = await self.enrolment(tenant, user)
        if record is not None and record.confirmed:
            raise SecondFactorError("a second factor is enrolled already: an admin can reset it")
        if not self._keyring.can_seal:
            raise SecondFactorError(
                "this gateway has no key to store second factors with: an operator sets "
                "[security] totp_key"
            )
        key = totp.new_secret()
        secret = totp.to_base32(key)
        pending = Enrolment(
            sealed=self._keyring.seal(secret, tenant=tenant, user=user),
            created_at=self._clock(), reset=record is not None and record.reset,
        )  # fmt: skip
        await self._redis.hset(keys.totp(tenant), user, pending.to_json())
        await self._audit.record(tenant, "totp.enrol", "ok", user=user, source=source)
        uri = totp.provisioning_uri(key, issuer=issuer, account=f"{user}@{tenant}")
        return NewEnrolment(secret=secret, uri=uri)

    async def confirm(
        self, tenant: str, user: str, code: str, *, source: str, ref: str = ""
    ) -> Passed | LoginRefused:
        """Check the first code of a pending enrolment (counted by the throttle like a
        login's); right, the enrolment counts from now on, and the ten recovery codes
        are made, shown once (``Passed.recovery_codes``)."""
        made: list[str] = []

        async def step() -> str:
            record = await self.enrolment(tenant, user)
            if record is None or record.confirmed or not record.has_secret:
                return "not_pending"
            secret = self._secret(tenant, user, record)
            if secret is None:
                return "unreadable_secret"
            result = await self._step_accepted(tenant, user, secret, code)
            if result != "ok":
                return result
            made.extend(new_recovery_code() for _ in range(RECOVERY_CODES))
            await self._confirmed(tenant, user, secret, made)
            return "ok"

        refused = await self._counted(tenant, user, source, "totp.confirm", ref, step)
        if refused is not None:
            return refused
        await self._audit.record(tenant, "totp.confirm", "ok", user=user, source=source, ref=ref)
        return Passed(tenant, user, "enrolment", tuple(made))

    async def new_recovery_codes(
        self, tenant: str, user: str, code: str, *, source: str, ref: str = ""
    ) -> tuple[str, ...] | LoginRefused:
        """Ten new recovery codes for a confirmed enrolment, in exchange for a current
        code (counted by the throttle like a login's, refused if already used): every
        old recovery code stops working; the new ones are shown once."""
        made: list[str] = []

        async def step() -> str:
            result = await self._current_code(tenant, user, code)
            if result != "ok":
                return result
            made.extend(new_recovery_code() for _ in range(RECOVERY_CODES))
            mapping = await self._recovery_hashes(user, made)
            await self._redis.hset(keys.totp_recovery(tenant), mapping=mapping)
            return "ok"

        event = "totp.recovery_codes"
        refused = await self._counted(tenant, user, source, event, ref, step)
        if refused is not None:
            return refused
        await self._audit.record(tenant, event, "ok", user=user, source=source, ref=ref)
        return tuple(made)

    async def _current_code(self, tenant: str, user: str, code: str) -> str:
        """ "ok" when ``code`` is a current code of the user's confirmed second factor
        (its time step then used up), else why not."""
        record = await self.enrolment(tenant, user)
        if record is None or not record.confirmed:
            return "not_enrolled"
        secret = self._secret(tenant, user, record)
        if secret is None:
            return "unreadable_secret"
        return await self._step_accepted(tenant, user, secret, code)

    async def _confirmed(self, tenant: str, user: str, secret: str, codes: list[str]) -> None:
        confirmed = self._stored(tenant, user, secret, confirmed=True)
        mapping = await self._recovery_hashes(user, codes)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.totp(tenant), user, confirmed.to_json())
            pipe.hset(keys.totp_recovery(tenant), mapping=mapping)
            await pipe.execute()

    async def _recovery_hashes(self, user: str, codes: list[str]) -> dict[FieldT, EncodableT]:
        """The recovery-code hash fields of ``user`` (``<user>:<n>``, n < RECOVERY_CODES):
        writing all of them replaces every earlier code, used or not."""
        hashes = [await self._verifier.hash(c) for c in codes]
        return {f"{user}:{n}": hashed for n, hashed in enumerate(hashes)}

    # -- sealing (totp_sealing.py) ----------------------------------------------------------
    def _stored(self, tenant: str, user: str, secret: str, *, confirmed: bool) -> Enrolment:
        """The record of ``secret`` as it is written: sealed with the current key (in
        clear only on a node with no key at all, for a secret that was so already)."""
        if not self._keyring.can_seal:
            return Enrolment(clear=secret, confirmed=confirmed, created_at=self._clock())
        sealed = self._keyring.seal(secret, tenant=tenant, user=user)
        return Enrolment(sealed=sealed, confirmed=confirmed, created_at=self._clock())

    def _secret(self, tenant: str, user: str, record: Enrolment) -> str | None:
        """The record's base32 secret; None, logged (never the secret), when it does
        not open: every code of the user is then refused."""
        if not record.sealed:
            return record.clear
        try:
            return self._keyring.unseal(record.sealed, tenant=tenant, user=user)[0]
        except SealError as err:
            log.warning(
                "the TOTP secret of %s in tenant %s cannot be read, its codes are refused "
                "(a wrong [security] totp_key, or the record was altered): %s", user, tenant, err,
            )  # fmt: skip
            return None

    def _outdated(self, tenant: str, user: str, record: Enrolment) -> str | None:
        """The secret of a record to seal again with the current key (in clear, or
        sealed with an older key), else None."""
        if not record.has_secret or not self._keyring.can_seal:
            return None
        if not record.sealed:
            return record.clear
        try:
            secret, current = self._keyring.unseal(record.sealed, tenant=tenant, user=user)
        except SealError:
            return None  # refused at its use, and logged there
        return None if current else secret

    async def _reseal(self, tenant: str, user: str, record: Enrolment) -> bool:
        """Seal an outdated record again with the current key, unless it changed since
        it was read; True when it was rewritten."""
        secret = self._outdated(tenant, user, record)
        if secret is None:
            return False
        fresh = self._stored(tenant, user, secret, confirmed=record.confirmed)
        kept = Enrolment(sealed=fresh.sealed, confirmed=record.confirmed,
                         created_at=record.created_at, reset=record.reset)  # fmt: skip
        args = [user, record.stored, kept.to_json()]
        return bool(await self._replace_record(keys=[keys.totp(tenant)], args=args))

    async def seal_stored(self, tenants: list[str]) -> int:
        """Seal with the current key every secret of ``tenants`` stored in clear or with
        an older key (a node's start: a user need not log in for it); how many."""
        sealed = 0
        if not self._keyring.can_seal:
            return sealed
        for tenant in tenants:
            records = await self._redis.hgetall(keys.totp(tenant))
            for user, text in records.items():
                record = Enrolment.from_json(str(text))
                sealed += await self._reseal(tenant, str(user), record)
        return sealed

    async def _step_accepted(self, tenant: str, user: str, secret: str, code: str) -> str:
        """The answer "ok" when ``code`` is of a time step within the window and after the last one
        accepted for the user (which it becomes), else "bad_code" or "replayed"."""
        step = totp.matching_step(totp.from_base32(secret), code.strip(), self._clock())
        if step is None:
            return "bad_code"
        accepted = await self._accept_step(keys=[keys.totp_steps(tenant)], args=[user, step])
        return "ok" if accepted else "replayed"

    async def remove(self, tenant: str, user: str) -> bool:
        """Forget everything of the user's second factor; True if there was a record."""
        fields = [f"{user}:{n}" for n in range(RECOVERY_CODES)]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.totp(tenant), user)
            pipe.hdel(keys.totp_steps(tenant), user)
            pipe.hdel(keys.totp_recovery(tenant), *fields)
            removed, *_ = await pipe.execute()
        return bool(removed)

    async def turn_off(
        self, tenant: str, user: str, code: str, *, source: str, ref: str = ""
    ) -> LoginRefused | None:
        """The user's own switch-off, for a current code (counted by the throttle like a
        login's, refused if already used): the second factor is forgotten. Whether the
        tenant's policy allows it is the caller's question (a required one may not)."""

        async def step() -> str:
            result = await self._current_code(tenant, user, code)
            if result == "ok":
                await self.remove(tenant, user)
            return result

        event = "totp.turn_off"
        refused = await self._counted(tenant, user, source, event, ref, step)
        if refused is None:
            await self._audit.record(tenant, event, "ok", user=user, source=source, ref=ref)
        return refused

    async def disable(self, tenant: str, user: str, *, source: str) -> bool:
        removed = await self.remove(tenant, user)
        result = "ok" if removed else "not_enrolled"
        await self._audit.record(tenant, "totp.disable", result, user=user, source=source)
        return removed

    async def reset(self, tenant: str, user: str, *, source: str, detail: str = "") -> None:
        """Forget the second factor, and oblige the user to enrol again at the next
        login (whatever the policy, unless it is off)."""
        await self.remove(tenant, user)
        marker = Enrolment(created_at=self._clock(), reset=True)
        await self._redis.hset(keys.totp(tenant), user, marker.to_json())
        await self._audit.record(
            tenant, "totp.reset", "ok", user=user, source=source, detail=detail
        )

    # -- challenges ------------------------------------------------------------------------
    async def challenge(self, tenant: str, user: str, kind: ChallengeKind) -> Challenge:
        bearer = new_ticket(tenant)
        parsed = parse_ticket(bearer)
        assert parsed is not None
        key = keys.login_challenge(tenant, parsed[1])
        now = self._clock()
        data = json.dumps({"user": user, "kind": kind}, separators=(",", ":"))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(key, data, ex=CHALLENGE_TTL)
            tenant_keys.index_in(pipe, tenant, key, now + CHALLENGE_TTL, now)
            await pipe.execute()
        return Challenge(bearer, kind, tenant, user, now + CHALLENGE_TTL)

    async def peek(self, bearer: str, kind: ChallengeKind) -> Challenge | None:
        """The challenge ``bearer`` of ``kind``, left in place (enrolment reads it, the
        confirmation takes it); None if it is not one now."""
        return await self._challenge(bearer, kind, take=False)

    async def take(self, bearer: str, kind: ChallengeKind) -> Challenge | None:
        """The challenge ``bearer`` of ``kind``, used up (by any attempt, right or wrong)."""
        return await self._challenge(bearer, kind, take=True)

    async def _challenge(self, bearer: str, kind: ChallengeKind, *, take: bool) -> Challenge | None:
        parsed = parse_ticket(bearer)
        if parsed is None:
            return None
        tenant, digest = parsed
        key = keys.login_challenge(tenant, digest)
        text = await (self._redis.getdel(key) if take else self._redis.get(key))
        if text is None:
            return None
        try:
            data = json.loads(text)
            user, found_kind = str(data["user"]), data["kind"]
        except (ValueError, KeyError, TypeError):
            return None
        if found_kind != kind:
            return None
        return Challenge(bearer, kind, tenant, user, self._clock() + CHALLENGE_TTL)

    # -- the second step of a login ----------------------------------------------------------
    async def check(
        self,
        challenge: Challenge,
        *,
        code: str | None,
        recovery_code: str | None,
        source: str,
    ) -> Passed | LoginRefused:
        """The code (or a recovery code) of a taken "code" challenge, counted by the
        throttle with the password step's attempts. A success is audited by the caller,
        with the token it issues."""
        tenant, user = challenge.tenant, challenge.user
        event = "login.totp" if code is not None else "login.recovery"

        async def step() -> str:
            return await self._second_step(tenant, user, code, recovery_code)

        refused = await self._counted(tenant, user, source, event, challenge.ref, step)
        if refused is not None:
            return refused
        return Passed(tenant, user, "totp" if code is not None else "recovery code")

    async def _counted(
        self,
        tenant: str,
        user: str,
        source: str,
        event: str,
        ref: str,
        step: Callable[[], Awaitable[str]],
    ) -> LoginRefused | None:
        """Run ``step`` as one attempt of the login throttle (throttle.py: the counters
        of the password step); None when it answered "ok", else the refusal, audited."""
        gate = await self._throttle.acquire(tenant, user, source)
        if not isinstance(gate, Attempt):
            await self._audit.record(
                tenant, event, "throttled", user=user, source=source, ref=ref,
                detail=f"{gate.scope} locked for {math.ceil(gate.retry_after)} s",
            )  # fmt: skip
            return LoginRefused("throttled", gate.retry_after)
        result = await step()
        if result != "ok":
            await self._throttle.failed(gate)
            await self._audit.record(tenant, event, result, user=user, source=source, ref=ref)
            return LoginRefused("invalid")
        await self._throttle.succeeded(gate)
        return None

    async def _second_step(
        self, tenant: str, user: str, code: str | None, recovery_code: str | None
    ) -> str:
        record = await self.enrolment(tenant, user)
        if record is None or not record.confirmed:
            return "not_enrolled"  # disabled or reset since the password step
        result = await self._code_or_recovery_code(tenant, user, record, code, recovery_code)
        if result == "ok":
            await self._reseal(tenant, user, record)
        return result

    async def _code_or_recovery_code(
        self, tenant: str, user: str, record: Enrolment, code: str | None, recovery_code: str | None
    ) -> str:
        if code is not None:
            secret = self._secret(tenant, user, record)
            if secret is None:
                return "unreadable_secret"
            return await self._step_accepted(tenant, user, secret, code)
        normalized = None if recovery_code is None else normalize_recovery_code(recovery_code)
        if normalized is None:
            return "bad_code"
        return "ok" if await self._use_recovery_code(tenant, user, normalized) else "bad_code"

    async def _use_recovery_code(self, tenant: str, user: str, code: str) -> bool:
        """Find the code among the user's hashes and delete its field: True only for the
        one caller whose HDEL removed it."""
        fields = [f"{user}:{n}" for n in range(RECOVERY_CODES)]
        hashes = await self._redis.hmget(keys.totp_recovery(tenant), fields)
        for name, hashed in zip(fields, hashes, strict=True):
            if hashed is not None and await self._verifier.verify(str(hashed), code):
                return bool(await self._redis.hdel(keys.totp_recovery(tenant), name))
        return False
