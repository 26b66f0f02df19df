"""A webhook subscription, and the checks of what an admin asks for.

Sans-I/O: the API and the CLI check a request here before anything reaches Redis, so
both refuse the same things with the same words (an HTTP 422, an exit status 1).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from gateway.bus.replay import EventFilter
from gateway.calls.events import EVENT_TYPES
from gateway.security.directory import EXTENSION

ID = re.compile(r"wh_[a-z0-9]{20}")
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
MAX_URL = 2048
MAX_DESCRIPTION = 200
MAX_FILTER_ITEMS = 64


class Invalid(ValueError):
    """What an admin asked for cannot be a webhook; the message names the field."""


def new_id() -> str:
    return "wh_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))


def is_id(text: object) -> bool:
    return isinstance(text, str) and ID.fullmatch(text) is not None


@dataclass(frozen=True)
class Subscription:
    """One webhook of a tenant. ``types``/``extensions`` empty: every one."""

    id: str
    tenant: str
    url: str
    secret: str
    types: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()
    description: str = ""
    created_at: float = 0.0
    created_by: str = ""
    disabled_at: float | None = None
    disabled_reason: str | None = None

    @property
    def enabled(self) -> bool:
        return self.disabled_at is None

    @property
    def event_filter(self) -> EventFilter:
        return EventFilter(extensions=frozenset(self.extensions), types=frozenset(self.types))

    def disabled(self, at: float, reason: str) -> Subscription:
        return replace(self, disabled_at=at, disabled_reason=reason)

    def enabled_again(self) -> Subscription:
        return replace(self, disabled_at=None, disabled_reason=None)

    def to_json(self) -> str:
        data = asdict(self)
        del data["tenant"]  # the key says it
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, tenant: str, text: str | bytes) -> Subscription:
        data = json.loads(text)
        data["types"] = tuple(data.get("types", ()))
        data["extensions"] = tuple(data.get("extensions", ()))
        return cls(tenant=tenant, **data)

    def public(self) -> dict[str, Any]:
        """What the API and the CLI show: everything but the secret (shown once)."""
        return {
            "id": self.id,
            "url": self.url,
            "types": list(self.types),
            "extensions": list(self.extensions),
            "description": self.description,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "enabled": self.enabled,
            "disabled_at": self.disabled_at,
            "disabled_reason": self.disabled_reason,
        }


def check_url(
    value: object, *, allow_loopback: bool, refusal: Callable[[str, int], str | None]
) -> str:
    """The URL as given, if a webhook may point there. ``refusal``: the destination
    policy's answer for an IP literal (a name is checked at each connection, once
    resolved: destinations.py). Plain ``http://`` only to loopback, and only with
    ``allow_loopback`` (tests)."""
    if not isinstance(value, str) or not value:
        raise Invalid("url: required, a string")
    if len(value) > MAX_URL:
        raise Invalid(f"url: longer than {MAX_URL} characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise Invalid("url: must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as err:
        raise Invalid(f"url: {err}") from None
    host = parts.hostname
    if parts.scheme not in ("https", "http") or not host:
        raise Invalid("url: must be https://host/…")
    if parts.username is not None or parts.password is not None:
        raise Invalid("url: must not carry a user name or password (the signature authenticates)")
    if parts.fragment:
        raise Invalid("url: must not have a #fragment")
    port = port or (443 if parts.scheme == "https" else 80)
    loopback_name = host.lower().rstrip(".") == "localhost"
    why = refusal("127.0.0.1" if loopback_name else host, port)
    if why is not None:
        raise Invalid(f'url: {host} may not be reached ({why}); see docs/events.md "Webhooks"')
    if parts.scheme == "http" and not (allow_loopback and (loopback_name or _is_loopback(host))):
        raise Invalid("url: must be https:// (plain http only to loopback, when allowed)")
    return value


def _is_loopback(host: str) -> bool:
    from ipaddress import ip_address

    try:
        addr = ip_address(host)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool((mapped or addr).is_loopback)


def check_types(value: object) -> tuple[str, ...]:
    items = _strings("types", value)
    unknown = [t for t in items if t not in EVENT_TYPES]
    if unknown:
        raise Invalid(f"types: unknown event type {unknown[0]!r} (see docs/events.md)")
    return items


def check_extensions(value: object, known: frozenset[str] | None) -> tuple[str, ...]:
    items = _strings("extensions", value)
    for item in items:
        if EXTENSION.fullmatch(item) is None:
            raise Invalid(f"extensions: {item!r} is not an extension (2-8 digits)")
        if known is not None and item not in known:
            raise Invalid(f"extensions: {item!r} is not an extension of this tenant")
    return items


def check_description(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise Invalid(f"description: a string of at most {MAX_DESCRIPTION} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise Invalid("description: must not contain control characters")
    return value


def _strings(name: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise Invalid(f"{name}: a list of strings")
    if len(value) > MAX_FILTER_ITEMS:
        raise Invalid(f"{name}: at most {MAX_FILTER_ITEMS} items")
    return tuple(dict.fromkeys(_as_str(value)))


def _as_str(values: Iterable[object]) -> Iterable[str]:
    return (str(v) for v in values)
