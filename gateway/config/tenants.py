"""The ``[[tenants]]`` array: tenants with their users, DIDs and trunks.

Uniqueness rules: a tenant id, a SIP domain, a DID and a trunk source address each
identify one tenant (and one trunk); usernames and extensions are unique per tenant.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from gateway.config.blf import blf_policy
from gateway.config.caller_display import caller_display_policy
from gateway.config.dial_policy import PREFIX, DialPolicy
from gateway.config.errors import ConfigError
from gateway.config.model import (
    TRANSPORTS,
    USER_ROLES,
    Did,
    Profile,
    Recognition,
    ScreenPop,
    ScreenPopWhen,
    Tenant,
    Transport,
    Trunk,
    User,
    UserRole,
)
from gateway.config.passwords import hash_password, hash_problem, password_problem
from gateway.config.profiles import region
from gateway.config.reader import Table, Value, plain_text
from gateway.config.second_factor import second_factor
from gateway.config.syntax import (
    IPNetwork,
    is_ip,
    normalize_host,
    normalize_match,
    overlaps,
    parse_match,
    show,
    uri_host,
)
from gateway.config.templates import parse_template
from gateway.config.web import cors_origins, frame_ancestors
from gateway.sip.digest import compute_ha1

_SLUG = re.compile(r"[a-z0-9-]{1,32}")
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_EXTENSION = re.compile(r"[0-9]{2,8}")
_E164 = re.compile(r"\+[1-9][0-9]{5,14}")
_TRUNK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEX = re.compile(r"[0-9a-fA-F]+")
WHENS: tuple[ScreenPopWhen, ...] = ("hit", "miss", "always")


def tenants(v: Value | None, profiles: Mapping[str, Profile]) -> tuple[Tenant, ...]:
    """Every tenant, checked one by one and then against each other."""
    tables = [] if v is None else v.tables()
    result = tuple(_tenant(t, profiles) for t in tables)
    _check_across_tenants(result, tables)
    return result


class _Seen:
    """Values already used, each with the key where it first appeared."""

    def __init__(self) -> None:
        self._first: dict[Hashable, str] = {}

    def add(self, value: Hashable, key: str) -> None:
        first = self._first.setdefault(value, key)
        if first != key:
            raise ConfigError(key, f"duplicate of {first} ({show(value)})")


_TENANT_KEYS = (
    "id", "name", "domains", "region", "realm", "users", "dids", "trunks", "recognition",
    "dial", "cors_origins", "frame_ancestors", "blf", "default_phone_profile", "totp",
    "caller_display",
)  # fmt: skip


def _tenant(t: Table, profiles: Mapping[str, Profile]) -> Tenant:
    t.check_keys(_TENANT_KEYS)
    tenant_id = t.require("id").parse(_slug)
    name = plain_text(t.require("name"))
    domains = _domains(t.require("domains"))
    region_value = t.get("region")
    tenant_region = "NL" if region_value is None else region(region_value)
    realm_value = t.get("realm")
    realm = domains[0] if realm_value is None else _realm(realm_value)
    users = _users(t.get("users"), realm, profiles)
    dids = _dids(t.get("dids"), tenant_id, users)
    trunks = _trunks(t.get("trunks"), profiles)
    recognition = _recognition(t.table("recognition"))
    dial = dial_policy(t.table("dial"))
    blf = blf_policy(t.table("blf"))
    return Tenant(
        id=tenant_id, name=name, domains=domains, region=tenant_region, realm=realm,
        users=users, dids=dids, trunks=trunks, recognition=recognition, dial=dial,
        cors_origins=cors_origins(t), frame_ancestors=frame_ancestors(t), blf=blf,
        default_phone_profile=_profile_ref(t, "default_phone_profile", "generic-phone",
                                           "phone", profiles),
        totp=second_factor(t.table("totp")),
        caller_display=caller_display_policy(t.table("caller_display"), recognition.fields),
    )  # fmt: skip


def _slug(text: str) -> str:
    if not _SLUG.fullmatch(text):
        raise ValueError(f"must be 1-32 of a-z, 0-9 and '-', got {show(text)}")
    if text == "sipgw":  # the hash tag of the node-wide Redis keys (security/keys.py)
        raise ValueError('"sipgw" is reserved')
    return text


def _domains(v: Value) -> tuple[str, ...]:
    """SIP domains in URI form (lower case, IPv6 in brackets); uniqueness is checked
    across all tenants at once."""
    items = v.items()
    if not items:
        raise v.error("must list at least one SIP domain")
    return tuple(uri_host(item.parse(normalize_host)) for item in items)


def _realm(v: Value) -> str:
    realm = plain_text(v)
    if '"' in realm or "\\" in realm:
        raise v.error("must not contain quotes or backslashes (it is quoted in challenges)")
    return realm


# --- users ---------------------------------------------------------------------------

_USER_KEYS = (
    "username", "extension", "display_name", "password", "ha1_md5", "ha1_sha256", "profile",
    "api_password", "api_password_hash", "role", "extensions",
)  # fmt: skip


def _users(v: Value | None, realm: str, profiles: Mapping[str, Profile]) -> tuple[User, ...]:
    if v is None:
        return ()
    users: list[User] = []
    usernames, extensions = _Seen(), _Seen()
    tables = v.tables()
    for t in tables:
        user = _user(t, realm, profiles)
        usernames.add(user.username, t.key_of("username"))
        extensions.add(user.extension, t.key_of("extension"))
        users.append(user)
    # Watched extensions may name users further down the file: checked once all are read.
    known = [u.extension for u in users]
    for user, t in zip(users, tables, strict=True):
        for j, extension in enumerate(user.extensions):
            if extension not in known:
                raise ConfigError(
                    t.key_of(f"extensions[{j}]"),
                    f"no user of this tenant has extension {show(extension)} "
                    f"(extensions: {', '.join(known)})",
                )
    return tuple(users)


def _user(t: Table, realm: str, profiles: Mapping[str, Profile]) -> User:
    t.check_keys(_USER_KEYS)
    username = t.require("username").parse(_username)
    extension = _extension(t.require("extension"))
    display_value = t.get("display_name")
    display_name = "" if display_value is None else _display_name(display_value)
    ha1_md5, ha1_sha256 = _ha1s(t, username, realm)
    # No profile named: None, and the phone's User-Agent chooses (gateway/proxy/ua_profiles.py).
    named = t.get("profile") is not None
    profile = _profile_ref(t, "profile", "", "phone", profiles) if named else None
    api_password_hash, api_password = _api_password(t, username, realm, ha1_md5)
    role_value = t.get("role")
    role = cast(UserRole, "user" if role_value is None else role_value.choice(USER_ROLES))
    watched = _watched_extensions(t, extension, role)
    return User(
        username=username, extension=extension, ha1_md5=ha1_md5, ha1_sha256=ha1_sha256,
        display_name=display_name, profile=profile, api_password_hash=api_password_hash,
        role=role, extensions=watched, api_password=api_password,
    )  # fmt: skip


def _username(text: str) -> str:
    if not _USERNAME.fullmatch(text):
        raise ValueError(f"must be 1-64 letters, digits, '.', '_' or '-', got {show(text)}")
    return text


def _extension(v: Value) -> str:
    if isinstance(v.data, int) and not v.from_env:
        # TOML would drop leading zeros and the value is a dial string, not a number.
        raise v.error(f'must be a string of 2-8 digits (quote it: "{v.data}"), got {v.data}')
    text = v.text()
    if not _EXTENSION.fullmatch(text):
        raise v.error(f"must be 2-8 digits, got {show(text)}")
    return text


def _display_name(v: Value) -> str:
    text = v.text()
    if _CONTROL.search(text):
        raise v.error(f"must not contain control characters, got {show(text)}")
    return text


def _ha1s(t: Table, username: str, realm: str) -> tuple[str, str]:
    """HA1 hashes from ``password`` (then dropped) or from ``ha1_md5`` + ``ha1_sha256``."""
    password, md5, sha256 = t.get("password"), t.get("ha1_md5"), t.get("ha1_sha256")
    if password is not None:
        if md5 is not None or sha256 is not None:
            raise password.error("give either password or ha1_md5 and ha1_sha256, not both")
        secret = _password(password)
        return compute_ha1(username, realm, secret, "MD5"), compute_ha1(
            username, realm, secret, "SHA-256"
        )
    if md5 is None and sha256 is None:
        raise ConfigError(t.key_of("password"), "required (or ha1_md5 and ha1_sha256)")
    if md5 is None:
        raise ConfigError(t.key_of("ha1_md5"), "required with ha1_sha256 (both are offered)")
    if sha256 is None:
        raise ConfigError(t.key_of("ha1_sha256"), "required with ha1_md5 (both are offered)")
    return _hex_digest(md5, 32, "MD5"), _hex_digest(sha256, 64, "SHA-256")


def _password(v: Value) -> str:
    """The DESIGN password policy: >= 8 characters, upper, lower, digit and special."""
    secret = v.text(secret=True)
    strong = (
        len(secret) >= 8
        and any(c.isupper() for c in secret)
        and any(c.islower() for c in secret)
        and any(c.isdigit() for c in secret)
        and any(not c.isalnum() for c in secret)
    )
    if not strong:
        # Never echo the password.
        raise v.error(
            "too weak: use at least 8 characters with upper case, lower case, digit "
            "and special character"
        )
    return secret


def _api_password(
    t: Table, username: str, realm: str, ha1_md5: str
) -> tuple[str | None, str | None]:
    """The Argon2id hash of the HTTP API password, and the password when the file gives
    it: hashed here from ``api_password`` (with a fresh salt, so each load's hash
    differs; the seed checks the password itself against the stored hash), or given as
    ``api_password_hash`` (no password then). (None, None): no API login."""
    plain, given = t.get("api_password"), t.get("api_password_hash")
    if plain is not None and given is not None:
        raise plain.error("give either api_password or api_password_hash, not both")
    if given is not None:
        text = given.text(secret=True)
        problem = hash_problem(text)
        if problem is not None:
            raise given.error(f"{problem}; make one with `sipgw password-hash`")
        return text, None
    if plain is None:
        return None, None
    secret = plain.text(secret=True)
    problem = password_problem(secret)
    if problem is not None:
        raise plain.error(problem)  # never echoes the password
    if compute_ha1(username, realm, secret, "MD5") == ha1_md5:
        # The SIP HA1 is a fast MD5: reusing the password would make Argon2 pointless.
        raise plain.error("must differ from the SIP password")
    return hash_password(secret), secret


def _watched_extensions(t: Table, own: str, role: str) -> tuple[str, ...]:
    value = t.get("extensions")
    if value is None:
        return ()
    if role == "admin":
        raise value.error('not used with role "admin" (an admin sees every extension)')
    seen = _Seen()
    result: list[str] = []
    for item in value.items():
        extension = _extension(item)
        seen.add(extension, item.key)
        if extension != own:  # its own is always visible
            result.append(extension)
    return tuple(result)


def _hex_digest(v: Value, length: int, algorithm: str) -> str:
    text = v.text(secret=True)  # a HA1 is as good as the password for its realm
    if len(text) != length or not _HEX.fullmatch(text):
        raise v.error(f'must be {length} hex digits ({algorithm} of "username:realm:password")')
    return text.lower()


def _profile_ref(
    t: Table, key: str, default: str, kind: str, profiles: Mapping[str, Profile]
) -> str:
    """The name of an existing profile of the right kind (phone for users, trunk for
    trunks) under ``key``, else ``default`` (which must exist too)."""
    value = t.get(key)
    name = default if value is None else value.text()
    known = f"known {kind} profiles: " + ", ".join(n for n, p in profiles.items() if p.kind == kind)
    profile = profiles.get(name)
    if profile is None and value is None:
        raise ConfigError(t.key_of(key), f"the default {show(name)} is missing ({known})")
    if profile is None:
        raise ConfigError(t.key_of(key), f"unknown profile {show(name)} ({known})")
    if profile.kind != kind:
        raise ConfigError(
            t.key_of(key),
            f"{show(name)} is a {profile.kind} profile, a {kind} profile is needed ({known})",
        )
    return name


# --- dids -------------------------------------------------------------------------------


def _dids(v: Value | None, tenant_id: str, users: tuple[User, ...]) -> tuple[Did, ...]:
    if v is None:
        return ()
    extensions = [u.extension for u in users]
    dids: list[Did] = []
    for t in v.tables():
        t.check_keys(("number", "extension"))
        number_value = t.require("number")
        if isinstance(number_value.data, int) and not number_value.from_env:
            raise number_value.error(
                f'must be a string in E.164 form like "+31201234567", got {number_value.data}'
            )
        number = number_value.parse(_e164)
        extension_value = t.require("extension")
        extension = _extension(extension_value)
        if extension not in extensions:
            known = ", ".join(extensions) or "none"
            raise extension_value.error(
                f"no user of tenant {show(tenant_id)} has extension {show(extension)} "
                f"(extensions: {known})"
            )
        dids.append(Did(number=number, extension=extension))
    return tuple(dids)


def _e164(text: str) -> str:
    if not _E164.fullmatch(text):
        raise ValueError(f'must be E.164: "+" and 6-15 digits, got {show(text)}')
    return text


# --- trunks ----------------------------------------------------------------------------

_TRUNK_KEYS = (
    "name", "host", "port", "transport", "profile", "match", "outbound", "options_interval",
    "options_down_after", "options_up_after", "options_failure_codes",
)  # fmt: skip
# Below this an interval is a unit slip (milliseconds written as seconds), and probing
# that often would itself load the trunk.
MIN_OPTIONS_INTERVAL = 0.1


def _trunks(v: Value | None, profiles: Mapping[str, Profile]) -> tuple[Trunk, ...]:
    if v is None:
        return ()
    trunks: list[Trunk] = []
    names = _Seen()
    for t in v.tables():
        trunk = _trunk(t, profiles)
        names.add(trunk.name, t.key_of("name"))
        trunks.append(trunk)
    return tuple(trunks)


def _trunk(t: Table, profiles: Mapping[str, Profile]) -> Trunk:
    t.check_keys(_TRUNK_KEYS)
    name_value = t.require("name")
    name = name_value.text()
    if not _TRUNK_NAME.fullmatch(name):
        raise name_value.error(f"must be 1-64 letters, digits, '.', '_' or '-', got {show(name)}")
    host = t.require("host").parse(normalize_host)
    transport_value = t.get("transport")
    transport = cast(
        Transport, "udp" if transport_value is None else transport_value.choice(TRANSPORTS)
    )
    port_value = t.get("port")
    # TLS has its own well-known port (RFC 3261 §26.2).
    port = (
        (5061 if transport == "tls" else 5060)
        if port_value is None
        else port_value.integer(1, 65535)
    )
    profile = _profile_ref(t, "profile", "generic-trunk", "trunk", profiles)
    match = _trunk_match(t, host, port, transport)
    outbound_value = t.get("outbound")
    return Trunk(
        name=name, host=host, port=port, transport=transport,
        profile=profile, match=match,
        outbound=True if outbound_value is None else outbound_value.boolean(),
        **_trunk_probing(t),
    )  # fmt: skip


def _trunk_probing(t: Table) -> dict[str, Any]:
    """The OPTIONS health probe keys of a trunk (gateway/proxy/prober.py)."""
    readers: dict[str, Callable[[Value], Any]] = {
        "options_interval": _options_interval,
        "options_down_after": lambda v: v.integer(1, 100),
        "options_up_after": lambda v: v.integer(1, 100),
        "options_failure_codes": _failure_codes,
    }
    present = ((name, t.get(name)) for name in readers)
    return {name: readers[name](value) for name, value in present if value is not None}


def _options_interval(v: Value) -> float:
    interval = v.number(allow_zero=True)
    if 0 < interval < MIN_OPTIONS_INTERVAL:
        raise v.error(
            f"must be 0 (no probing) or at least {MIN_OPTIONS_INTERVAL:g} seconds, got {interval:g}"
        )
    return interval


def _failure_codes(v: Value) -> tuple[int, ...]:
    """Final status codes (300-699) that count as a failed probe; [] = none does."""
    codes: list[int] = []
    for item in v.items():
        code = item.integer(300, 699)
        if code in codes:
            raise item.error(f"duplicate of {v.key}[{codes.index(code)}] ({code})")
        codes.append(code)
    return tuple(codes)


def _trunk_match(t: Table, host: str, port: int, transport: str) -> tuple[str, ...]:
    value = t.get("match")
    if value is None:
        if not is_ip(host):
            raise ConfigError(
                t.key_of("match"),
                f"required when host is a name ({show(host)}): list the addresses the "
                "trunk sends from (trust is given to addresses, not names)",
            )
        # Over UDP a trunk sends from its SIP port; TCP/TLS connections it opens come
        # from ephemeral ports, so only the address can be matched.
        return (f"{uri_host(host)}:{port}",) if transport == "udp" else (host,)
    items = value.items(allow_single=True)
    if not items:
        raise value.error("must list at least one address (or leave it out for host:port)")
    return tuple(item.parse(normalize_match) for item in items)


# --- click-to-dial destinations ------------------------------------------------------


def dial_policy(t: Table) -> DialPolicy:
    """``[tenants.dial]``: allowed and denied destination prefixes (see dial_policy.py)."""
    t.check_keys(("allow_prefixes", "deny_prefixes"))
    lists: dict[str, tuple[str, ...]] = {}
    for name in ("allow_prefixes", "deny_prefixes"):
        value = t.get(name)
        seen = _Seen()
        prefixes: list[str] = []
        for item in [] if value is None else value.items():
            prefix = item.text().replace(" ", "")
            if not PREFIX.fullmatch(prefix):
                raise item.error(
                    '"+" and up to 15 digits (an E.164 prefix, "+" alone: every number), '
                    f"or 1-16 of 0-9 * # (short numbers), got {show(prefix)}"
                )
            seen.add(prefix, item.key)
            prefixes.append(prefix)
        lists[name] = tuple(prefixes)
    for i, prefix in enumerate(lists["deny_prefixes"]):
        if prefix in lists["allow_prefixes"]:
            j = lists["allow_prefixes"].index(prefix)
            raise ConfigError(
                f"{t.key_of('deny_prefixes')}[{i}]",
                f"{show(prefix)} is also {t.key_of('allow_prefixes')}[{j}]: keep it in one list",
            )
    return DialPolicy(lists["allow_prefixes"], lists["deny_prefixes"])


# --- recognition ------------------------------------------------------------------

_FIELD = re.compile(r"[a-z][a-z0-9_]{0,31}")
_POP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
MAX_CONTACT_FIELDS = 32


def _recognition(t: Table) -> Recognition:
    t.check_keys(("enabled", "fields", "budget_ms", "timeout_ms", "screen_pop"))
    enabled_value = t.get("enabled")
    fields = _contact_fields(t.get("fields"))
    budget_value, timeout_value = t.get("budget_ms"), t.get("timeout_ms")
    budget = 20.0 if budget_value is None else budget_value.number(allow_zero=True)
    timeout = 2000.0 if timeout_value is None else timeout_value.number()
    if budget > 1000:
        # The event of a ringing call waits this long: beyond a second a CRM shows the
        # call late, and the look-up's answer arrives as call.recognized anyway.
        raise ConfigError(t.key_of("budget_ms"), f"must be at most 1000, got {budget:g}")
    if timeout < budget:
        raise ConfigError(
            t.key_of("timeout_ms"), f"must be at least budget_ms ({budget:g}), got {timeout:g}"
        )
    return Recognition(
        enabled=True if enabled_value is None else enabled_value.boolean(),
        fields=fields,
        budget_ms=budget,
        timeout_ms=timeout,
        screen_pop=_screen_pops(t.get("screen_pop"), fields),
    )


def _contact_fields(v: Value | None) -> tuple[str, ...]:
    if v is None:
        return ("name",)
    seen = _Seen()
    result: list[str] = []
    items = v.items()
    if len(items) > MAX_CONTACT_FIELDS:
        raise v.error(f"at most {MAX_CONTACT_FIELDS} fields, got {len(items)}")
    for item in items:
        name = item.text()
        if not _FIELD.fullmatch(name):
            raise item.error(
                f"must be 1-32 of a-z, 0-9 and '_', starting with a letter, got {show(name)}"
            )
        seen.add(name, item.key)
        result.append(name)
    return tuple(result)


def _screen_pops(v: Value | None, fields: tuple[str, ...]) -> tuple[ScreenPop, ...]:
    if v is None:
        return ()
    pops: list[ScreenPop] = []
    names = _Seen()
    for t in v.tables():
        t.check_keys(("name", "when", "url"))
        name_value = t.require("name")
        name = name_value.text()
        if not _POP_NAME.fullmatch(name):
            raise name_value.error(
                f"must be 1-32 letters, digits, '.', '_' or '-', got {show(name)}"
            )
        names.add(name, name_value.key)
        when_value = t.get("when")
        when = cast(ScreenPopWhen, "hit" if when_value is None else when_value.choice(WHENS))
        template = t.require("url").parse(lambda text: parse_template(text, fields))
        pops.append(ScreenPop(name=name, when=when, template=template))
    return tuple(pops)


# --- across tenants ---------------------------------------------------------------


def _check_across_tenants(tenants: tuple[Tenant, ...], tables: list[Table]) -> None:
    """Ids, domains, DIDs and trunk source addresses must each identify one tenant."""
    ids, domains, dids = _Seen(), _Seen(), _Seen()
    matches: list[_Match] = []
    for tenant, table in zip(tenants, tables, strict=True):
        ids.add(tenant.id, table.key_of("id"))
        for j, domain in enumerate(tenant.domains):
            domains.add(domain, table.key_of(f"domains[{j}]"))
        for j, did in enumerate(tenant.dids):
            dids.add(did.number, table.key_of(f"dids[{j}].number"))
        trunk_tables = table.require("trunks").tables() if tenant.trunks else []
        for trunk, trunk_table in zip(tenant.trunks, trunk_tables, strict=True):
            _add_matches(matches, trunk, trunk_table)


@dataclass(frozen=True)
class _Match:
    network: tuple[IPNetwork, int | None]
    entry: str
    key: str
    trunk_key: str


def _add_matches(matches: list[_Match], trunk: Trunk, table: Table) -> None:
    """Add a trunk's match entries, refusing one that overlaps another trunk's."""
    explicit = "match" in table.data  # else the entry was derived from host and port
    for k, entry in enumerate(trunk.match):
        mine = _Match(
            parse_match(entry),
            entry,
            table.key_of(f"match[{k}]" if explicit else "match"),
            table.key,
        )
        for other in matches:
            if other.trunk_key != mine.trunk_key and overlaps(mine.network, other.network):
                raise ConfigError(
                    mine.key,
                    f"{show(entry)} overlaps {other.key} ({show(other.entry)}): "
                    "a source address must identify one trunk",
                )
        matches.append(mine)


def default_tenant(v: Value | None, tenants: tuple[Tenant, ...]) -> str | None:
    if v is None:
        return None
    name = v.text()
    ids = [t.id for t in tenants]
    if name not in ids:
        raise v.error(f"unknown tenant {show(name)} (tenants: {', '.join(ids) or 'none'})")
    return name
