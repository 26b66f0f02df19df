"""Origins for the browser: CORS allow-lists and the pages that may frame ``/embed``.

Both end up in HTTP response headers (``Access-Control-Allow-Origin``,
``Content-Security-Policy: frame-ancestors``), so each entry is checked to be exactly an
origin and nothing that could add a header or a policy directive: a scheme (http or
https), a host and an optional port, written the way a browser sends the ``Origin``
header (lower case, no default port, no path, no trailing slash).
"""

from __future__ import annotations

from gateway.config.reader import Table, Value
from gateway.config.syntax import normalize_host, parse_port, show, uri_host

_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(text: str, *, wildcard: bool = False) -> str:
    """``scheme://host[:port]`` normalized as browsers send it; ValueError otherwise.
    ``wildcard`` also allows ``https://*.example.com`` (a CSP host source)."""
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        raise ValueError(f'must be an origin like "https://crm.example.com", got {show(text)}')
    if not rest or any(c in rest for c in "/?#@ ;,'\"\\"):
        raise ValueError(
            f"must be only scheme://host[:port] (no path, user, spaces or quotes), got {show(text)}"
        )
    host_part, port = _host_and_port(rest, text)
    star = wildcard and host_part.startswith("*.")
    if star:
        host_part = host_part[2:]
    try:
        host = normalize_host(host_part)
    except ValueError:
        what = 'a host (or "*." and a domain)' if wildcard else "a host"
        raise ValueError(f"must name {what} after {scheme}://, got {show(text)}") from None
    shown = ("*." if star else "") + uri_host(host)
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        shown += f":{port}"
    return f"{scheme}://{shown}"


def _host_and_port(rest: str, text: str) -> tuple[str, int | None]:
    if rest.startswith("["):
        close = rest.find("]")
        host, after = (rest, "") if close < 0 else (rest[: close + 1], rest[close + 1 :])
    else:
        host, colon, port_text = rest.partition(":")
        after = colon + port_text
    if not after:
        return host, None
    if not after.startswith(":"):
        raise ValueError(f"unexpected {show(after)} in {show(text)}")
    port = parse_port(after[1:])
    if port == 0:
        raise ValueError(f"port must be 1-65535, got {show(text)}")
    return host, port


def origins(v: Value | None, *, wildcard: bool = False) -> tuple[str, ...]:
    """An array of origins, each checked and normalized, duplicates refused."""
    if v is None:
        return ()
    result: list[str] = []
    for item in v.items():
        if item.data == "*" or item.data == "'none'":
            raise item.error(
                "list each origin; neither \"*\" nor 'none' (leave the list empty for none)"
            )
        normalized = item.parse(lambda text: origin(text, wildcard=wildcard))
        if normalized in result:
            raise item.error(
                f"duplicate of {v.key}[{result.index(normalized)}] ({show(normalized)})"
            )
        result.append(normalized)
    return tuple(result)


def frame_ancestors(t: Table) -> tuple[str, ...]:
    """``frame_ancestors`` of a table: the pages allowed to frame ``/embed``."""
    return origins(t.get("frame_ancestors"), wildcard=True)


def cors_origins(t: Table) -> tuple[str, ...]:
    """``cors_origins`` of a tenant: web pages whose scripts may call the API."""
    return origins(t.get("cors_origins"))
