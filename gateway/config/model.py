"""The settings model: frozen, fully typed dataclasses with their defaults.

Building these by hand (tests, tools) skips the loader's validation; ``load_settings``
is the way to get a checked ``Settings``. Secrets never show in a repr: HA1 hashes and
``auth_secret`` print as ``'***'`` and a Redis URL's password is masked; plain SIP
passwords are not kept at all (the loader turns them into HA1 hashes), and a plain API
password is kept only for the directory's seed, never shown (``User``).
"""

from __future__ import annotations

import functools
import ipaddress
import platform
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from gateway.config.blf import BlfPolicy, BlfSettings
from gateway.config.caller_display import CallerDisplayPolicy
from gateway.config.dial_policy import DialPolicy
from gateway.config.second_factor import SecondFactor
from gateway.config.syntax import (
    is_wildcard,
    mask_url_password,
    normalize_host,
    parse_match,
    parse_port,
    show,
    uri_host,
)
from gateway.config.templates import Template
from gateway.sip.digest import compute_ha1

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Transport = Literal["udp", "tcp", "tls"]
TRANSPORTS: tuple[Transport, ...] = ("udp", "tcp", "tls")
_TRANSPORT_BY_NAME: dict[str, Transport] = {t: t for t in TRANSPORTS}
AutoAnswer = Literal["call-info", "answer-mode", "alert-info", "none"]
ProfileKind = Literal["phone", "trunk"]

# A ``user_agent_patterns`` entry of a profile: literal words, optionally anchored at the
# header's start by "^". Never a regular expression: the header is the peer's own text
# (gateway/proxy/ua_profiles.py).
USER_AGENT_PATTERN = re.compile(r"\^?[A-Za-z0-9][A-Za-z0-9 ._/+-]{0,63}")
# Characters of a User-Agent/Server value that patterns are matched against (and that a
# binding keeps): enough for every product token seen, bounded whatever a peer sends.
MAX_USER_AGENT = 128


def user_agent_regex(pattern: str) -> re.Pattern[str]:
    """A checked ``USER_AGENT_PATTERN`` as a literal search, case-insensitive, where a word
    starts ("PJSIP" matches "PJSIP/2.14" and "x PJSIP", not "NOTPJSIP"). Escaped literal
    text with one fixed-width look-behind: no backtracking beyond the pattern's length."""
    if pattern.startswith("^"):
        return re.compile("^" + re.escape(pattern[1:]), re.IGNORECASE)
    return re.compile("(?<![A-Za-z0-9])" + re.escape(pattern), re.IGNORECASE)


UserRole = Literal["admin", "user"]
USER_ROLES: tuple[UserRole, ...] = ("admin", "user")

# A strong TLS 1.2 suite list: forward secrecy (ECDHE) and AEAD ciphers only, so no CBC
# and no RSA key exchange. TLS 1.3 suites are all AEAD and are not governed by this.
DEFAULT_TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"

_LISTEN = re.compile(r"(?P<transport>[A-Za-z]+):(?P<host>\[[^\]]*\]|[^:\[\]]+):(?P<port>[^:]+)")


def _masked_repr(self: DataclassInstance) -> str:
    """A dataclass repr in which fields marked ``metadata={"mask": fn}`` are masked."""
    parts = []
    for f in fields(self):
        if not f.repr:
            continue
        value = getattr(self, f.name)
        mask: Callable[[Any], str] | None = f.metadata.get("mask")
        shown = repr(value) if mask is None or value is None else mask(value)
        parts.append(f"{f.name}={shown}")
    return f"{type(self).__name__}({', '.join(parts)})"


def _stars(_: object) -> str:
    return "'***'"


def _url_without_password(url: str) -> str:
    return repr(mask_url_password(url))


_SECRET = types.MappingProxyType({"mask": _stars})


@dataclass(frozen=True)
class ListenSpec:
    """One SIP listening socket, written "transport:host:port" (IPv6 in brackets)."""

    transport: Transport
    host: str  # as sockets take it: IPv6 without brackets
    port: int

    @classmethod
    def parse(cls, text: str) -> ListenSpec:
        """Parse "udp:127.0.0.1:5060", "tcp:[::1]:5060"; raises ValueError(problem)."""
        m = _LISTEN.fullmatch(text)
        if m is None and text.count(":") > 3 and "[" not in text:
            example = "tcp:[::1]:5060"
            raise ValueError(f"IPv6 address must be in brackets (like {example}): {show(text)}")
        if m is None:
            raise ValueError(f'expected "transport:host:port", got {show(text)}')
        transport = _TRANSPORT_BY_NAME.get(m["transport"].lower())
        if transport is None:
            raise ValueError(
                f"transport must be one of {', '.join(TRANSPORTS)}, got {show(m['transport'])}"
            )
        return cls(transport, normalize_host(m["host"]), parse_port(m["port"]))

    @property
    def uri_host(self) -> str:
        """The host as written in a URI or Via (IPv6 in brackets)."""
        return uri_host(self.host)

    @property
    def is_wildcard(self) -> bool:
        """Binds every interface (0.0.0.0 or ::): needs ``sip.advertise``."""
        return is_wildcard(self.host)

    def __str__(self) -> str:
        return f"{self.transport}:{self.uri_host}:{self.port}"


def _default_listen() -> tuple[ListenSpec, ...]:
    return (
        ListenSpec("udp", "127.0.0.1", 5060),
        ListenSpec("tcp", "127.0.0.1", 5060),
        ListenSpec("tls", "127.0.0.1", 5061),
    )


@dataclass(frozen=True)
class NodeSettings:
    """This gateway instance; ``name`` goes into every event's ``node``."""

    name: str = field(default_factory=platform.node)  # the host name, as gethostname()
    # Worker processes sharing the SIP ports (SO_REUSEPORT); see docs/workers.md.
    workers: int = 1
    # Each worker's own ports (in its Via and Record-Route): listen port + step * (i+1);
    # 0 = free ports picked at start (fine on loopback, not behind a firewall).
    worker_port_step: int = 0


# Never a destination of SIP: unspecified, link-local (cloud metadata), multicast,
# reserved and broadcast addresses.
DEFAULT_DENY_DESTINATIONS: tuple[str, ...] = (
    "0.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "fe80::/10",
    "ff00::/8",
)


@dataclass(frozen=True, repr=False)
class SipSettings:
    """SIP transport, transaction, registrar and authentication settings."""

    listen: tuple[ListenSpec, ...] = field(default_factory=_default_listen)
    advertise: str | None = None  # host put in Via/Record-Route (IPv6 in brackets)
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    max_message_size: int = 65535
    max_headers: int = 128
    max_header_line: int = 8192
    max_connections: int = 4096
    # Accepted TCP/TLS connections open at once per source address (IPv6: per /64), so
    # one client cannot take all of max_connections; trunks and flood_exempt are not
    # limited. 0 = no limit.
    max_connections_per_source: int = 32
    idle_timeout: float = 300.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_min_version: Literal["1.2", "1.3"] = "1.2"
    tls_ciphers: str = DEFAULT_TLS_CIPHERS
    max_forwards: int = 70
    registrar_min_expires: int = 60
    registrar_max_expires: int = 3600
    registrar_default_expires: int = 3600
    max_contacts_per_aor: int = 10
    nonce_ttl: float = 300.0
    auth_secret: str | None = field(default=None, metadata=_SECRET)
    fork_timeout: float = 180.0
    user_agent: str = "sipgw/0.1"
    # Flood protection (gateway/proxy/flood.py): messages (requests and responses)
    # counted per source address (IPv6: per /64) in windows of flood_window seconds;
    # beyond flood_max_requests the source's messages are dropped until the window
    # ends. 0 = off. Configured trunks' source addresses are never counted, nor
    # flood_exempt ("ip" or CIDR): by default the loopback, where only our own host's
    # processes (a co-located SBC) send from.
    flood_max_requests: int = 200
    flood_window: float = 2.0
    flood_exempt: tuple[str, ...] = ("127.0.0.0/8", "::1")
    # Where SIP may never be sent (gateway/proxy/destinations.py), besides our own
    # services and, for anything but configured trunks and proven flows, the loopback.
    deny_destinations: tuple[str, ...] = DEFAULT_DENY_DESTINATIONS
    # Digest guessing (gateway/proxy/auth_throttle.py): after auth_max_failures failed
    # digests of one user from one source, that pair waits auth_backoff seconds, doubled
    # at each further failure up to auth_backoff_max; a source failing for many users, or
    # a user failing from many sources, is slowed the same way, except for the sources
    # where the user authenticated successfully. Failures are forgotten after
    # auth_failure_window seconds.
    auth_max_failures: int = 5
    auth_max_failures_per_source: int = 20
    auth_max_failures_per_user: int = 20
    auth_backoff: float = 1.0
    auth_backoff_max: float = 300.0
    auth_failure_window: float = 900.0

    __repr__ = _masked_repr

    def advertised_host(self, listen: ListenSpec) -> str:
        """The host to put in Via and Record-Route for messages sent from ``listen``."""
        return self.advertise if self.advertise is not None else listen.uri_host


@dataclass(frozen=True)
class HttpSettings:
    """The HTTP API (REST, WebSocket/SSE events, metrics, health)."""

    listen: str = "127.0.0.1:8080"  # "host:port", IPv6 in brackets
    tls_cert: Path | None = None  # HTTPS when set (with tls_key): tokens and contacts
    tls_key: Path | None = None  # must never cross a network in clear text
    tls_min_version: Literal["1.2", "1.3"] = "1.2"  # HTTPS and WSS
    # Plain HTTP on an address that is not the loopback: only when a TLS-terminating
    # reverse proxy stands in front (the loader refuses it otherwise).
    allow_plain_http: bool = False

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert is not None else "http"

    @property
    def host(self) -> str:
        """The host to bind (IPv6 without brackets)."""
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


RedisMode = Literal["standalone", "cluster", "sentinel"]


@dataclass(frozen=True, repr=False)
class RedisSettings:
    """Where the event streams and the contact index live: one server (`url`), a Redis
    Cluster (`cluster_nodes`, the seeds it is discovered from) or a master watched by
    Sentinel (`sentinel_service` on the `sentinels`). The credentials and the TLS
    options apply to every mode; ``gateway/redis_link.py`` makes the client for each.
    The loader admits exactly one mode (a cluster or Sentinel leaves `url` at its
    default, unused)."""

    url: str = field(default="redis://127.0.0.1:6379/0", metadata={"mask": _url_without_password})
    cluster_nodes: tuple[tuple[str, int], ...] = ()  # (host, port) seeds
    sentinel_service: str | None = None  # the master's name in the sentinels' configuration
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_password: str | None = field(default=None, metadata=_SECRET)  # for the sentinels
    username: str | None = None  # ACL user; None: "default" (or the url's)
    password: str | None = field(default=None, metadata=_SECRET)  # or in the url
    tls: bool = False  # the url's rediss:// sets it too
    tls_ca: Path | None = None  # None: the system's trusted CAs
    tls_cert: Path | None = None  # a client certificate, for a server that asks for one
    tls_key: Path | None = None
    tls_verify: bool = True  # False: no check of the server's certificate (tests only)

    __repr__ = _masked_repr

    @property
    def mode(self) -> RedisMode:
        if self.cluster_nodes:
            return "cluster"
        if self.sentinel_service is not None:
            return "sentinel"
        return "standalone"

    @property
    def endpoints(self) -> tuple[tuple[str, int], ...]:
        """The (host, port) the gateway is configured to reach Redis at: the seeds or
        the sentinels, or the url's host (none for a unix socket). A cluster's other
        nodes and the master a sentinel names are learnt at run time."""
        if self.cluster_nodes:
            return self.cluster_nodes
        if self.sentinel_service is not None:
            return self.sentinels
        parts = urlsplit(self.url)
        if parts.scheme in ("redis", "rediss") and parts.hostname:
            return ((parts.hostname, parts.port or 6379),)
        return ()


@dataclass(frozen=True)
class LogSettings:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    format: Literal["json", "text"] = "json"


@dataclass(frozen=True)
class Profile:
    """How to deal with one kind of peer; loaded from ``sip_profiles/<name>.toml``."""

    name: str
    kind: ProfileKind
    caller_id: tuple[str, ...] = ("P-Asserted-Identity", "From")
    region: str | None = None  # overrides the tenant's region for number normalization
    auto_answer: AutoAnswer = "none"
    # Header lines to add to an INVITE that the peer should answer by itself;
    # "{host}" is replaced by the gateway's advertised host.
    auto_answer_headers: tuple[str, ...] = ()
    supports_refer: bool = False
    user_agent_patterns: tuple[str, ...] = ()  # USER_AGENT_PATTERN words, case-insensitive
    # Digest algorithms offered to this kind of peer, one challenge each, in this order.
    # RFC 8760 wants the strongest first; a peer that reads only the first challenge and
    # knows only MD5 (sipp 3.6, older firmware) needs MD5 alone.
    digest_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    # The headers whose display-name this kind of phone shows for an incoming call
    # (config/caller_display.py); None: the tenant's [tenants.caller_display] headers.
    caller_display: tuple[str, ...] | None = None
    notes: str = ""

    def matches_user_agent(self, user_agent: str) -> bool:
        """True when a User-Agent/Server header value looks like this kind of peer (its
        first MAX_USER_AGENT characters: the rest is never looked at)."""
        text = user_agent[:MAX_USER_AGENT]
        return any(rx.search(text) for rx in self._user_agent_regexes)

    @functools.cached_property
    def _user_agent_regexes(self) -> tuple[re.Pattern[str], ...]:
        return tuple(user_agent_regex(p) for p in self.user_agent_patterns)

    def render_auto_answer_headers(self, host: str) -> tuple[str, ...]:
        return tuple(line.replace("{host}", host) for line in self.auto_answer_headers)


@dataclass(frozen=True, repr=False)
class User:
    """A user of a tenant: a SIP phone line, and optionally an HTTP API login.

    The SIP password is not kept, only its HA1 hashes; the API is served by an Argon2id
    hash (``api_password_hash``). ``api_password`` keeps the API password as the file
    gave it (never shown in a repr) for one purpose: each load hashes it with a fresh
    salt, so the directory's seed checks it against the hash stored in Redis to tell an
    unchanged password from a changed one (``gateway.security.directory``). ``role``
    and ``extensions`` govern what the user's API tokens may see: a "user" sees its own
    extension plus ``extensions``, an "admin" sees every extension of the tenant.
    """

    username: str
    extension: str
    ha1_md5: str = field(metadata=_SECRET)
    ha1_sha256: str = field(metadata=_SECRET)
    display_name: str = ""
    # None: the file names no profile, the phone's User-Agent chooses one
    # (gateway/proxy/ua_profiles.py); a name always wins over the User-Agent.
    profile: str | None = None
    api_password_hash: str | None = field(default=None, metadata=_SECRET)
    role: UserRole = "user"
    extensions: tuple[str, ...] = ()  # watched besides its own (role "user")
    # None when the file gave api_password_hash (that hash is compared as it is).
    api_password: str | None = field(default=None, repr=False, compare=False, metadata=_SECRET)

    __repr__ = _masked_repr

    @classmethod
    def from_password(
        cls, username: str, extension: str, realm: str, password: str, **fields: Any
    ) -> User:
        """A user with HA1 hashes computed from ``password`` (for tests and tools; the
        loader does the same). The password itself is not kept."""
        return cls(
            username=username,
            extension=extension,
            ha1_md5=compute_ha1(username, realm, password, "MD5"),
            ha1_sha256=compute_ha1(username, realm, password, "SHA-256"),
            **fields,
        )

    def ha1(self, algorithm: str) -> str | None:
        """The HA1 for a digest algorithm name ("MD5", "SHA-256"), None if unsupported."""
        return {"MD5": self.ha1_md5, "SHA-256": self.ha1_sha256}.get(algorithm.upper())

    @property
    def visible_extensions(self) -> frozenset[str]:
        """The extensions this user's API tokens may see; empty for an admin (= all)."""
        if self.role == "admin":
            return frozenset()
        return frozenset((self.extension, *self.extensions))


@dataclass(frozen=True)
class Did:
    """A public number (E.164) routed to an extension of the tenant."""

    number: str
    extension: str


@dataclass(frozen=True)
class Trunk:
    """A SIP trunk: where outbound calls go and whose source addresses are trusted."""

    name: str
    host: str
    port: int = 5060
    transport: Transport = "udp"
    profile: str = "generic-trunk"
    match: tuple[str, ...] = ()  # "ip", "ip:port", "[v6]:port" or CIDR; normalized
    outbound: bool = True  # candidate for users' calls out (file order, skipped while down)
    options_interval: float = 30.0  # seconds between OPTIONS probes; 0 = no probing
    options_down_after: int = 3  # failed probes in a row that mark the trunk down
    options_up_after: int = 2  # answered probes in a row that mark it up again
    # Final responses that count as a failed probe. Any other final response proves the
    # trunk is there (RFC 3261 §11.2); 503 says it cannot take requests now (§21.5.4).
    options_failure_codes: tuple[int, ...] = (503,)

    def matches(self, address: str, port: int) -> bool:
        """True when a message from ``address``:``port`` comes from this trunk."""
        ip = ipaddress.ip_address(address.strip("[]"))
        for entry in self.match:
            network, want_port = parse_match(entry)
            if ip in network and (want_port is None or want_port == port):
                return True
        return False


ScreenPopWhen = Literal["hit", "miss", "always"]


@dataclass(frozen=True)
class ScreenPop:
    """A screen-pop URL template and when it is rendered into an event."""

    name: str
    when: ScreenPopWhen
    template: Template


@dataclass(frozen=True)
class Recognition:
    """A tenant's caller recognition: which contact fields are stored, the look-up
    budget, and the screen-pop templates (gateway/recognition)."""

    enabled: bool = True
    fields: tuple[str, ...] = ("name",)  # the only contact fields the gateway stores
    budget_ms: float = 20.0  # call.offered waits at most this long for the answer
    timeout_ms: float = 2000.0  # hard cap: after it, call.recognized says "timeout"
    screen_pop: tuple[ScreenPop, ...] = ()

    def pops_for(self, status: str) -> tuple[ScreenPop, ...]:
        """The templates rendered for a look-up that ended with ``status``."""
        if status not in ("hit", "miss"):
            return ()
        return tuple(p for p in self.screen_pop if p.when in (status, "always"))


@dataclass(frozen=True)
class Tenant:
    """A customer organization: its SIP domains, users, numbers and trunks."""

    id: str
    name: str
    domains: tuple[str, ...]
    region: str = "NL"
    realm: str = ""  # "" means the first domain (the loader always fills it in)
    users: tuple[User, ...] = ()
    dids: tuple[Did, ...] = ()
    trunks: tuple[Trunk, ...] = ()
    recognition: Recognition = field(default_factory=Recognition)
    dial: DialPolicy = field(default_factory=DialPolicy)  # click-to-dial destinations
    blf: BlfPolicy = field(default_factory=BlfPolicy)  # what dialog-info shows (config/blf.py)
    # The profile of a user who names none when the phone's User-Agent matches no
    # profile's patterns (docs/configuration.md "Phone profiles").
    default_phone_profile: str = "generic-phone"
    totp: SecondFactor = field(default_factory=SecondFactor)  # config/second_factor.py
    # The recognized caller's name on the callee's phone (config/caller_display.py).
    caller_display: CallerDisplayPolicy = field(default_factory=CallerDisplayPolicy)
    # The browser (gateway/api/cors.py, gateway/api/web.py): origins whose scripts may
    # call the API with this tenant's tokens, and pages that may frame /embed?tenant=id.
    cors_origins: tuple[str, ...] = ()
    frame_ancestors: tuple[str, ...] = ()
    _by_username: Mapping[str, User] = field(init=False, repr=False, compare=False)
    _by_extension: Mapping[str, User] = field(init=False, repr=False, compare=False)
    _by_did: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The object stays frozen: derived values are set once, here. The indexes serve
        # the lookups the proxy does per request.
        if not self.realm and self.domains:
            object.__setattr__(self, "realm", self.domains[0])
        object.__setattr__(self, "_by_username", {u.username: u for u in self.users})
        object.__setattr__(self, "_by_extension", {u.extension: u for u in self.users})
        object.__setattr__(self, "_by_did", {d.number: d.extension for d in self.dids})

    def user_by_username(self, username: str) -> User | None:
        return self._by_username.get(username)

    def user_by_extension(self, extension: str) -> User | None:
        return self._by_extension.get(extension)

    def extension_for_did(self, number: str) -> str | None:
        """The extension an E.164 number is routed to, None if it is not ours."""
        return self._by_did.get(number)

    def trunk_by_name(self, name: str) -> Trunk | None:
        return next((t for t in self.trunks if t.name == name), None)


@dataclass(frozen=True)
class EventsSettings:
    """The tenant event streams and the subscriptions fed from them (gateway/bus)."""

    stream_maxlen: int = 100_000  # entries kept per tenant stream (approximate trim)
    stream_max_age: float = 7 * 24 * 3600.0  # seconds kept; 0 = no age limit
    max_queue: int = 10_000  # events waiting to be written to Redis, per node
    max_buffer: int = 100_000  # events buffered while Redis is unreachable, per node
    subscriber_queue: int = 1000  # events queued per subscriber before it is cut off
    max_subscribers_per_tenant: int = 200  # per node
    heartbeat: float = 15.0  # seconds between keep-alives on idle subscriptions
    # Seconds between retention rounds that trim every tenant stream by stream_max_age,
    # idle tenants included (one round per node, on its first worker).
    trim_interval: float = 60.0

    @property
    def max_age(self) -> float | None:
        """``stream_max_age`` with 0 read as "no age limit" (None)."""
        return self.stream_max_age or None


@dataclass(frozen=True)
class WebhookSettings:
    """Signed webhooks (gateway/webhooks, docs/events.md "Webhooks"): delivery limits,
    retries, and where deliveries may go (the SSRF rules)."""

    enabled: bool = True  # deliver on this node (its first worker); False: API only
    max_per_tenant: int = 10  # subscriptions per tenant
    # Where a webhook may point. Loopback (and plain http:// to it) and private networks
    # are refused unless allowed here: a tenant admin must not reach our own network.
    allow_loopback: bool = False
    allow_private: bool = False
    tls_ca: Path | None = None  # a CA file to trust besides the system's (a private CA)
    connect_timeout: float = 5.0  # seconds to resolve, connect and finish TLS
    timeout: float = 10.0  # seconds for the whole request and its answer
    max_response_bytes: int = 65_536  # of a receiver's answer; the rest is not read
    retry_initial: float = 1.0  # seconds before the first retry, doubled at each one ...
    retry_max: float = 300.0  # ... up to this (each wait jittered)
    # Seconds of failures in a row (no success in between) after which the subscription
    # is disabled and a webhook.disabled event says so.
    disable_after: float = 5 * 24 * 3600.0
    lease_ttl: float = 15.0  # seconds a node holds a subscription without renewing
    refresh_interval: float = 5.0  # seconds between a node's looks for subscriptions


@dataclass(frozen=True)
class WebSettings:
    """The web client served at ``/`` and ``/embed`` (gateway/api/web.py)."""

    # Pages (origins, "https://*.example.com" allowed) that may frame /embed when it is
    # opened without ?tenant=, before anyone has logged in; a tenant adds its own.
    frame_ancestors: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecognitionSettings:
    """The node's caller recognition: its local contact cache and the sync API limits."""

    cache_size: int = 100_000  # numbers (hits and misses) cached per node
    cache_ttl: float = 300.0  # seconds a cached contact is trusted (pub/sub invalidates sooner)
    negative_ttl: float = 60.0  # seconds a "no such contact" answer is cached
    max_batch: int = 5000  # items (upserts + deletes) per POST /v1/contacts:batch
    max_pending: int = 10_000  # look-ups in flight per node; beyond it: status "error"


@dataclass(frozen=True)
class DialSettings:
    """Click-to-dial (`POST /v1/calls`): how long each step may take, and the limits."""

    ring_timeout: float = 30.0  # seconds the user's phone may ring before we give up
    # Seconds from the phone's answer until the destination answers (REFER: the final
    # NOTIFY; 3PCC: the destination's 2xx, at most 30 s, see docs/click-to-dial.md).
    connect_timeout: float = 120.0
    rate_per_minute: int = 10  # dial requests per user per minute (token bucket) ...
    burst: int = 5  # ... of this depth
    max_requests: int = 10_000  # dial requests kept in memory per node
    keep_finished: float = 3600.0  # seconds a finished request stays readable (GET)


@dataclass(frozen=True, repr=False)
class SecuritySettings:
    """HTTP API logins, tokens, audit log and brute-force throttling."""

    token_ttl: float = 12 * 3600.0  # seconds a login token is valid
    login_max_failures: int = 5  # per (tenant, username) within login_lockout seconds
    login_max_failures_per_source: int = 20  # per source address (IPv6: per /64)
    login_lockout: float = 300.0  # seconds: the counting window and the lockout
    audit_maxlen: int = 100_000  # entries kept per tenant audit stream (approximate trim)
    # Reverse proxies whose X-Forwarded-For is believed ("ip" or CIDR): the client's
    # address is then the last address in that header not in this list.
    trusted_proxies: tuple[str, ...] = ()
    # What the TOTP secrets in Redis are sealed with (security/totp_sealing.py): the
    # current key seals and opens, the previous one only opens (a rotation). Neither
    # set: [sip] auth_secret serves; none of the three: no enrolment.
    totp_key: str | None = field(default=None, metadata=_SECRET)
    totp_previous_key: str | None = field(default=None, metadata=_SECRET)

    __repr__ = _masked_repr

    def is_trusted_proxy(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return False
        return any(ip in parse_match(entry)[0] for entry in self.trusted_proxies)


@dataclass(frozen=True, repr=False)
class MonitorSource:
    """A PBX (or SBC) mirroring its SIP traffic to us over HEP, and the tenant it serves."""

    address: str  # "ip", "ip:port", "[v6]:port" or CIDR: the HEP sender; normalized
    tenant: str  # the id of a configured tenant
    trunks: tuple[str, ...] = ()  # the monitored PBX's trunks ("ip:port", "ip" or CIDR)
    # The HEP auth key (chunk 0x000e) every packet of this sender must carry; None:
    # the address alone identifies it (only allowed on a loopback hep_listen).
    auth_key: str | None = field(default=None, metadata=_SECRET)

    __repr__ = _masked_repr

    def matches(self, address: str, port: int) -> bool:
        """True when a HEP packet from ``address``:``port`` comes from this source."""
        return _matches((self.address,), address, port)

    def is_trunk(self, address: str, port: int) -> bool:
        """True when a captured SIP message's address:port is one of the PBX's trunks, so
        a call arriving from it is inbound and one sent to it is outbound."""
        return _matches(self.trunks, address, port)


def _matches(entries: tuple[str, ...], address: str, port: int) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    for entry in entries:
        network, want_port = parse_match(entry)
        if ip in network and (want_port is None or want_port == port):
            return True
    return False


@dataclass(frozen=True)
class MonitorSettings:
    """Monitor mode: SIP seen through a HEP (Homer) feed instead of in the path."""

    hep_listen: ListenSpec | None = None  # "udp:host:port"; None = no HEP intake
    sources: tuple[MonitorSource, ...] = ()

    def source_for(self, address: str, port: int) -> MonitorSource | None:
        """The source a HEP packet from ``address``:``port`` belongs to (entries never
        overlap, so there is at most one); None means it is not accepted."""
        return next((s for s in self.sources if s.matches(address, port)), None)


def domain_key(host: str) -> str:
    """How a request's host is compared with tenant domains: lower case, IPv6 bracketed."""
    host = host.strip().lower().rstrip(".")
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclass(frozen=True)
class Settings:
    """Everything the gateway is configured with. Obtain it from ``load_settings``."""

    node: NodeSettings = field(default_factory=NodeSettings)
    sip: SipSettings = field(default_factory=SipSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    log: LogSettings = field(default_factory=LogSettings)
    events: EventsSettings = field(default_factory=EventsSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    recognition: RecognitionSettings = field(default_factory=RecognitionSettings)
    dial: DialSettings = field(default_factory=DialSettings)
    web: WebSettings = field(default_factory=WebSettings)
    blf: BlfSettings = field(default_factory=BlfSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    tenants: tuple[Tenant, ...] = ()
    profiles: Mapping[str, Profile] = field(default_factory=lambda: types.MappingProxyType({}))
    default_tenant: str | None = None  # used when a request's domain matches no tenant
    profiles_dir: Path | None = None
    source: str = ""  # the file the settings came from, for logs
    _by_domain: Mapping[str, Tenant] = field(init=False, repr=False, compare=False)
    _by_id: Mapping[str, Tenant] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_domain = {domain_key(d): t for t in self.tenants for d in t.domains}
        object.__setattr__(self, "_by_domain", by_domain)
        object.__setattr__(self, "_by_id", {t.id: t for t in self.tenants})

    def tenant_by_domain(self, host: str) -> Tenant | None:
        """The tenant owning a SIP domain (the host part of an AOR), exact match only."""
        return self._by_domain.get(domain_key(host))

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        return self._by_id.get(tenant_id)

    def tenant_for_domain(self, host: str) -> Tenant | None:
        """The tenant owning ``host``, else the ``default_tenant``, else None."""
        tenant = self.tenant_by_domain(host)
        if tenant is None and self.default_tenant is not None:
            tenant = self.tenant_by_id(self.default_tenant)
        return tenant
