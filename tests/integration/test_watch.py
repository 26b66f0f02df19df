"""`sipgw watch` against a real WebSocket server that behaves like the gateway."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.parse
from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection, serve

from gateway.cli.watch import SUBPROTOCOL, WatchOptions, events_url, format_row, watch
from tests.peers.ports import free_port


def event(seq: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "seq": seq,
        "type": kind,
        "event_id": f"id-{seq}",
        "occurred_at": "2026-11-22T10:11:12.345678Z",
        "tenant": "acme",
        "node": "n1",
        "call_id": "0190c0de-aaaa-7bbb-8ccc-1234567890ab",
        "direction": "inbound",
        "calling": {"number_raw": "0612345678", "number_e164": "+31612345678"},
        "called": {"number_raw": "+31201234567"},
        "extension": "201",
        **extra,
    }


def test_a_row_is_readable() -> None:
    row = format_row(
        event(
            "1-0",
            "call.cleared",
            state="cleared",
            duration_ms=61500,
            cause={"normalized": "normal"},
        )
    )
    assert row.startswith("10:11:12.345  call.cleared")
    assert "+31612345678" in row and "in " in row and "201" in row
    assert "cleared normal 61.5s" in row


def test_events_url_carries_filters_and_cursor() -> None:
    url = events_url(
        WatchOptions(url="https://gw.example:8443", extensions=["201"], types=["call.offered"]),
        "5-1",
    )
    parts = urllib.parse.urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("wss", "gw.example:8443", "/v1/events")
    assert urllib.parse.parse_qs(parts.query) == {
        "extension": ["201"],
        "type": ["call.offered"],
        "since": ["5-1"],
    }


async def test_watch_resumes_after_a_disconnect_without_loss_or_repeat() -> None:
    port = free_port(udp=False)
    requests: list[tuple[str, str | None, str | None]] = []
    stream = [event(f"{i}-0", "call.offered") for i in range(1, 7)]

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(ws.request.path).query)
        since = query.get("since", [None])[0]
        requests.append((ws.request.path, ws.request.headers.get("Authorization"), since))
        start = 0 if since is None else [e["seq"] for e in stream].index(since) + 1
        await ws.send(json.dumps({"type": "sipgw.heartbeat"}))
        # The first connection drops after three events; the second serves the rest.
        for item in stream[start : start + 3] if len(requests) == 1 else stream[start:]:
            await ws.send(json.dumps(item))
        if len(requests) == 1:
            await ws.close()
            return
        await ws.wait_closed()

    async with serve(
        handler, "127.0.0.1", port, subprotocols=[websockets.Subprotocol(SUBPROTOCOL)]
    ):
        out = io.StringIO()
        options = WatchOptions(
            url=f"http://127.0.0.1:{port}", token="t0k", raw_json=True, max_events=6
        )
        printed = await asyncio.wait_for(watch(options, out), 10)
    assert printed == 6
    seqs = [json.loads(line)["seq"] for line in out.getvalue().splitlines()]
    assert seqs == ["1-0", "2-0", "3-0", "4-0", "5-0", "6-0"]
    assert [r[2] for r in requests] == [None, "3-0"]
    assert all(r[1] == "Bearer t0k" for r in requests)
