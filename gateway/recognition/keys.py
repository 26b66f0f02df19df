"""Redis names and value format of the contact index.

Every key of a tenant carries the hash tag ``{tenant}`` so that, on a Redis Cluster, the
scripts that touch a tenant's contacts and source sets run in one slot. The keys whose
names are not fixed (a source's set, a generation, an erase set) are entered in the
tenant's key index ``{t}:keys`` by the script or transaction that creates them
(security/tenant_keys.py), so removing a source or a tenant needs no SCAN.

    {t}:contacts              hash  E.164 number -> msgpack value (below)
    {t}:sources               hash  source id -> last change (ms since the epoch, ASCII)
    {t}:source:<source>       set   the numbers a source holds (to remove it at once)
    {t}:gen:<source>:<gen>    set   numbers sent by a full sync in progress (expires)
    {t}:erase:<random>        set   numbers being removed in chunks (expires)
    {sipgw}:contacts:invalidate  channel  "<tenant>\\n<number>,…" or "<tenant>\\n*"

Value
    msgpack array of ``[source, fields]`` pairs, first come first served: the first
    pair is the contact shown; the others stand behind it (a number held by several
    sources) and take over when it is removed. ``fields`` is itself msgpack bytes of a
    map of the tenant's configured contact fields; the Lua scripts move it around
    without reading it, so they never reinterpret a value.

Source ids are ``[a-z0-9][a-z0-9._-]{0,63}`` and tenant ids ``[a-z0-9-]{1,32}``:
validated before they become part of a key, so no id can reach another tenant's keys.
"""

from __future__ import annotations

import re

INVALIDATE_CHANNEL = "{sipgw}:contacts:invalidate"
ALL = "*"  # an invalidation of every number of a tenant

_TENANT = re.compile(r"[a-z0-9-]{1,32}")
_SOURCE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_GENERATION = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_source_id(text: object) -> bool:
    return isinstance(text, str) and _SOURCE.fullmatch(text) is not None


def is_generation(text: object) -> bool:
    return isinstance(text, str) and _GENERATION.fullmatch(text) is not None


def _tenant(tenant: str) -> str:
    if _TENANT.fullmatch(tenant) is None:
        raise ValueError(f"invalid tenant id {tenant!r}")
    return "{" + tenant + "}"


def _source(source: str) -> str:
    if not is_source_id(source):
        raise ValueError(f"invalid source id {source!r}")
    return source


def contacts(tenant: str) -> str:
    return _tenant(tenant) + ":contacts"


def sources(tenant: str) -> str:
    return _tenant(tenant) + ":sources"


def source(tenant: str, source_id: str) -> str:
    return f"{_tenant(tenant)}:source:{_source(source_id)}"


def generations_prefix(tenant: str, source_id: str) -> str:
    """What the key of every full-sync set of a source starts with."""
    return f"{_tenant(tenant)}:gen:{_source(source_id)}:"


def generation(tenant: str, source_id: str, gen: str) -> str:
    if not is_generation(gen):
        raise ValueError(f"invalid generation {gen!r}")
    return f"{_tenant(tenant)}:gen:{_source(source_id)}:{gen}"


def erasing(tenant: str, token: str) -> str:
    return f"{_tenant(tenant)}:erase:{token}"


def tenant_prefix(tenant: str) -> str:
    """What every key of the tenant starts with."""
    return _tenant(tenant) + ":"


def tenant_pattern(tenant: str) -> str:
    """Every key of the tenant as a glob, for tests (the code never SCANs)."""
    return _tenant(tenant) + ":*"


def invalidation(tenant: str, numbers: list[str] | None) -> bytes:
    body = ALL if numbers is None else ",".join(numbers)
    return f"{tenant}\n{body}".encode("ascii")


def parse_invalidation(data: bytes) -> tuple[str, list[str] | None] | None:
    """(tenant, numbers) or (tenant, None) for all of them; None if malformed."""
    try:
        tenant, _, body = data.decode("ascii").partition("\n")
    except UnicodeDecodeError:
        return None
    if _TENANT.fullmatch(tenant) is None:
        return None
    if body == ALL:
        return tenant, None
    return tenant, [n for n in body.split(",") if n]
