"""``load_settings``: TOML file + SIPGW_* environment -> checked, frozen ``Settings``.

Reading order is the order of the checks, so the first problem found is reported:
top-level keys, node, sip, http, redis, log, events, security, recognition, dial, web,
webhooks, profiles, tenants, default_tenant, monitor; then what must not face a network
(gateway/config/exposure.py).
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import ssl
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.config.blf import blf_settings
from gateway.config.errors import ConfigError
from gateway.config.exposure import check_exposure
from gateway.config.model import (
    DialSettings,
    EventsSettings,
    HttpSettings,
    ListenSpec,
    LogSettings,
    MonitorSettings,
    MonitorSource,
    NodeSettings,
    RecognitionSettings,
    SecuritySettings,
    Settings,
    SipSettings,
    Tenant,
    WebhookSettings,
    WebSettings,
)
from gateway.config.profiles import load_profiles
from gateway.config.reader import Context, Table, Value, apply_env, existing_file, plain_text
from gateway.config.redis_modes import redis_settings
from gateway.config.syntax import (
    normalize_host,
    normalize_match,
    overlaps,
    parse_match,
    show,
    split_host_port,
    uri_host,
)
from gateway.config.tenants import default_tenant, tenants
from gateway.config.web import frame_ancestors

CONFIG_ENV = "SIPGW_CONFIG"
# sip_profiles/ sits next to the gateway package in the source tree (and the image).
DEFAULT_PROFILES_DIR = Path(__file__).resolve().parent.parent.parent / "sip_profiles"
EMBEDDED_DEFAULT = "<embedded gateway/default.toml>"

TOP_LEVEL_KEYS = (
    "node", "sip", "http", "redis", "log", "events", "security", "monitor", "recognition",
    "dial", "web", "blf", "webhooks", "profiles_dir",
    "default_tenant", "tenants",
)  # fmt: skip

_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_MIN_SECRET = 16  # characters of auth_secret: it is the HMAC key of every nonce
_MIN_TOTP_KEY = 32  # characters of [security] totp_key: 32 random bytes in base64 are 44


def load_settings(
    path: str | Path | None = None, *, env: Mapping[str, str] | None = None
) -> Settings:
    """Load settings from a TOML file and ``SIPGW_*`` environment overrides.

    ``path`` None means ``$SIPGW_CONFIG`` if set, else the embedded gateway/default.toml
    (a demo tenant). ``env`` defaults to ``os.environ``. Raises ``ConfigError`` on the
    first problem, naming the key (and the variable, for an override).
    """
    env = os.environ if env is None else env
    source = _locate(path, env)
    ctx = Context(base_dir=source.base_dir)
    raw = _parse_toml(source)
    try:
        apply_env(raw, env, ctx)
        return _settings(Table(raw, "", ctx), source.name)
    except ConfigError as exc:
        raise ctx.attribute(exc) from None


@dataclass(frozen=True)
class _Source:
    name: str  # for messages and Settings.source
    text: str
    base_dir: Path  # relative paths in the file start here
    error_key: str  # the key a read or syntax error is reported under


def _locate(path: str | Path | None, env: Mapping[str, str]) -> _Source:
    """The file to read: ``path``, else ``$SIPGW_CONFIG``, else the embedded default."""
    if path is None and not env.get(CONFIG_ENV):
        text = resources.files("gateway").joinpath("default.toml").read_text("utf-8")
        return _Source(EMBEDDED_DEFAULT, text, Path.cwd(), EMBEDDED_DEFAULT)
    if path is None:
        file = Path(env[CONFIG_ENV]).expanduser()
        error_key = f"{CONFIG_ENV} ({file})"
    else:
        file = Path(path).expanduser()
        error_key = str(file)
    try:
        text = file.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(error_key, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(error_key, f"not UTF-8 text: {exc.reason}") from None
    return _Source(str(file), text, file.resolve().parent, error_key)


def _parse_toml(source: _Source) -> dict[str, Any]:
    try:
        return tomllib.loads(source.text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source.error_key, f"invalid TOML: {exc}") from None


def _settings(root: Table, source: str) -> Settings:
    root.check_keys(TOP_LEVEL_KEYS)
    node = NodeSettings(
        **root.table("node").read(
            {
                "name": _node_name,
                "workers": lambda v: v.integer(1, 64),
                "worker_port_step": lambda v: v.integer(0, 10_000),
            }
        )
    )
    sip = _sip(root.table("sip"))
    http_table = root.table("http")
    http = HttpSettings(
        **http_table.read(
            {
                "listen": _http_listen,
                "tls_cert": existing_file,
                "tls_key": existing_file,
                "tls_min_version": lambda v: v.choice(("1.2", "1.3")),
                "allow_plain_http": lambda v: v.boolean(),
            }
        )
    )
    _check_tls_files(http_table, http)
    redis = redis_settings(root.table("redis"))
    log = LogSettings(**root.table("log").read(_LOG_READERS))
    events = EventsSettings(**root.table("events").read(_EVENTS_READERS))
    security = SecuritySettings(**root.table("security").read(_SECURITY_READERS))
    recognition = RecognitionSettings(**root.table("recognition").read(_RECOGNITION_READERS))
    dial = DialSettings(**root.table("dial").read(_DIAL_READERS))
    web = _web(root.table("web"))
    webhooks = _webhooks(root.table("webhooks"))
    blf = blf_settings(root.table("blf"))
    dir_value = root.get("profiles_dir")
    profiles_dir = DEFAULT_PROFILES_DIR if dir_value is None else dir_value.path()
    profiles = load_profiles(profiles_dir, "profiles_dir")
    all_tenants = tenants(root.get("tenants"), profiles)
    fallback = default_tenant(root.get("default_tenant"), all_tenants)
    monitor = _monitor(root.table("monitor"), all_tenants, sip)
    _check_totp_key(security, sip, all_tenants)
    settings = Settings(
        node=node, sip=sip, http=http, redis=redis, log=log, events=events,
        security=security, monitor=monitor, recognition=recognition, dial=dial, web=web,
        blf=blf, webhooks=webhooks, tenants=all_tenants, profiles=profiles,
        default_tenant=fallback, profiles_dir=profiles_dir, source=source,
    )  # fmt: skip
    # Last: the demo and published passwords stay on the loopback, plain HTTP too.
    check_exposure(settings, root.data, embedded=source == EMBEDDED_DEFAULT)
    return settings


def _check_totp_key(
    security: SecuritySettings, sip: SipSettings, all_tenants: tuple[Tenant, ...]
) -> None:
    """A tenant that obliges its users to enrol needs a key to seal their TOTP secrets
    with (security/totp_sealing.py): without one nobody there could ever log in."""
    if security.totp_key or sip.auth_secret:
        return
    for n, tenant in enumerate(all_tenants):
        if tenant.totp.policy in ("admins", "everyone"):
            raise ConfigError(
                "security.totp_key",
                f"required when a tenant's second factor is compulsory "
                f'(tenants[{n}].totp.policy = "{tenant.totp.policy}"): it seals the TOTP '
                "secrets in Redis ([sip] auth_secret would serve too)",
            )


def _web(table: Table) -> WebSettings:
    table.check_keys(("frame_ancestors",))
    return WebSettings(frame_ancestors=frame_ancestors(table))


def _node_name(v: Value) -> str:
    name = v.text()
    if not _NODE_NAME.fullmatch(name):
        raise v.error(f"must be 1-64 letters, digits, '.', '_' or '-', got {show(name)}")
    return name


# --- [sip] -------------------------------------------------------------------------


def _sip(table: Table) -> SipSettings:
    readers: dict[str, Callable[[Value], Any]] = {
        "listen": _listen,
        "advertise": lambda v: uri_host(v.parse(normalize_host)),
        "t1": lambda v: v.number(),
        "t2": lambda v: v.number(),
        "t4": lambda v: v.number(),
        "max_message_size": lambda v: v.integer(1024, 16 * 1024 * 1024),
        "max_headers": lambda v: v.integer(1),
        "max_header_line": lambda v: v.integer(1),
        "max_connections": lambda v: v.integer(1),
        "max_connections_per_source": lambda v: v.integer(0),
        "idle_timeout": lambda v: v.number(),
        "tls_cert": existing_file,
        "tls_key": existing_file,
        "tls_min_version": lambda v: v.choice(("1.2", "1.3")),
        "tls_ciphers": _tls_ciphers,
        "max_forwards": lambda v: v.integer(1, 255),
        "registrar_min_expires": lambda v: v.integer(1),
        "registrar_max_expires": lambda v: v.integer(1),
        "registrar_default_expires": lambda v: v.integer(1),
        "max_contacts_per_aor": lambda v: v.integer(1),
        "nonce_ttl": lambda v: v.number(),
        "auth_secret": _auth_secret,
        "fork_timeout": lambda v: v.number(),
        "user_agent": plain_text,
        "flood_max_requests": lambda v: v.integer(0, 1_000_000),
        "flood_window": lambda v: v.number(),
        "flood_exempt": _trusted_proxies,  # the same forms: "ip" or a CIDR network
        "deny_destinations": _trusted_proxies,
        "auth_max_failures": lambda v: v.integer(1),
        "auth_max_failures_per_source": lambda v: v.integer(1),
        "auth_max_failures_per_user": lambda v: v.integer(1),
        "auth_backoff": lambda v: v.number(),
        "auth_backoff_max": lambda v: v.number(),
        "auth_failure_window": lambda v: v.number(),
    }
    sip = SipSettings(**table.read(readers))
    _check_order(table, ("t1", sip.t1), ("t2", sip.t2))
    _check_order(
        table,
        ("registrar_min_expires", sip.registrar_min_expires),
        ("registrar_default_expires", sip.registrar_default_expires),
        ("registrar_max_expires", sip.registrar_max_expires),
    )
    _check_tls_files(table, sip)
    _check_advertise(table, sip)
    return sip


def _listen(v: Value) -> tuple[ListenSpec, ...]:
    items = v.items(allow_single=True)
    if not items:
        raise v.error("must list at least one address")
    specs: list[ListenSpec] = []
    for item in items:
        spec = item.parse(ListenSpec.parse)
        if spec in specs:
            first = f"{v.key}[{specs.index(spec)}]"
            raise item.error(f'duplicate of {first} ("{spec}")')
        specs.append(spec)
    return tuple(specs)


def _tls_ciphers(v: Value) -> str:
    ciphers = v.text()
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(ciphers)
    except ssl.SSLError:
        raise v.error(f"OpenSSL selects no cipher from {show(ciphers)}") from None
    return ciphers


def _auth_secret(v: Value) -> str:
    secret = v.text(secret=True)
    if len(secret) < _MIN_SECRET:
        # Never echo the secret itself.
        raise v.error(f"must be at least {_MIN_SECRET} characters (it signs every nonce)")
    return secret


def _check_order(table: Table, *named: tuple[str, float]) -> None:
    """Require named[0] <= named[1] <= ...; blame a key the operator actually set."""
    for (low_name, low), (high_name, high) in itertools.pairwise(named):
        if low <= high:
            continue
        if high_name in table.data or low_name not in table.data:
            raise ConfigError(
                table.key_of(high_name),
                f"must be at least {table.key_of(low_name)} ({show(low)}), got {show(high)}",
            )
        raise ConfigError(
            table.key_of(low_name),
            f"must not exceed {table.key_of(high_name)} ({show(high)}), got {show(low)}",
        )


def _check_tls_files(table: Table, sip: SipSettings | HttpSettings) -> None:
    if sip.tls_cert is not None and sip.tls_key is None:
        raise ConfigError(
            table.key_of("tls_key"), f"required when {table.key_of('tls_cert')} is set"
        )
    if sip.tls_key is not None and sip.tls_cert is None:
        raise ConfigError(
            table.key_of("tls_cert"), f"required when {table.key_of('tls_key')} is set"
        )
    if sip.tls_cert is None or sip.tls_key is None:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A password callback that gives nothing: an encrypted key fails here instead of
        # prompting on a terminal that a service does not have.
        context.load_cert_chain(sip.tls_cert, sip.tls_key, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            table.key_of("tls_cert"),
            f"cannot load the certificate with {table.key_of('tls_key')} "
            f"(PEM certificate chain + unencrypted matching key expected): {exc}",
        ) from None


def _check_advertise(table: Table, sip: SipSettings) -> None:
    if sip.advertise is not None:
        return
    for i, spec in enumerate(sip.listen):
        if spec.is_wildcard:
            raise ConfigError(
                table.key_of("advertise"),
                f'required when {table.key_of("listen")}[{i}] ("{spec}") binds every '
                "interface: give the address peers should send to",
            )


# --- [http], [log] ---------------------------------------------------------------


def _http_listen(v: Value) -> str:
    text = v.text()
    try:
        host, port = split_host_port(text)
    except ValueError:
        port = None
    if port is None:
        raise v.error(f'expected "host:port" (IPv6 in brackets), got {show(text)}')
    return f"{uri_host(host)}:{port}"


_LOG_READERS: dict[str, Callable[[Value], Any]] = {
    "level": lambda v: v.choice(_LOG_LEVELS, fold=str.upper),
    "format": lambda v: v.choice(("json", "text")),
}


# --- [events], [security] ----------------------------------------------------------------

_EVENTS_READERS: dict[str, Callable[[Value], Any]] = {
    "stream_maxlen": lambda v: v.integer(1),
    "stream_max_age": lambda v: v.number(allow_zero=True),
    "max_queue": lambda v: v.integer(1),
    "max_buffer": lambda v: v.integer(1),
    "subscriber_queue": lambda v: v.integer(1),
    "max_subscribers_per_tenant": lambda v: v.integer(1),
    "heartbeat": lambda v: v.number(),
    "trim_interval": lambda v: v.number(),
}


def _trusted_proxies(v: Value) -> tuple[str, ...]:
    entries: list[str] = []
    for item in v.items(allow_single=True):
        entry = item.parse(normalize_match)
        if parse_match(entry)[1] is not None:
            raise item.error(f'expected "ip" or a CIDR network (no port), got {show(entry)}')
        entries.append(entry)
    return tuple(entries)


def _totp_key(v: Value) -> str:
    key = v.text(secret=True)
    if len(key) < _MIN_TOTP_KEY:
        # Never echo the key itself.
        raise v.error(
            f"must be at least {_MIN_TOTP_KEY} characters (it seals every TOTP secret; "
            "e.g. openssl rand -base64 32)"
        )
    return key


_SECURITY_READERS: dict[str, Callable[[Value], Any]] = {
    "token_ttl": lambda v: v.number(),
    "login_max_failures": lambda v: v.integer(1),
    "login_max_failures_per_source": lambda v: v.integer(1),
    "login_lockout": lambda v: v.number(),
    "audit_maxlen": lambda v: v.integer(1),
    "trusted_proxies": _trusted_proxies,
    "totp_key": _totp_key,
    "totp_previous_key": _totp_key,
}


_DIAL_READERS: dict[str, Callable[[Value], Any]] = {
    "ring_timeout": lambda v: v.number(),
    "connect_timeout": lambda v: v.number(),
    "rate_per_minute": lambda v: v.integer(1, 10_000),
    "burst": lambda v: v.integer(1, 10_000),
    "max_requests": lambda v: v.integer(1, 1_000_000),
    "keep_finished": lambda v: v.number(),
}

_WEBHOOK_READERS: dict[str, Callable[[Value], Any]] = {
    "enabled": lambda v: v.boolean(),
    "max_per_tenant": lambda v: v.integer(1, 1000),
    "allow_loopback": lambda v: v.boolean(),
    "allow_private": lambda v: v.boolean(),
    "tls_ca": existing_file,
    "connect_timeout": lambda v: v.number(),
    "timeout": lambda v: v.number(),
    "max_response_bytes": lambda v: v.integer(1024, 16 * 1024 * 1024),
    "retry_initial": lambda v: v.number(),
    "retry_max": lambda v: v.number(),
    "disable_after": lambda v: v.number(),
    "lease_ttl": lambda v: v.number(),
    "refresh_interval": lambda v: v.number(),
}


def _webhooks(table: Table) -> WebhookSettings:
    found = WebhookSettings(**table.read(_WEBHOOK_READERS))
    if found.retry_max < found.retry_initial:
        raise ConfigError(table.key_of("retry_max"), "must be at least retry_initial")
    if found.refresh_interval * 2 > found.lease_ttl:
        # A lease is renewed every refresh_interval: two chances before it lapses.
        raise ConfigError(table.key_of("lease_ttl"), "must be at least 2 x refresh_interval")
    return found


_RECOGNITION_READERS: dict[str, Callable[[Value], Any]] = {
    "cache_size": lambda v: v.integer(0, 10_000_000),
    "cache_ttl": lambda v: v.number(allow_zero=True),
    "negative_ttl": lambda v: v.number(allow_zero=True),
    "max_batch": lambda v: v.integer(1, 50_000),
    "max_pending": lambda v: v.integer(1),
}


# --- [monitor] -------------------------------------------------------------------------


def _monitor(table: Table, all_tenants: tuple[Tenant, ...], sip: SipSettings) -> MonitorSettings:
    """The HEP intake: where it listens and which senders are accepted for which tenant."""
    table.check_keys(("hep_listen", "sources"))
    listen_value = table.get("hep_listen")
    hep_listen = None if listen_value is None else _hep_listen(listen_value, sip)
    sources_value = table.get("sources")
    sources: list[MonitorSource] = []
    if sources_value is not None:
        taken: list[tuple[str, str]] = []  # (address, key) of the sources read so far
        for t in sources_value.tables():
            source = _monitor_source(t, all_tenants)
            key = t.key_of("address")
            for entry, other_key in taken:
                if overlaps(parse_match(source.address), parse_match(entry)):
                    raise ConfigError(
                        key,
                        f"{show(source.address)} overlaps {other_key} ({show(entry)}): a "
                        "HEP sender must identify one source",
                    )
            taken.append((source.address, key))
            if source.auth_key is None and hep_listen is not None and not _loopback(hep_listen):
                # HEP is UDP: a sender's address is forged with one datagram, and only
                # the loopback is out of reach of forged packets from the network.
                raise ConfigError(
                    t.key_of("auth_key"),
                    f'required when monitor.hep_listen ("{hep_listen}") is not a loopback '
                    "address: a HEP sender's address alone can be forged",
                )
            sources.append(source)
    return MonitorSettings(hep_listen=hep_listen, sources=tuple(sources))


def _loopback(spec: ListenSpec) -> bool:
    try:
        return ipaddress.ip_address(spec.host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _hep_listen(v: Value, sip: SipSettings) -> ListenSpec:
    spec = v.parse(ListenSpec.parse)
    if spec.transport != "udp":
        raise v.error(f'only udp is supported (like "udp:0.0.0.0:9060"), got "{spec}"')
    for i, sip_spec in enumerate(sip.listen):
        same_port = sip_spec.transport == "udp" and sip_spec.port == spec.port != 0
        hosts_clash = sip_spec.host == spec.host or sip_spec.is_wildcard or spec.is_wildcard
        if same_port and hosts_clash:
            raise v.error(f'"{spec}" clashes with sip.listen[{i}] ("{sip_spec}")')
    return spec


def _monitor_source(t: Table, all_tenants: tuple[Tenant, ...]) -> MonitorSource:
    t.check_keys(("address", "tenant", "trunks", "auth_key"))
    address = t.require("address").parse(normalize_match)
    tenant_value = t.require("tenant")
    tenant = tenant_value.text()
    ids = [x.id for x in all_tenants]
    if tenant not in ids:
        raise tenant_value.error(
            f"unknown tenant {show(tenant)} (tenants: {', '.join(ids) or 'none'})"
        )
    trunks_value = t.get("trunks")
    trunks: tuple[str, ...] = ()
    if trunks_value is not None:
        trunks = tuple(item.parse(normalize_match) for item in trunks_value.items())
    key_value = t.get("auth_key")
    auth_key = None if key_value is None else _hep_auth_key(key_value)
    return MonitorSource(address=address, tenant=tenant, trunks=trunks, auth_key=auth_key)


# The HEP decoder (gateway/calls/hep.py, MAX_AUTH_KEY_LEN) refuses longer keys.
_MAX_HEP_AUTH_KEY = 256


def _hep_auth_key(v: Value) -> str:
    key = v.text(secret=True)
    # Never echo the key itself. It is guessed with one datagram per try, unthrottled.
    if len(key) < _MIN_SECRET:
        raise v.error(f"must be at least {_MIN_SECRET} characters")
    if len(key.encode()) > _MAX_HEP_AUTH_KEY:
        raise v.error(f"must be at most {_MAX_HEP_AUTH_KEY} bytes (UTF-8)")
    return key
