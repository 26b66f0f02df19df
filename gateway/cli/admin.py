"""Administration subcommands of ``sipgw``: tenants, users and tokens of the HTTP API.

    sipgw tenant create ID --name NAME
    sipgw tenant delete ID --yes
    sipgw user add --tenant ID USERNAME [--role user|admin] [--extension EXT]
                   [--watch EXT ...] [--no-password] [--replace]
    sipgw user totp enrol|status|disable|reset --tenant ID USERNAME
    sipgw token create --tenant ID (--user USERNAME | --sync) [--ttl SECONDS]
    sipgw password-hash

Each takes ``--config FILE`` (default: ``$SIPGW_CONFIG`` or the demo) for the Redis
URL and the security settings, and talks to Redis through ``Directory``. Passwords are
never taken from the command line (it shows in ``ps`` and shell history): they are
asked for on the terminal, twice, or read as one line from standard input.
A token is printed once, alone on stdout; only its hash is stored.

Exit status: 0 done, 1 refused (the reason on stderr) or Redis unreachable, 2 bad
configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from gateway.config import ConfigError, RedisSettings, Settings, load_settings
from gateway.config.syntax import mask_url_password
from gateway.recognition.index import ContactIndex
from gateway.security.audit import rfc3339
from gateway.security.directory import (
    Directory,
    DirectoryError,
    DirectoryUnavailable,
    operator_source,
)
from gateway.security.passwords import POLICY_TEXT, hash_password, password_problem
from gateway.security.tokens import LoginRefused, Token


def _fail(message: str, code: int = 1) -> int:
    print(f"sipgw: {message}", file=sys.stderr)
    return code


def _settings(path: str | None) -> Settings | None:
    try:
        return load_settings(path)
    except ConfigError as err:
        print(f"sipgw: configuration error: {err}", file=sys.stderr)
    except OSError as err:
        print(f"sipgw: cannot read configuration: {err}", file=sys.stderr)
    return None


def read_password(stdin: TextIO | None = None) -> str:
    """A new password: asked twice on a terminal, else one line of standard input."""
    stream = sys.stdin if stdin is None else stdin
    if stream.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise DirectoryError("the two passwords differ")
        return first
    return stream.readline().rstrip("\r\n")


def _run(args: argparse.Namespace, action: Callable[[Directory, Settings], Awaitable[int]]) -> int:
    settings = _settings(args.config)
    if settings is None:
        return 2

    async def main() -> int:
        directory = Directory(settings.redis, settings)
        try:
            await directory.start(seed=False)
            return await action(directory, settings)
        finally:
            await directory.stop()

    try:
        return asyncio.run(main())
    except DirectoryUnavailable:
        return _fail(f"cannot reach {_redis_place(settings.redis)}")
    except DirectoryError as err:
        message = str(err)
        tenant = getattr(args, "tenant", None) or getattr(args, "id", None)
        if message.startswith("unknown tenant") and settings.tenant_by_id(str(tenant)):
            message += (
                " in Redis (it is in the configuration: start the gateway once, it copies "
                "the configuration's tenants and users to Redis)"
            )
        return _fail(message)


def _redis_place(redis: RedisSettings) -> str:
    """Where the gateway looks for Redis, in words, without a password."""
    where = ", ".join(f"{host}:{port}" for host, port in redis.endpoints)
    if redis.mode == "cluster":
        return f"the Redis Cluster (seed nodes {where})"
    if redis.mode == "sentinel":
        return f"Redis master {redis.sentinel_service!r} (sentinels {where})"
    return f"Redis at {mask_url_password(redis.url)}"


# --- commands ---------------------------------------------------------------------------


def cmd_tenant_create(args: argparse.Namespace) -> int:
    async def action(directory: Directory, settings: Settings) -> int:
        if settings.tenant_by_id(args.id) is not None:
            raise DirectoryError(f'tenant "{args.id}" is defined in the configuration file')
        await directory.create_tenant(args.id, args.name, source=operator_source())
        print(f"tenant {args.id} created (API only: users, tokens, events; no SIP domains)")
        return 0

    return _run(args, action)


def cmd_tenant_delete(args: argparse.Namespace) -> int:
    if not args.yes:
        return _fail(
            f"this deletes every piece of data of tenant {args.id} (users, tokens, events, "
            "contacts, audit) and cannot be undone; add --yes",
            2,
        )

    async def action(directory: Directory, settings: Settings) -> int:
        if settings.tenant_by_id(args.id) is not None:
            raise DirectoryError(
                f'tenant "{args.id}" is defined in the configuration file: remove it there; '
                "the next start deletes its data"
            )
        deleted = await directory.delete_tenant(args.id, source=operator_source())
        # The keys are gone; every node's contact cache forgets the tenant too.
        index = ContactIndex(settings.redis)
        try:
            await index.forget_tenant(args.id)
        finally:
            await index.close()
        print(f"tenant {args.id} deleted ({deleted} keys)")
        return 0

    return _run(args, action)


def cmd_user_add(args: argparse.Namespace) -> int:
    async def action(directory: Directory, settings: Settings) -> int:
        password = None if args.no_password else read_password()
        record = await directory.add_user(
            args.tenant,
            args.username,
            password,
            role=args.role,
            extension=args.extension,
            extensions=args.watch or (),
            replace=args.replace,
            source=operator_source(),
        )
        sees = (
            "every extension"
            if record.role == "admin"
            else (", ".join(sorted(record.visible_extensions)) or "no extension")
        )
        login = "no password: tokens only" if password is None else "may log in"
        print(f"user {record.username} of tenant {args.tenant}: role {record.role}, "
              f"sees {sees}; {login}")  # fmt: skip
        return 0

    return _run(args, action)


def read_code(stdin: TextIO | None = None) -> str:
    """The first code of an enrolment: asked on a terminal, else one line of stdin."""
    stream = sys.stdin if stdin is None else stdin
    if stream.isatty():
        return input("Code shown by the app: ").strip()
    return stream.readline().strip()


def _qr_text(text: str) -> str:
    """``text`` as a QR code drawn with block characters, for a terminal."""
    import io

    import qrcode  # type: ignore[import-untyped]

    code = qrcode.QRCode(border=2)
    code.add_data(text)
    out = io.StringIO()
    code.print_ascii(out=out, invert=True)
    return out.getvalue()


def cmd_user_totp(args: argparse.Namespace) -> int:
    """A user's second factor (TOTP): enrol (the URI and QR code, then the first code),
    status, or an admin's disable or reset."""

    async def action(directory: Directory, settings: Settings) -> int:
        tenant, user, source = args.tenant, args.username, operator_source()
        if args.totp_command == "enrol":
            return await _enrol(directory, tenant, user, source)
        if args.totp_command == "disable":
            removed = await directory.disable_second_factor(tenant, user, source=source)
            print(f"user {user} of tenant {tenant}: "
                  f"{'second factor disabled' if removed else 'had no second factor'}")  # fmt: skip
            return 0
        if args.totp_command == "reset":
            revoked = await directory.reset_second_factor(tenant, user, source=source)
            print(f"user {user} of tenant {tenant}: second factor reset, {revoked} tokens "
                  "revoked; the user enrols again at the next login")  # fmt: skip
            return 0
        if await directory.user(tenant, user) is None:
            raise DirectoryError(f"tenant {tenant!r} has no user {user!r}")
        record = await directory.second_factors.enrolment(tenant, user)
        left = await directory.second_factors.recovery_codes_left(tenant, user)
        policy = directory.second_factor_policy(tenant).policy
        state = (
            "none" if record is None
            else "enrolled" if record.confirmed
            else "reset (enrols at the next login)" if record.reset
            else "pending confirmation"
        )  # fmt: skip
        print(f"user {user} of tenant {tenant}: second factor {state}; "
              f"{left} recovery codes left; tenant policy {policy}")  # fmt: skip
        return 0

    return _run(args, action)


async def _enrol(directory: Directory, tenant: str, user: str, source: str) -> int:
    enrolment = await directory.enrol_second_factor(tenant, user, source=source)
    print(_qr_text(enrolment.uri))
    print(enrolment.uri)
    print(f"secret (to type instead): {enrolment.secret}", file=sys.stderr)
    confirmed = await directory.confirm_second_factor(tenant, user, read_code(), source=source)
    if isinstance(confirmed, LoginRefused):
        return _fail(
            "wrong code (or too many attempts): the enrolment stays pending; run the "
            "command again for a new secret"
        )
    print("Recovery codes (each works once; shown only now):")
    for code in confirmed:
        print(f"  {code}")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    if (args.user is None) == (not args.sync):
        return _fail("give either --user USERNAME or --sync", 2)

    async def action(directory: Directory, settings: Settings) -> int:
        token: Token = await directory.create_token(
            args.tenant,
            user=args.user,
            role="sync" if args.sync else None,
            ttl=args.ttl,
            source=operator_source(),
        )
        expires = token.expires_at
        print(token.bearer)
        print(
            f"token for tenant {token.tenant}, role {token.role}"
            f"{'' if token.user is None else ', user ' + token.user}, "
            f"expires {rfc3339(expires)}; shown once, only its hash is stored",
            file=sys.stderr,
        )
        return 0

    return _run(args, action)


def cmd_password_hash(args: argparse.Namespace) -> int:
    try:
        password = read_password()
    except DirectoryError as err:
        return _fail(str(err))
    problem = password_problem(password)
    if problem is not None:
        return _fail(f"password {problem}")
    print(hash_password(password))
    return 0


# --- parsers ----------------------------------------------------------------------------


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML settings file (default: $SIPGW_CONFIG or the demo)")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``tenant``, ``user``, ``token`` and ``password-hash`` to the ``sipgw`` parser."""
    tenant = subparsers.add_parser("tenant", help="API tenants in Redis")
    tenant_sub = tenant.add_subparsers(dest="tenant_command", required=True)
    create = tenant_sub.add_parser("create", help="add an API-only tenant")
    create.add_argument("id", help="tenant id: 1-32 of a-z, 0-9 and '-'")
    create.add_argument("--name", required=True, help="display name")
    _config_option(create)
    create.set_defaults(func=cmd_tenant_create)
    delete = tenant_sub.add_parser(
        "delete", help="delete an API-only tenant and all its data (users, events, contacts)"
    )
    delete.add_argument("id", help="tenant id")
    delete.add_argument("--yes", action="store_true", help="confirm: this cannot be undone")
    _config_option(delete)
    delete.set_defaults(func=cmd_tenant_delete)

    user = subparsers.add_parser("user", help="API users in Redis")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser(
        "add",
        help="add an API user (password asked on the terminal or read from stdin)",
        description=f"Add an API user. Password policy: {POLICY_TEXT}.",
    )
    add.add_argument("username")
    add.add_argument("--tenant", required=True)
    add.add_argument("--role", choices=("user", "admin"), default="user")
    add.add_argument("--extension", help="the user's own extension (2-8 digits)")
    add.add_argument(
        "--watch", action="append", metavar="EXT", help="another extension it may see (repeat)"
    )
    add.add_argument(
        "--no-password", action="store_true", help="no login: tokens via `sipgw token create`"
    )
    add.add_argument(
        "--replace", action="store_true", help="overwrite an existing user (revokes its tokens)"
    )
    _config_option(add)
    add.set_defaults(func=cmd_user_add)
    second = user_sub.add_parser(
        "totp",
        help="a user's second factor (TOTP): enrol, status, disable, reset",
        description="docs/security.md, 'Second factor'. Enrol prints the otpauth:// URI and "
        "its QR code, then reads the app's first code (terminal or one line of stdin).",
    )
    second.add_argument(
        "totp_command", choices=("enrol", "status", "disable", "reset"),
        help="reset: the user enrols again at the next login; its tokens are revoked",
    )  # fmt: skip
    second.add_argument("username")
    second.add_argument("--tenant", required=True)
    _config_option(second)
    second.set_defaults(func=cmd_user_totp)

    token = subparsers.add_parser("token", help="API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    issue = token_sub.add_parser(
        "create", help="issue a token (printed once) for a user, or a sync token"
    )
    issue.add_argument("--tenant", required=True)
    issue.add_argument("--user", help="the user it acts as (its role and extensions)")
    issue.add_argument("--sync", action="store_true", help="a tenant-level contact sync token")
    issue.add_argument(
        "--ttl",
        type=_positive_seconds,
        help="lifetime in seconds (default: security.token_ttl; sync tokens 365 days)",
    )
    _config_option(issue)
    issue.set_defaults(func=cmd_token_create)

    hasher = subparsers.add_parser(
        "password-hash",
        help="print the Argon2id hash of a password, for api_password_hash",
        description=f"Password policy: {POLICY_TEXT}.",
    )
    hasher.set_defaults(func=cmd_password_hash)
