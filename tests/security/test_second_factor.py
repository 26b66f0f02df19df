"""The second factor of API logins (TOTP, issue #15 part 3) against a real Redis, with
the directory's clock in the test's hand: enrolment, the two-step login, wrong and
replayed codes, recovery codes used twice, each tenant policy, an admin's disable and
reset, the audit of every step, and the attacks (codes guessed, challenges replayed or
forged, a code without a password)."""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
import redis.asyncio as aioredis

from gateway.cli import admin as cli_admin
from gateway.config import load_settings
from gateway.security import keys, totp
from gateway.security.directory import Directory, DirectoryError
from gateway.security.second_factor import Challenge
from gateway.security.tokens import LoginRefused, Token
from tests.security.test_api_login import every_value

PASSWORD = "Api-pass-201!"
ADMIN_PASSWORD = "Api-pass-209!"
SOURCE = "192.0.2.7"
# What the TOTP secrets are sealed with ([security] totp_key, totp_sealing.py).
TOTP_KEY = "test-totp-key-0123456789abcdefghijklmn"
SECURITY = f'[security]\ntotp_key = "{TOTP_KEY}"\n'
T0 = 1_800_000_000.0  # a time step's start


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def tenant_block(tenant: str, policy: str | None) -> str:
    totp_table = "" if policy is None else f'[tenants.totp]\npolicy = "{policy}"\n'
    return (
        f'[[tenants]]\nid = "{tenant}"\nname = "{tenant}"\ndomains = ["{tenant}.example"]\n'
        f"{totp_table}"
        '[[tenants.users]]\nusername = "alice"\nextension = "201"\n'
        f'password = "Sip-pass-201!"\napi_password = "{PASSWORD}"\n'
        '[[tenants.users]]\nusername = "root"\nextension = "209"\nrole = "admin"\n'
        f'password = "Sip-pass-209!"\napi_password = "{ADMIN_PASSWORD}"\n'
    )


@pytest.fixture
def url(redis_server: str) -> str:
    return redis_server.rsplit("/", 1)[0] + "/12"  # this module's database


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def directory(tmp_path: Path, url: str, clock: Clock) -> AsyncIterator[Directory]:
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    config = tmp_path / "sipgw.toml"
    config.write_text(
        SECURITY
        + tenant_block("red", None)  # optional, the default
        + tenant_block("admins", "admins")
        + tenant_block("all", "everyone")
        + tenant_block("none", "off")
    )
    settings = load_settings(config, env={"SIPGW_REDIS__URL": url})
    directory = Directory(url, settings, clock=clock)
    await directory.start()
    yield directory
    await directory.stop()


async def enrolled(directory: Directory, tenant: str = "red", user: str = "alice") -> bytes:
    """Enrol ``user`` and confirm with the code of the step before now (so that now's
    code is still free for a login); the secret."""
    enrolment = await directory.enrol_second_factor(tenant, user, source="test")
    key = totp.from_base32(enrolment.secret)
    at = directory.second_factors._clock() - totp.PERIOD
    codes = await directory.confirm_second_factor(tenant, user, totp.totp(key, at), source="test")
    assert isinstance(codes, tuple) and len(codes) == 10
    return key


async def challenged(directory: Directory, tenant: str = "red", user: str = "alice") -> str:
    password = ADMIN_PASSWORD if user == "root" else PASSWORD
    outcome = await directory.login(tenant, user, password, SOURCE)
    assert isinstance(outcome, Challenge), outcome
    return outcome.bearer


async def audited(directory: Directory, tenant: str = "red") -> list[tuple[str, str]]:
    return [(e.event, e.result) for e in reversed(await directory.audit_entries(tenant))]


# --- enrolment and the two-step login -------------------------------------------------------


async def test_enrol_then_log_in_with_password_and_code(directory: Directory, clock: Clock) -> None:
    # Before enrolment (optional policy) the password alone gives a token.
    assert isinstance(await directory.login("red", "alice", PASSWORD, SOURCE), Token)
    enrolment = await directory.enrol_second_factor("red", "alice", source="test")
    assert enrolment.uri.startswith("otpauth://totp/sipgw:alice@red?secret=")
    key = totp.from_base32(enrolment.secret)
    # Pending: a login still needs the password only, until a first code confirms it.
    assert isinstance(await directory.login("red", "alice", PASSWORD, SOURCE), Token)
    wrong = await directory.confirm_second_factor("red", "alice", "000000", source="test")
    assert wrong == LoginRefused("invalid") or totp.totp(key, clock.now) == "000000"
    codes = await directory.confirm_second_factor(
        "red", "alice", totp.totp(key, clock.now), source="test"
    )
    assert isinstance(codes, tuple) and len(set(codes)) == 10
    # Enrolled: the password gives a challenge, not a token...
    challenge = await directory.login("red", "alice", PASSWORD, SOURCE)
    assert isinstance(challenge, Challenge) and challenge.kind == "code"
    assert challenge.bearer.startswith("red.") and await directory.token(challenge.bearer) is None
    # ...and the next step's code (a phone's clock a little ahead) gives the token.
    token = await directory.complete_login(
        challenge.bearer, code=totp.totp(key, clock.now + 30), recovery_code=None, source=SOURCE
    )
    assert isinstance(token, Token) and token.user == "alice"
    assert await directory.token(token.bearer) is not None
    # A second enrolment over a confirmed one is refused: an admin resets it first.
    with pytest.raises(DirectoryError, match="enrolled already"):
        await directory.enrol_second_factor("red", "alice", source="test")


async def test_a_wrong_code_fails_and_uses_up_the_challenge(
    directory: Directory, clock: Clock
) -> None:
    key = await enrolled(directory)
    challenge = await challenged(directory)
    right = totp.totp(key, clock.now)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for code in (wrong, "12345", "abcdef", totp.totp(key, clock.now - 120)):
        refused = await directory.complete_login(
            challenge, code=code, recovery_code=None, source=SOURCE
        )
        assert refused == LoginRefused("invalid")
    # The challenge went with the first attempt: the right code is too late for it.
    late = await directory.complete_login(challenge, code=right, recovery_code=None, source=SOURCE)
    assert late == LoginRefused("invalid")
    fresh = await challenged(directory)
    token = await directory.complete_login(fresh, code=right, recovery_code=None, source=SOURCE)
    assert isinstance(token, Token)


async def test_a_code_is_accepted_once_even_within_its_window(
    directory: Directory, clock: Clock
) -> None:
    key = await enrolled(directory)
    code = totp.totp(key, clock.now)
    first = await directory.complete_login(
        await challenged(directory), code=code, recovery_code=None, source=SOURCE
    )
    assert isinstance(first, Token)
    clock.now += 10  # the same step: the code is still "valid" by the clock
    again = await directory.complete_login(
        await challenged(directory), code=code, recovery_code=None, source=SOURCE
    )
    assert again == LoginRefused("invalid")
    # An older step's code, within the window too, is no better.
    older = totp.totp(key, clock.now - 30)
    assert await directory.complete_login(
        await challenged(directory), code=older, recovery_code=None, source=SOURCE
    ) == LoginRefused("invalid")
    # Two logins racing with the next step's code, as on two nodes: exactly one wins.
    clock.now += 30
    racing = totp.totp(key, clock.now)
    challenges = [await challenged(directory) for _ in range(2)]
    outcomes = await asyncio.gather(
        *(
            directory.complete_login(c, code=racing, recovery_code=None, source=SOURCE)
            for c in challenges
        )
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["LoginRefused", "Token"]
    results = [r for e, r in await audited(directory) if e == "login.totp"]
    assert results.count("replayed") == 3, results


async def test_a_recovery_code_works_once(directory: Directory) -> None:
    enrolment = await directory.enrol_second_factor("red", "alice", source="test")
    key = totp.from_base32(enrolment.secret)
    codes = await directory.confirm_second_factor(
        "red", "alice", totp.totp(key, directory.second_factors._clock()), source="test"
    )
    assert isinstance(codes, tuple)
    typed = codes[3].upper().replace("-", " ")  # read off paper, typed loosely
    token = await directory.complete_login(
        await challenged(directory), code=None, recovery_code=typed, source=SOURCE
    )
    assert isinstance(token, Token)
    assert await directory.second_factors.recovery_codes_left("red", "alice") == 9
    again = await directory.complete_login(
        await challenged(directory), code=None, recovery_code=codes[3], source=SOURCE
    )
    assert again == LoginRefused("invalid")
    # Two logins racing with one code: one token.
    challenges = [await challenged(directory) for _ in range(2)]
    outcomes = await asyncio.gather(
        *(
            directory.complete_login(c, code=None, recovery_code=codes[5], source=SOURCE)
            for c in challenges
        )
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["LoginRefused", "Token"]
    entries = await directory.audit_entries("red")
    recovery = [(e.result, e.detail) for e in entries if e.event == "login.recovery"]
    assert ("ok", "9 recovery codes left") in recovery
    assert [r for r, _ in recovery].count("bad_code") == 2


# --- the policy -----------------------------------------------------------------------------


async def test_each_policy_is_enforced(directory: Directory, clock: Clock) -> None:
    # "admins": a user logs in with the password; an admin must enrol first.
    assert isinstance(await directory.login("admins", "alice", PASSWORD, SOURCE), Token)
    admin = await directory.login("admins", "root", ADMIN_PASSWORD, SOURCE)
    assert isinstance(admin, Challenge) and admin.kind == "enrol"
    # An enrol challenge is no code challenge: it gives no token by a code.
    assert await directory.complete_login(
        admin.bearer, code="123456", recovery_code=None, source=SOURCE
    ) == LoginRefused("invalid")
    admin = await directory.login("admins", "root", ADMIN_PASSWORD, SOURCE)
    assert isinstance(admin, Challenge)
    enrolment = await directory.enrol_with_challenge(admin.bearer, source=SOURCE)
    assert enrolment is not None
    key = totp.from_base32(enrolment.secret)
    done = await directory.confirm_with_challenge(
        admin.bearer, totp.totp(key, clock.now), source=SOURCE
    )
    assert not isinstance(done, LoginRefused)
    token, codes = done
    assert token.role == "admin" and len(codes) == 10
    # The enrol challenge is gone with its confirmation.
    assert await directory.enrol_with_challenge(admin.bearer, source=SOURCE) is None

    # "everyone": a plain user must enrol too.
    everyone = await directory.login("all", "alice", PASSWORD, SOURCE)
    assert isinstance(everyone, Challenge) and everyone.kind == "enrol"

    # "off": no enrolment, and an enrolment made while it was on is ignored.
    with pytest.raises(DirectoryError, match="policy off"):
        await directory.enrol_second_factor("none", "alice", source="test")
    assert isinstance(await directory.login("none", "alice", PASSWORD, SOURCE), Token)


async def test_an_admin_disables_and_resets_a_second_factor(
    directory: Directory, clock: Clock, url: str
) -> None:
    await enrolled(directory)
    assert await directory.disable_second_factor("red", "alice", source="cli:op@host")
    assert isinstance(await directory.login("red", "alice", PASSWORD, SOURCE), Token)
    assert not await directory.disable_second_factor("red", "alice", source="cli:op@host")

    key = await enrolled(directory)
    clock.now += 60
    token = await directory.complete_login(
        await challenged(directory), code=totp.totp(key, clock.now), recovery_code=None,
        source=SOURCE,
    )  # fmt: skip
    assert isinstance(token, Token)
    revoked = await directory.reset_second_factor("red", "alice", source="cli:op@host")
    assert revoked >= 1 and await directory.token(token.bearer) is None
    # Reset: even under "optional" the user must enrol again at the next login.
    again = await directory.login("red", "alice", PASSWORD, SOURCE)
    assert isinstance(again, Challenge) and again.kind == "enrol"
    entries = await directory.audit_entries("red")
    actions = [(e.event, e.result, e.source) for e in entries if e.event.startswith("totp.")]
    assert ("totp.disable", "ok", "cli:op@host") in actions
    assert ("totp.disable", "not_enrolled", "cli:op@host") in actions
    assert ("totp.reset", "ok", "cli:op@host") in actions


async def test_removing_the_user_removes_the_secret(directory: Directory, url: str) -> None:
    key = await enrolled(directory)
    secret = totp.to_base32(key)
    client = aioredis.Redis.from_url(url)
    try:
        assert await client.hexists(keys.totp("red"), "alice")
        assert secret not in await every_value(client)  # sealed (test_totp_sealing.py)
        await directory.add_user("red", "bob", PASSWORD, source="test")
        await enrolled(directory, user="bob")
        assert await directory.remove_user("red", "bob", source="test")
        assert not await client.hexists(keys.totp("red"), "bob")
        recovery = [bytes(f) for f in await client.hkeys(keys.totp_recovery("red"))]
        assert recovery and not [f for f in recovery if f.startswith(b"bob:")]
        assert not await client.hexists(keys.totp_steps("red"), "bob")
    finally:
        await client.aclose()


# --- the audit ------------------------------------------------------------------------------


async def test_every_step_is_audited_and_no_secret_is_logged(
    directory: Directory, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    enrolment = await directory.enrol_second_factor("red", "alice", source="test")
    key = totp.from_base32(enrolment.secret)
    first = totp.totp(key, clock.now)
    codes = await directory.confirm_second_factor("red", "alice", first, source="test")
    assert isinstance(codes, tuple)
    challenge = await challenged(directory)
    await directory.complete_login(challenge, code="000001", recovery_code=None, source=SOURCE)
    clock.now += 30
    challenge = await challenged(directory)
    token = await directory.complete_login(
        challenge, code=totp.totp(key, clock.now), recovery_code=None, source=SOURCE
    )
    assert isinstance(token, Token)
    assert await audited(directory) == [
        ("totp.enrol", "ok"),
        ("totp.confirm", "ok"),
        ("login", "second_factor"),
        ("login.totp", "bad_code"),
        ("login", "second_factor"),
        ("login.totp", "ok"),
    ]
    newest = (await directory.audit_entries("red"))[0]
    assert newest.ref == token.principal.token_id
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in (enrolment.secret, *codes, challenge, token.bearer):
        assert secret not in logged
    assert enrolment.secret not in repr(enrolment)


# --- attacks --------------------------------------------------------------------------------


async def test_guessing_codes_is_throttled_with_the_password_step(
    directory: Directory, clock: Clock
) -> None:
    key = await enrolled(directory)
    right = totp.totp(key, clock.now)
    # Each guess needs a fresh challenge (the right password each time): the password
    # steps do not wash the failed codes away, and five failures lock the user.
    kept = ""
    for guess in range(5):
        if guess == 4:
            kept = await challenged(directory)  # got before the lock
        wrong = f"{(int(right) + 1 + guess) % 1_000_000:06d}"
        refused = await directory.complete_login(
            await challenged(directory), code=wrong, recovery_code=None, source=SOURCE
        )
        assert refused == LoginRefused("invalid")
    locked = await directory.login("red", "alice", PASSWORD, SOURCE)
    assert isinstance(locked, LoginRefused) and locked.reason == "throttled"
    # The lock holds for the code step as well: the right code, too late.
    late = await directory.complete_login(kept, code=right, recovery_code=None, source=SOURCE)
    assert isinstance(late, LoginRefused) and late.reason == "throttled"
    assert late.retry_after > 200
    entries = [(e.event, e.result) for e in await directory.audit_entries("red")]
    assert ("login", "throttled") in entries and ("login.totp", "throttled") in entries


async def test_a_challenge_opens_nothing_but_its_own_step(
    directory: Directory, clock: Clock
) -> None:
    key = await enrolled(directory)
    challenge = await challenged(directory)
    code = totp.totp(key, clock.now)
    # Not a bearer token, not another tenant's, not forged.
    assert await directory.token(challenge) is None
    forged = "red." + "A" * 43
    assert await directory.complete_login(
        forged, code=code, recovery_code=None, source=SOURCE
    ) == LoginRefused("invalid")
    relabelled = "admins." + challenge.split(".", 1)[1]
    assert await directory.complete_login(
        relabelled, code=code, recovery_code=None, source=SOURCE
    ) == LoginRefused("invalid")
    # Used once, it is gone: replaying the request that worked gives nothing.
    token = await directory.complete_login(challenge, code=code, recovery_code=None, source=SOURCE)
    assert isinstance(token, Token)
    clock.now += 30
    replay = await directory.complete_login(
        challenge, code=totp.totp(key, clock.now), recovery_code=None, source=SOURCE
    )
    assert replay == LoginRefused("invalid")
    results = [r for e, r in await audited(directory) if e == "login.totp"]
    assert results.count("bad_challenge") == 2  # forged, replayed (relabelled: not red's)


async def test_a_code_without_a_password_step_gives_nothing(
    directory: Directory, clock: Clock
) -> None:
    key = await enrolled(directory)
    code = totp.totp(key, clock.now)
    for challenge in ("", "red", "red.", code, f"red.{code}"):
        outcome = await directory.complete_login(
            challenge, code=code, recovery_code=None, source=SOURCE
        )
        assert outcome == LoginRefused("invalid")
    # A wrong password gives no challenge either, only the usual refusal.
    assert await directory.login("red", "alice", "Wrong-pass-1!", SOURCE) == LoginRefused("invalid")
    # The code was never spent: the real login still takes it.
    token = await directory.complete_login(
        await challenged(directory), code=code, recovery_code=None, source=SOURCE
    )
    assert isinstance(token, Token)


async def test_an_expired_challenge_is_refused(directory: Directory, url: str) -> None:
    await enrolled(directory)
    challenge = await challenged(directory)
    client = aioredis.Redis.from_url(url)
    try:
        key = next(k for k in await client.keys("{red}:login-challenge:*") if isinstance(k, bytes))
        assert 0 < await client.ttl(key) <= 300
        await client.delete(key)  # what its expiry does
    finally:
        await client.aclose()
    assert await directory.complete_login(
        challenge, code="123456", recovery_code=None, source=SOURCE
    ) == LoginRefused("invalid")


# --- the CLI --------------------------------------------------------------------------------


class AppReadingTheTerminal(io.StringIO):
    """Standard input of `sipgw user totp enrol`: the code an app shows for the URI the
    command printed (read off its output, as a person scans the QR code)."""

    def __init__(self, out: io.StringIO) -> None:
        super().__init__()
        self.out = out

    def readline(self, size: int | None = -1) -> str:
        uri = re.search(r"otpauth://\S+", self.out.getvalue())
        assert uri is not None, self.out.getvalue()
        secret = parse_qs(urlsplit(uri[0]).query)["secret"][0]
        return totp.totp(totp.from_base32(secret), time.time()) + "\n"


def sipgw_user(argv: list[str], stdin: str = "", app: bool = False) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="sipgw")
    cli_admin.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdin", AppReadingTheTerminal(out) if app else io.StringIO(stdin))
        mp.setattr("sys.stdout", out)
        mp.setattr("sys.stderr", err)
        code = args.func(args)
    return code, out.getvalue(), err.getvalue()


def test_the_user_totp_commands(tmp_path: Path, url: str) -> None:
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    config = tmp_path / "cli.toml"
    config.write_text(f'{SECURITY}[redis]\nurl = "{url}"\n')
    where = ["--config", str(config)]
    assert sipgw_user(["tenant", "create", "cli-2fa", "--name", "CLI", *where])[0] == 0
    code, _, _ = sipgw_user(["user", "add", "--tenant", "cli-2fa", "agent", *where], PASSWORD)
    assert code == 0

    code, out, err = sipgw_user(
        ["user", "totp", "enrol", "agent", "--tenant", "cli-2fa", *where], app=True
    )
    assert code == 0, err
    assert "otpauth://totp/sipgw:agent@cli-2fa?secret=" in out
    assert "█" in out or "▀" in out  # the QR code, drawn for a terminal
    codes = re.findall(r"^  ([a-z0-9]{5}-[a-z0-9]{5})$", out, re.MULTILINE)
    assert len(set(codes)) == 10
    code, out, _ = sipgw_user(["user", "totp", "status", "agent", "--tenant", "cli-2fa", *where])
    assert "second factor enrolled; 10 recovery codes left; tenant policy optional" in out

    code, out, _ = sipgw_user(["user", "totp", "reset", "agent", "--tenant", "cli-2fa", *where])
    assert code == 0 and "second factor reset" in out
    code, out, _ = sipgw_user(["user", "totp", "status", "agent", "--tenant", "cli-2fa", *where])
    assert "reset (enrols at the next login)" in out
    code, out, _ = sipgw_user(["user", "totp", "disable", "agent", "--tenant", "cli-2fa", *where])
    assert code == 0 and "second factor disabled" in out
    code, _, err = sipgw_user(["user", "totp", "disable", "nobody", "--tenant", "cli-2fa", *where])
    assert code == 1 and "has no user" in err
    # A wrong first code leaves the enrolment pending, and says so.
    code, _, err = sipgw_user(
        ["user", "totp", "enrol", "agent", "--tenant", "cli-2fa", *where], stdin="000000\n"
    )
    assert code == 1 and "wrong code" in err
