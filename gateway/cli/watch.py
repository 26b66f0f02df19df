"""``sipgw watch``: live call events as a readable table in the terminal.

A WebSocket subscriber like any CRM plug-in: it logs in (or takes a token), subscribes
to ``/v1/events`` with the JSON subprotocol, prints one line per event, and on a
disconnect resumes from the last event it printed, so nothing is missed or repeated.

It carries a password or a token, so a plain ``http://`` (or ``ws://``) URL is refused
unless it names the loopback: use ``https://`` to reach any other host.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import websockets

from gateway.config.syntax import is_loopback

SUBPROTOCOL = "sipgw.json.v1"
COLUMNS = ("time", "event", "call", "dir", "from", "to", "ext", "detail")
WIDTHS = (12, 17, 8, 4, 18, 18, 5, 0)


class WatchError(Exception):
    """Something the person running `sipgw watch` must fix (bad URL, bad credentials)."""


class UnsafeURL(WatchError):
    """A URL the clients refuse before sending anything (exit status 2)."""


def check_url(url: str) -> None:
    """Refuse a URL that would send a password or token in clear text over a network:
    ``http://``/``ws://`` are accepted for the loopback only (127.0.0.0/8, ::1,
    localhost); elsewhere ``https://`` (or ``wss://``) is required."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise UnsafeURL(
            f"--url must be https://host[:port] (or http:// to the loopback), got {url!r}"
        )
    if scheme in ("https", "wss") or is_loopback(parts.hostname):
        return
    raise UnsafeURL(
        f"refusing {scheme}:// to {parts.hostname}: the password and token would cross the "
        "network in clear text; use https:// (plain http:// is for the loopback only)"
    )


@dataclass
class WatchOptions:
    url: str  # http://host:port of the gateway's HTTP API
    token: str | None = None
    tenant: str | None = None
    username: str | None = None
    password: str | None = None
    extensions: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    since: str | None = None
    raw_json: bool = False
    max_events: int | None = None  # stop after this many (tests, scripts)


def login(options: WatchOptions) -> str:
    check_url(options.url)
    body = json.dumps(
        {"tenant": options.tenant, "username": options.username, "password": options.password}
    ).encode()
    request = urllib.request.Request(
        options.url.rstrip("/") + "/v1/auth/login",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return str(json.load(resp)["token"])
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:200]
        raise WatchError(f"login refused ({err.code}): {detail}") from None
    except (urllib.error.URLError, OSError) as err:
        raise WatchError(f"cannot reach {options.url}: {err}") from None


def events_url(options: WatchOptions, since: str | None) -> str:
    parts = urllib.parse.urlsplit(options.url)
    scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
    query: list[tuple[str, str]] = [("extension", e) for e in options.extensions]
    query += [("type", t) for t in options.types]
    if since:
        query.append(("since", since))
    return urllib.parse.urlunsplit(
        (scheme, parts.netloc, "/v1/events", urllib.parse.urlencode(query), "")
    )


def _party(party: dict[str, Any] | None) -> str:
    if not party:
        return ""
    return str(party.get("number_e164") or party.get("number_raw") or party.get("uri") or "")


def format_row(event: dict[str, Any]) -> str:
    stamp = str(event.get("occurred_at", ""))[11:23]
    cause = event.get("cause") or {}
    lookup = event.get("lookup") or {}
    contact = lookup.get("contact") or {}
    detail = " ".join(
        part
        for part in (
            str(event.get("state", "")),
            str(cause.get("normalized", "")) if cause else "",
            f"{event['duration_ms'] / 1000:.1f}s" if event.get("duration_ms") is not None else "",
            "missed" if event.get("missed") else "",
            str(contact.get("name", "")) if contact else "",
        )
        if part
    )
    cells = (
        stamp,
        str(event.get("type", "")),
        str(event.get("call_id", ""))[-8:],
        {"inbound": "in", "outbound": "out", "internal": "int"}.get(
            str(event.get("direction", "")), ""
        ),
        _party(event.get("calling")),
        _party(event.get("called")),
        str(event.get("extension") or ""),
        detail,
    )
    return "  ".join(c[:w].ljust(w) if w else c for c, w in zip(cells, WIDTHS, strict=True))


def header() -> str:
    return "  ".join(c.ljust(w) if w else c for c, w in zip(COLUMNS, WIDTHS, strict=True))


async def watch(
    options: WatchOptions,
    out: TextIO = sys.stdout,
    connect: Callable[..., Any] = websockets.connect,
) -> int:
    """Print events until interrupted (or ``max_events``); returns how many were printed."""
    check_url(options.url)
    token = options.token or login(options)
    last_seq = options.since
    printed = 0
    backoff = 0.5
    if not options.raw_json:
        print(header(), file=out, flush=True)
    while True:
        try:
            async with connect(
                events_url(options, last_seq),
                subprotocols=[SUBPROTOCOL],
                additional_headers={"Authorization": f"Bearer {token}"},
                open_timeout=10,
            ) as ws:
                backoff = 0.5
                async for frame in ws:
                    message = json.loads(frame)
                    kind = str(message.get("type", ""))
                    if kind in ("sipgw.overflow", "sipgw.closed", "sipgw.unavailable"):
                        # The gateway ends the subscription; resume from the last event.
                        last_seq = message.get("last_seq") or last_seq
                        continue
                    if kind == "sipgw.lost":
                        raise WatchError(f"events were lost: {message.get('detail')}")
                    if kind == "sipgw.unauthorized":
                        # Revoked, expired or user removed: resuming would only be refused.
                        raise WatchError(f"subscription ended: {message.get('reason')}")
                    if kind.startswith("sipgw."):
                        continue
                    last_seq = message.get("seq") or last_seq
                    print(
                        json.dumps(message) if options.raw_json else format_row(message),
                        file=out,
                        flush=True,
                    )
                    printed += 1
                    if options.max_events is not None and printed >= options.max_events:
                        return printed
        except websockets.InvalidStatus as err:
            status = err.response.status_code
            if status in (401, 403):
                raise WatchError(f"subscription refused ({status}): check the token") from None
            raise WatchError(f"subscription refused ({status})") from None
        except (OSError, websockets.ConnectionClosed, TimeoutError) as err:
            # Resume from the last printed event: the gateway replays the gap.
            print(
                f"-- disconnected ({type(err).__name__}), resuming after {last_seq} --",
                file=sys.stderr,
                flush=True,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
