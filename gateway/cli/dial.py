"""`sipgw dial FROM TO`: click-to-dial from a terminal, through the HTTP API.

Starts a dial request (`POST /v1/calls`) with a user's token and follows it until it
is finished (or `--no-wait`), printing each state it passes through:

    $ SIPGW_TOKEN=… sipgw dial 201 0612345678
    dial 0190…: calling_phone (refer, auto-answer answer-mode)
    dial 0190…: phone_ringing
    dial 0190…: connecting
    dial 0190…: connected: Connected

Exit status: 0 connected (or ended normally), 1 failed or cancelled, 2 refused by the
API (bad number, phone not registered, …), unreachable, or a plain http:// URL to a
host that is not the loopback (the token would cross the network in clear text).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from gateway.cli.watch import UnsafeURL, WatchError, WatchOptions, check_url, login

POLL_INTERVAL = 0.5


class DialFailed(Exception):
    pass


def _call(
    url: str, method: str, token: str, body: dict[str, Any] | None, context: ssl.SSLContext | None
) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:
            answer: dict[str, Any] = json.loads(resp.read() or b"{}")
            return answer
    except urllib.error.HTTPError as err:
        try:
            detail = json.loads(err.read() or b"{}").get("detail", err.reason)
        except ValueError:
            detail = err.reason
        raise DialFailed(f"{err.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as err:
        raise DialFailed(f"cannot reach {url}: {err}") from None


def _describe(state: dict[str, Any]) -> str:
    text = f"dial {state['id']}: {state['state']}"
    if state["state"] == "calling_phone":
        text += f" ({state['mode']}, auto-answer {state['auto_answer']})"
    cause = state.get("cause")
    if cause and state.get("finished"):
        text += f": {cause['message']}"
    return text


def dial(args: argparse.Namespace, token: str) -> int:
    base = args.url.rstrip("/")
    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    body: dict[str, Any] = {"from": args.source, "to": args.destination}
    if args.request_id:
        body["request_id"] = args.request_id
    if args.no_auto_answer:
        body["auto_answer"] = False
    try:
        state = _call(f"{base}/v1/calls", "POST", token, body, context)
    except DialFailed as err:
        print(f"sipgw dial: refused: {err}", file=sys.stderr)
        return 2
    print(_describe(state), flush=True)
    if args.no_wait:
        return 0
    deadline = time.monotonic() + args.timeout
    seen = state["state"]
    try:
        while not state["finished"] and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
            state = _call(f"{base}/v1/calls/{state['id']}", "GET", token, None, context)
            if state["state"] != seen:
                seen = state["state"]
                print(_describe(state), flush=True)
    except DialFailed as err:
        print(f"sipgw dial: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _call(f"{base}/v1/calls/{state['id']}", "DELETE", token, None, context)
        print(f"dial {state['id']}: cancelled", flush=True)
        return 1
    if not state["finished"]:
        print(f"sipgw dial: still {seen} after {args.timeout:.0f} s", file=sys.stderr)
        return 1
    return 0 if state["state"] in ("connected", "ended") else 1


def cmd_dial(args: argparse.Namespace) -> int:
    try:
        check_url(args.url)  # before a password or token is sent anywhere
    except UnsafeURL as err:
        print(f"sipgw dial: {err}", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("SIPGW_TOKEN")
    password = os.environ.get("SIPGW_PASSWORD")
    if token is None:
        if args.username is None or password is None:
            print(
                "sipgw dial: give --token (or SIPGW_TOKEN), or --username with the password "
                "in SIPGW_PASSWORD",
                file=sys.stderr,
            )
            return 2
        options = WatchOptions(
            url=args.url, tenant=args.tenant, username=args.username, password=password
        )
        try:
            token = login(options)
        except WatchError as err:
            print(f"sipgw dial: {err}", file=sys.stderr)
            return 2
    return dial(args, token)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "dial", help="click-to-dial: ring your phone (FROM), then connect it to TO"
    )
    parser.add_argument("source", metavar="FROM", help="the extension whose phone rings first")
    parser.add_argument("destination", metavar="TO", help="the number, as you would type it")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's HTTP API")
    parser.add_argument("--token", help="bearer token (default: $SIPGW_TOKEN)")
    parser.add_argument("--tenant", help="tenant to log in to")
    parser.add_argument("--username", help="log in as this user; password in $SIPGW_PASSWORD")
    parser.add_argument("--cafile", help="CA certificate(s) to verify an HTTPS gateway with")
    parser.add_argument("--request-id", help="idempotency key: the same key starts one call")
    parser.add_argument("--no-auto-answer", action="store_true", help="let the phone ring instead")
    parser.add_argument("--no-wait", action="store_true", help="print the request and exit")
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to follow the request (180)"
    )
    parser.set_defaults(func=cmd_dial)
