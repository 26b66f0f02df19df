"""The ``[redis]`` table: one server, a Redis Cluster, or a master watched by Sentinel.

Exactly one mode is named: ``url`` (the default, one server), ``cluster_nodes`` (seed
URLs; the client learns the other nodes from them), or ``sentinel_service`` with
``sentinels``. A second mode is an error naming both keys, so a file and an environment
override that disagree are caught rather than one silently winning.

``username``, ``password`` and the TLS keys apply to every mode: to the server, to each
cluster node, to the master and replicas Sentinel names (the sentinels themselves take
``sentinel_password``). Where a mode is written as URLs, TLS is their ``rediss://``
scheme, and ``tls`` may only agree with it; Sentinel is configured by ``host:port``, so
there ``tls = true`` turns TLS on (for the sentinels and the master alike). The other TLS
keys without TLS are an error: they would be ignored.

Passwords are never echoed in an error and print as ``'***'`` in the settings' repr;
a password inside ``url`` is masked in both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from gateway.config.errors import ConfigError
from gateway.config.model import RedisSettings
from gateway.config.reader import Table, Value, existing_file, plain_text
from gateway.config.syntax import mask_url_password, show, split_host_port

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
# The keys that name a mode, in the order a conflict is reported.
_MODES = {"url": "standalone", "cluster_nodes": "cluster", "sentinel_service": "sentinel",
          "sentinels": "sentinel"}  # fmt: skip
_TLS_OPTIONS = ("tls_ca", "tls_cert", "tls_key", "tls_verify")


def redis_settings(table: Table) -> RedisSettings:
    values = table.read(_READERS)
    mode = _mode(table, values)
    if mode == "sentinel":
        _require_both(table, values, "sentinel_service", "sentinels")
    elif "sentinel_password" in values:
        raise ConfigError(
            table.key_of("sentinel_password"),
            "only with Sentinel (sentinel_service and sentinels)",
        )
    if mode == "cluster":
        tls, values["cluster_nodes"] = values["cluster_nodes"]
        values["tls"] = _agreeing_tls(table, values, tls, "cluster_nodes")
    elif mode == "standalone":
        url = values.get("url", RedisSettings.url)
        values["tls"] = _agreeing_tls(table, values, urlsplit(url).scheme == "rediss", "url")
        _once(table, values, url)
    if not values.get("tls", False):
        for name in _TLS_OPTIONS:
            if name in values:
                raise ConfigError(
                    table.key_of(name),
                    "only with TLS (a rediss:// url or cluster_nodes, or tls = true for Sentinel)",
                )
    _require_pair(table, values, "tls_cert", "tls_key")
    return RedisSettings(**values)


def _mode(table: Table, values: dict[str, Any]) -> str:
    first: str | None = None
    for name, mode in _MODES.items():
        if name not in values:
            continue
        if first is not None and _MODES[first] != mode:
            raise ConfigError(
                table.key_of(name),
                f"cannot be combined with {table.key_of(first)}: [redis] names one server "
                "(url), a cluster (cluster_nodes) or Sentinel (sentinel_service and "
                "sentinels)",
            )
        first = first or name
    return "standalone" if first is None else _MODES[first]


def _require_both(table: Table, values: dict[str, Any], *names: str) -> None:
    for name in names:
        if name not in values:
            given = next(n for n in names if n in values)
            raise ConfigError(table.key_of(name), f"required with {table.key_of(given)}")


def _require_pair(table: Table, values: dict[str, Any], *names: str) -> None:
    if any(n in values for n in names):
        _require_both(table, values, *names)


def _agreeing_tls(table: Table, values: dict[str, Any], by_scheme: bool, source: str) -> bool:
    """TLS as the URLs' scheme says; a ``tls`` key that says otherwise is an error."""
    if values.get("tls", by_scheme) != by_scheme:
        scheme = "rediss://" if by_scheme else "not rediss://"
        raise ConfigError(
            table.key_of("tls"),
            f"disagrees with {table.key_of(source)} ({scheme}): TLS is the URL's scheme, "
            "rediss:// for TLS",
        )
    return by_scheme


def _once(table: Table, values: dict[str, Any], url: str) -> None:
    """A credential in the url and in its own key: one of them would be ignored."""
    parts = urlsplit(url)
    for name, in_url in (("username", parts.username), ("password", parts.password)):
        if name in values and in_url:
            raise ConfigError(
                table.key_of(name),
                f"{table.key_of('url')} holds a {name} already: give it in one place",
            )


def redis_url(v: Value) -> str:
    url = v.text()
    if not _is_redis_url(url):
        # The URL may hold a password: it is masked in the message.
        raise v.error(
            "must be a redis://host[:port][/db], rediss://… or unix://path URL, "
            f"got {show(mask_url_password(url))}"
        )
    return url


def _is_redis_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    if parts.scheme == "unix":
        return bool(parts.path)
    return parts.scheme in ("redis", "rediss") and bool(parts.hostname)


def _cluster_nodes(v: Value) -> tuple[bool, tuple[tuple[str, int], ...]]:
    """(TLS, the seeds): ``redis://host[:port]`` or ``rediss://…``, one scheme for all."""
    items = v.items(allow_single=True)
    if not items:
        raise v.error("must list at least one node")
    schemes: set[str] = set()
    nodes: list[tuple[str, int]] = []
    for item in items:
        scheme, node = _cluster_node(item)
        schemes.add(scheme)
        if len(schemes) > 1:
            raise item.error("every node must have the same scheme (rediss:// is TLS)")
        nodes.append(node)
    return schemes == {"rediss"}, tuple(nodes)


def _cluster_node(item: Value) -> tuple[str, tuple[str, int]]:
    text = item.text()
    expected = 'must be "redis://host[:port]" or "rediss://host[:port]"'
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise item.error(f"{expected}, got {show(mask_url_password(text))}") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise item.error(f"{expected}, got {show(mask_url_password(text))}")
    if parts.username or parts.password:
        # One set of credentials for every node, kept where it is masked.
        raise item.error("must not hold credentials: set redis.username and redis.password")
    if parts.path not in ("", "/", "/0") or parts.query or parts.fragment:
        raise item.error(f"{expected} (a cluster has database 0 only), got {show(text)}")
    return parts.scheme, (parts.hostname, DEFAULT_PORT if port is None else port)


def _sentinels(v: Value) -> tuple[tuple[str, int], ...]:
    items = v.items(allow_single=True)
    if not items:
        raise v.error("must list at least one sentinel")
    found: list[tuple[str, int]] = []
    for item in items:
        host, port = item.parse(split_host_port)
        found.append((host, DEFAULT_SENTINEL_PORT if port is None else port))
    return tuple(found)


def _password(v: Value) -> str:
    secret = v.text(secret=True)
    # Never echo it; a control character would break the AUTH command.
    if not secret or any(ord(c) < 0x20 or ord(c) == 0x7F for c in secret):
        raise v.error("must be non-empty text without control characters")
    return secret


_READERS: dict[str, Callable[[Value], Any]] = {
    "url": redis_url,
    "cluster_nodes": _cluster_nodes,
    "sentinel_service": plain_text,
    "sentinels": _sentinels,
    "sentinel_password": _password,
    "username": plain_text,
    "password": _password,
    "tls": lambda v: v.boolean(),
    "tls_ca": existing_file,
    "tls_cert": existing_file,
    "tls_key": existing_file,
    "tls_verify": lambda v: v.boolean(),
}
