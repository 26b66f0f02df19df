"""``sipgw webhook``: a tenant's webhook subscriptions, on Redis directly (like the
admin commands, gateway/cli/admin.py; the same checks and store as ``/v1/webhooks``).

    sipgw webhook add --tenant ID URL [--type TYPE ...] [--extension EXT ...]
                      [--description TEXT]
    sipgw webhook list --tenant ID [--json]
    sipgw webhook remove --tenant ID WEBHOOK
    sipgw webhook enable --tenant ID WEBHOOK [--from-now]

``add`` prints the secret once, alone on stdout (the receiver's key to check
signatures); the rest goes to stderr. Running gateways see a change at their next
look (``[webhooks] refresh_interval``). Exit status: 0 done, 1 refused (the reason on
stderr) or Redis unreachable, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.cli.admin import _config_option, _fail, _redis_place, _settings
from gateway.config import Settings
from gateway.webhooks import signing
from gateway.webhooks.destinations import WebhookDestinations
from gateway.webhooks.store import LimitReached, StoreUnavailable, WebhookStore
from gateway.webhooks.subscriptions import (
    Invalid,
    Subscription,
    check_description,
    check_extensions,
    check_types,
    check_url,
    is_id,
    new_id,
)


def _run(
    args: argparse.Namespace, action: Callable[[WebhookStore, Settings], Awaitable[int]]
) -> int:
    settings = _settings(args.config)
    if settings is None:
        return 2

    async def main() -> int:
        store = WebhookStore(settings.redis)
        try:
            return await action(store, settings)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except StoreUnavailable:
        return _fail(f"cannot reach {_redis_place(settings.redis)}")
    except (Invalid, LimitReached) as err:
        return _fail(str(err))


def cmd_add(args: argparse.Namespace) -> int:
    async def action(store: WebhookStore, settings: Settings) -> int:
        tenant = settings.tenant_by_id(args.tenant)
        known = None if tenant is None else frozenset(u.extension for u in tenant.users)
        hooks = settings.webhooks
        sub = Subscription(
            id=new_id(),
            tenant=args.tenant,
            url=check_url(
                args.url,
                allow_loopback=hooks.allow_loopback,
                refusal=WebhookDestinations(settings).refusal,
            ),
            secret=signing.new_secret(),
            types=check_types(args.type or []),
            extensions=check_extensions(args.extension or [], known),
            description=check_description(args.description),
            created_at=time.time(),
            created_by="@operator",
        )
        await store.create(sub, hooks.max_per_tenant)
        print(sub.secret)
        print(
            f"webhook {sub.id} of tenant {sub.tenant} -> {sub.url}; its secret (above) is "
            "shown once: give it to the receiver",
            file=sys.stderr,
        )
        return 0

    return _run(args, action)


def cmd_list(args: argparse.Namespace) -> int:
    async def action(store: WebhookStore, settings: Settings) -> int:
        for sub in await store.all(args.tenant):
            state = await store.state(sub.tenant, sub.id)
            row: dict[str, Any] = {**sub.public(), **state}
            row.pop("lease", None)
            if args.json:
                print(json.dumps(row))
                continue
            status = "enabled" if sub.enabled else f"DISABLED ({sub.disabled_reason})"
            filters = ",".join(sub.types) or "every type"
            if sub.extensions:
                filters += " of " + ",".join(sub.extensions)
            position, dead = state.get("cursor", "-"), state.get("dead_letters", 0)
            print(
                f"{sub.id}  {status}  {sub.url}  [{filters}]  delivered through {position}, "
                f"dead letters {dead}"
            )
        return 0

    return _run(args, action)


def cmd_remove(args: argparse.Namespace) -> int:
    async def action(store: WebhookStore, settings: Settings) -> int:
        if not (is_id(args.webhook) and await store.delete(args.tenant, args.webhook)):
            return _fail(f"no webhook {args.webhook} in tenant {args.tenant}")
        print(f"webhook {args.webhook} removed", file=sys.stderr)
        return 0

    return _run(args, action)


def cmd_enable(args: argparse.Namespace) -> int:
    async def action(store: WebhookStore, settings: Settings) -> int:
        sub = await store.get(args.tenant, args.webhook) if is_id(args.webhook) else None
        if sub is None:
            return _fail(f"no webhook {args.webhook} in tenant {args.tenant}")
        skipped = await store.skip_to_now(sub) if args.from_now else 0
        await store.save(sub.enabled_again())
        where = f"from now ({skipped} events skipped)" if args.from_now else "where it stopped"
        print(f"webhook {sub.id} enabled, delivering {where}", file=sys.stderr)
        return 0

    return _run(args, action)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``webhook`` to the ``sipgw`` parser."""
    webhook = subparsers.add_parser("webhook", help="signed webhooks of a tenant (in Redis)")
    sub = webhook.add_subparsers(dest="webhook_command", required=True)

    add = sub.add_parser("add", help="subscribe a URL (the secret is printed once)")
    add.add_argument("url", help='https://… (see docs/events.md "Webhooks")')
    add.add_argument("--tenant", required=True)
    add.add_argument("--type", action="append", help="only this event type (repeat)")
    add.add_argument("--extension", action="append", help="only this extension (repeat)")
    add.add_argument("--description", help="a note for people")
    add.set_defaults(func=cmd_add)

    listing = sub.add_parser("list", help="the tenant's webhooks and their delivery state")
    listing.add_argument("--tenant", required=True)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(func=cmd_list)

    remove = sub.add_parser("remove", help="delete a webhook")
    remove.add_argument("webhook", help="its id, wh_…")
    remove.add_argument("--tenant", required=True)
    remove.set_defaults(func=cmd_remove)

    enable = sub.add_parser("enable", help="deliver again to a disabled webhook")
    enable.add_argument("webhook", help="its id, wh_…")
    enable.add_argument("--tenant", required=True)
    enable.add_argument(
        "--from-now", action="store_true",
        help="skip what it missed (counted as dead letters) instead of resuming",
    )  # fmt: skip
    enable.set_defaults(func=cmd_enable)
    for parser in (add, listing, remove, enable):
        _config_option(parser)
