"""Parsers for the small textual forms used in settings: hosts, "host:port", trunk matches.

Each returns a normalized value or raises ``ValueError`` whose message is the problem
alone; the loader adds the key path. Kept free of the settings model so the model and
the loader can both use them.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from urllib.parse import urlsplit, urlunsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_PORT = re.compile(r"[0-9]{1,5}")


def show(value: object) -> str:
    """Render a value the way it would be written in TOML, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def describe(value: object) -> str:
    """A value for a type error: scalars as written, tables and arrays by kind only, so a
    misplaced table holding a password is never echoed."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return show(value)


def mask_url_password(url: str) -> str:
    """The URL with its password (if any) replaced by ***, safe to log or show."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url.partition(":")[0] + ":…"  # unparsable: keep only the scheme
    if password is None:
        return url
    host_part = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host_part}"))


def normalize_host(text: str) -> str:
    """A hostname (lower-cased), an IPv4 address, or an IPv6 address (bare, compressed).

    Brackets around IPv6 are accepted and removed: this is the form sockets bind to.
    """
    candidate = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        pass
    if candidate is not text:
        raise ValueError(f"not an IPv6 address in brackets: {show(text)}")
    host = text.lower()
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise ValueError(f"not a host name or IP address: {show(text)}")
    return host.rstrip(".")


def uri_host(host: str) -> str:
    """The host as written in a SIP URI or a Via: IPv6 addresses go in brackets."""
    return f"[{host}]" if ":" in host else host


def is_ip(host: str) -> bool:
    """True for an IPv4 or IPv6 literal (IPv6 with or without brackets)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def is_wildcard(host: str) -> bool:
    """True for an address that binds every interface (0.0.0.0, ::): not advertisable."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    """True for "localhost" and loopback addresses (127.0.0.0/8, ::1; IPv6 with or
    without brackets). Other names are not resolved, so they count as not loopback."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_host_port(text: str) -> tuple[str, int | None]:
    """Split "host", "host:port", "[v6]" or "[v6]:port"; a bare IPv6 address has no port.

    The host is returned normalized (see ``normalize_host``). Port 0-65535.
    """
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"unclosed bracket in {show(text)}")
        host_part, rest = text[: close + 1], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected {show(rest)} after {show(host_part)}")
        port_part = rest[1:] if rest else None
    elif text.count(":") == 1:
        host_part, port_part = text.split(":")
    else:
        # no colon, or several: a bare IPv6 address, which cannot carry a port
        host_part, port_part = text, None
    host = normalize_host(host_part)
    return host, None if port_part is None else parse_port(port_part)


def parse_port(text: str) -> int:
    """A decimal port number 0-65535 (0 lets the operating system choose, for tests)."""
    if not _PORT.fullmatch(text) or int(text) > 65535:
        raise ValueError(f"port must be 0-65535, got {show(text)}")
    return int(text)


def normalize_match(text: str) -> str:
    """Normalize a trunk match entry: "ip", "ip:port", "[v6]:port" or a CIDR network."""
    network, port = parse_match(text)
    if network.num_addresses > 1:
        return str(network)
    address = str(network.network_address)
    return address if port is None else f"{uri_host(address)}:{port}"


@lru_cache(maxsize=1024)
def parse_match(text: str) -> tuple[IPNetwork, int | None]:
    """A trunk match entry as (network, port or None for any port).

    A single address is a /32 (or /128) network. Host names are refused: trust is given
    to addresses, and a name would be resolved at a time nobody controls.
    """
    if "/" in text:
        try:
            network = ipaddress.ip_network(text)
        except ValueError as exc:
            raise ValueError(_cidr_problem(text, exc)) from None
        return network, None
    try:
        host, port = split_host_port(text)
    except ValueError:
        raise ValueError(
            f'expected "ip", "ip:port" or a CIDR network like "10.0.0.0/24", got {show(text)}'
        ) from None
    if not is_ip(host):
        raise ValueError(f"must be an IP address, not a host name: {show(text)}")
    return ipaddress.ip_network(host), port


def _cidr_problem(text: str, exc: ValueError) -> str:
    """Say why a CIDR is refused, suggesting the network when only host bits are wrong."""
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return f"invalid CIDR {show(text)}: {exc}"
    return f"invalid CIDR {show(text)}: host bits set (did you mean {show(str(network))}?)"


def overlaps(a: tuple[IPNetwork, int | None], b: tuple[IPNetwork, int | None]) -> bool:
    """True when some source address and port would match both entries."""
    (net_a, port_a), (net_b, port_b) = a, b
    if net_a.version != net_b.version or not net_a.overlaps(net_b):
        return False
    return port_a is None or port_b is None or port_a == port_b
