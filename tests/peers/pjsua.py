"""Async driver for one PJSIP user agent running in its own subprocess (pjsua_agent.py).

    async with await PjsuaAgent.start("alice", transport="tcp") as alice:
        status = await alice.register("sip:127.0.0.1:5060", "201", "acme.test", "s3cret")
        call = await alice.call("sip:202@acme.test")
        await alice.wait_call_state(call, "CONFIRMED", timeout=5)
        await alice.hangup(call)

Every wait has a timeout and raises PeerError with the agent's recent output and the tail
of its PJSIP log file. The test's event loop never blocks: PJSIP runs in the child.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from .process import PeerError, PeerProcess, in_ci
from .tls import make_self_signed

AGENT = Path(__file__).with_name("pjsua_agent.py")


def require_pjsua2() -> None:
    """Skip (or fail under CI=true) when the pjsua2 module (pjsua2-python wheel) is absent."""
    if importlib.util.find_spec("pjsua2") is None:
        msg = "the pjsua2 module is not installed (pip install pjsua2-python)"
        if in_ci():
            pytest.fail(f"{msg}; CI must install it")
        pytest.skip(msg)


CALL_STATES = ("CALLING", "INCOMING", "EARLY", "CONNECTING", "CONFIRMED", "DISCONNECTED")


class PjsuaAgent:
    """One PJSIP UA. Create with `await PjsuaAgent.start(...)`; use as `async with`."""

    def __init__(self, name: str, proc: PeerProcess, workdir: tempfile.TemporaryDirectory[str],
                 transport: str) -> None:
        self.name = name
        self.proc = proc
        self.transport = transport
        self._workdir = workdir
        self.workdir = Path(workdir.name)
        self.events: list[dict[str, Any]] = []
        self.replies: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._incoming_cursor = 0
        self._auto_answer: int | None = None
        self.ready: dict[str, Any] = {}
        self.port = 0
        self.host = "127.0.0.1"
        self.uri = ""
        self.registered_aor: str | None = None

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        name: str,
        *,
        transport: str = "udp",
        local_port: int | None = None,
        host: str = "127.0.0.1",
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        auto_answer: int | None = None,
        honor_auto_answer_headers: bool = False,
        ring: bool = True,
        rtp_port: int = 0,
        log_level: int = 5,
        timeout: float = 10.0,
    ) -> PjsuaAgent:
        """Start the agent. `transport` is its one SIP transport, bound to `host` at
        `local_port` (0/None: any free port, see `.port`). host="::1" works for REGISTER
        and OPTIONS only: the wheel's PJSIP has no IPv6 media, so an INVITE fails with
        PJ_ERESOLVE. With TLS and no cert/key, a throw-away self-signed pair is made so
        the agent can also receive calls; the server certificate of a TLS peer is verified
        only when `tls_ca` is given (then against that CA file, and the peer's address).
        `auto_answer=code` answers every incoming call at once with `code`; otherwise
        incoming calls get 180 Ringing (unless ring=False) and wait for `answer()`.
        `honor_auto_answer_headers` makes it answer 200 by itself when the INVITE carries
        Call-Info ...;answer-after=N, Alert-Info ...autoanswer or Answer-Mode: Auto (as a
        desk phone with that feature would)."""
        require_pjsua2()
        if transport not in ("udp", "tcp", "tls"):
            raise ValueError(f"transport must be udp, tcp or tls, not {transport!r}")
        workdir = tempfile.TemporaryDirectory(prefix=f"pjsua-{name}-")
        log_file = Path(workdir.name) / "pjsua.log"
        argv = [
            sys.executable, "-u", str(AGENT),
            "--name", name, "--transport", transport, "--host", host,
            "--port", str(local_port or 0), "--log-file", str(log_file),
            "--log-level", str(log_level),
        ]
        if rtp_port:
            argv += ["--rtp-port", str(rtp_port), "--rtp-range", "100"]
        if transport == "tls":
            if tls_cert is None:
                pair = make_self_signed(Path(workdir.name) / "tls", name=name)
                tls_cert, tls_key = pair.cert, pair.key
            argv += ["--tls-cert", str(tls_cert), "--tls-key", str(tls_key)]
            if tls_ca:
                argv += ["--tls-ca", str(tls_ca)]
        if auto_answer is not None:
            argv += ["--auto-answer", str(auto_answer)]
        if honor_auto_answer_headers:
            argv.append("--honor-auto-answer-headers")
        if not ring:
            argv.append("--no-ring")

        holder: list[PjsuaAgent] = []  # the driver, once built (lines may come first)

        def on_line(text: str) -> None:
            if holder:
                holder[0]._on_line(text)

        proc = await PeerProcess.start(f"pjsua[{name}]", argv, on_stdout=on_line,
                                       log_files=[log_file])
        self = cls(name, proc, workdir, transport)
        self._auto_answer = auto_answer
        holder.append(self)
        for line in proc.lines:  # anything read before the handler was attached
            if line.stream == "stdout":
                self._on_line(line.text)
        try:
            ev = await self.wait_event(lambda e: e["event"] in ("ready", "fatal"), timeout,
                                       what="ready")
            if ev["event"] == "fatal":
                raise PeerError(f"pjsua agent {name} failed to start: {ev['error']}\n"
                                f"{proc.describe()}")
        except BaseException:
            await self.stop()
            raise
        self.ready = ev
        self.port = ev["port"]
        self.host = ev["host"]
        self.uri = ev["uri"]
        return self

    async def __aenter__(self) -> PjsuaAgent:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def stop(self, timeout: float = 5.0) -> None:
        """Ask the agent to quit (it hangs up its calls), then SIGTERM/SIGKILL."""
        if self.proc.running:
            try:
                await self.proc.send_line(json.dumps({"id": 0, "cmd": "quit"}))
                await self.proc.wait_exit(timeout)
            except (PeerError, OSError):
                pass
        await self.proc.stop()
        self._workdir.cleanup()

    # -- protocol ----------------------------------------------------------------------

    def _on_line(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except json.JSONDecodeError:
            self.events.append({"event": "garbage", "text": text})
            return
        if "event" in msg:
            self.events.append(msg)
        elif "id" in msg:
            self.replies[msg["id"]] = msg

    async def request(self, cmd: str, timeout: float = 10.0, **args: Any) -> Any:
        """Send a command and wait for its reply; PeerError on error or timeout."""
        cmd_id = next(self._ids)
        await self.proc.send_line(json.dumps({"id": cmd_id, "cmd": cmd, **args}))
        reply = await self.proc.wait_until(lambda: self.replies.pop(cmd_id, None), timeout,
                                           f"reply to {cmd} {args}")
        if not reply.get("ok"):
            raise PeerError(f"pjsua[{self.name}] {cmd} {args} failed: {reply.get('error')}\n"
                            f"{self.proc.describe()}")
        return reply.get("result")

    def _send_nowait(self, cmd: str, **args: Any) -> None:
        self.proc.write_line(json.dumps({"id": next(self._ids), "cmd": cmd, **args}))

    async def wait_event(self, pred: Any, timeout: float, *, start: int = 0,
                         what: str = "an event") -> dict[str, Any]:
        """First event at index >= `start` of `self.events` for which `pred(event)`."""
        cursor = start

        def check() -> dict[str, Any] | None:
            nonlocal cursor
            while cursor < len(self.events):
                ev = self.events[cursor]
                cursor += 1
                if pred(ev):
                    return ev
            return None

        return await self.proc.wait_until(check, timeout, what)

    # -- registration ------------------------------------------------------------------

    async def register(self, registrar_uri: str, user: str, domain: str, password: str, *,
                       expires: int = 300, proxy: str | None = "registrar",
                       auth_user: str | None = None, display: str | None = None,
                       headers: dict[str, str] | None = None, keepalive: int = 0,
                       timeout: float = 10.0) -> int:
        """REGISTER sip:user@domain at `registrar_uri` (digest auth with user/password)
        and return the final status code (200 on success; 401/403/... on failure, 408 on
        no answer). Later calls and OPTIONS from this agent use this account, with the
        registrar as outbound proxy (`proxy=None` for none, or another URI). For TCP/TLS
        agents `;transport=tcp|tls` is added to the URIs when missing."""
        args: dict[str, Any] = {"registrar": registrar_uri, "user": user, "domain": domain,
                                "password": password, "expires": expires, "proxy": proxy}
        if auth_user:
            args["auth_user"] = auth_user
        if display:
            args["display"] = display
        if headers:
            args["headers"] = headers
        if keepalive:
            args["keepalive"] = keepalive  # seconds between PJSIP's UDP CRLF keep-alives
        result = await self.request("register", timeout=timeout, **args)
        if result["code"] // 100 == 2:
            self.registered_aor = f"sip:{user}@{domain}"
        return int(result["code"])

    async def unregister(self, timeout: float = 10.0) -> int | None:
        """REGISTER with Expires: 0; returns its status code (None if not registered)."""
        result = await self.request("unregister", timeout=timeout)
        self.registered_aor = None
        return None if result is None else int(result["code"])

    # -- calls -------------------------------------------------------------------------

    async def call(self, uri: str, *, headers: dict[str, str] | None = None,
                   local: bool = False) -> str:
        """Send an INVITE to `uri`; returns the call handle at once (wait for states with
        `wait_call_state`). `local=True` uses the unregistered local account (direct
        calls to a peer's address even after register())."""
        result = await self.request("call", uri=uri, headers=headers or {}, local=local)
        return str(result["call"])

    async def wait_incoming(self, timeout: float = 10.0) -> dict[str, Any]:
        """Next incoming call not returned yet: {"call": handle, "from", "to",
        "request_uri", "sip_call_id", "src", "headers": {lower-case name: [values]}}.
        `headers` is every header of the received INVITE (so Call-Info, Alert-Info,
        Answer-Mode, P-Asserted-Identity, Diversion ... when present)."""
        def check() -> dict[str, Any] | None:
            while self._incoming_cursor < len(self.events):
                ev = self.events[self._incoming_cursor]
                self._incoming_cursor += 1
                if ev["event"] == "incoming":
                    return ev
            return None

        return await self.proc.wait_until(check, timeout, "an incoming call")

    async def answer(self, handle: str, code: int = 200, *, reason: str | None = None) -> None:
        """Answer (200) or respond provisionally (180/183) or reject (486/603 ...)."""
        args: dict[str, Any] = {"call": handle, "code": code}
        if reason:
            args["reason"] = reason
        await self.request("answer", **args)

    async def hangup(self, handle: str, code: int | None = None) -> None:
        """BYE when confirmed, CANCEL when calling, or reject with `code` (default 603)
        when ringing here."""
        await self.request("hangup", call=handle, **({"code": code} if code else {}))

    async def hold(self, handle: str) -> None:
        await self.request("hold", call=handle)

    async def unhold(self, handle: str) -> None:
        await self.request("unhold", call=handle)

    async def transfer(self, handle: str, uri: str) -> None:
        """Blind transfer: REFER the peer of `handle` to `uri`. Progress comes as
        `transfer_status` events (see `wait_transfer_status`)."""
        await self.request("transfer", call=handle, uri=uri)

    async def watch_dialog(self, uri: str) -> None:
        """Subscribe to `uri`'s dialog events (a BLF key); the NOTIFYs arrive as
        "dialog_notify" events, PJSIP's answers to them as "dialog_notify_answered"."""
        await self.request("watch_dialog", uri=uri)

    def dialog_notifies(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "dialog_notify"]

    async def call_info(self, handle: str) -> dict[str, Any]:
        return dict(await self.request("call_info", call=handle))

    def call_states(self, handle: str) -> list[dict[str, Any]]:
        """All call_state events of `handle` so far, oldest first."""
        return [e for e in self.events if e["event"] == "call_state" and e["call"] == handle]

    async def wait_call_state(self, handle: str, state: str, timeout: float = 10.0
                              ) -> dict[str, Any]:
        """Wait until call `handle` has reached `state` (one of CALL_STATES; a state
        already reached counts). Returns the event: {"state", "code" (last status code),
        "reason", "sip_call_id", "remote_uri", "remote_contact", ...}. If the call ends
        before reaching `state`, PeerError says with which code."""
        state = state.upper()
        if state not in CALL_STATES:
            raise ValueError(f"unknown state {state!r}; one of {CALL_STATES}")

        def check() -> dict[str, Any] | None:
            for ev in self.events:
                if ev["event"] != "call_state" or ev["call"] != handle:
                    continue
                if ev["state"] == state:
                    return ev
                if ev["state"] == "DISCONNECTED":
                    raise PeerError(
                        f"pjsua[{self.name}] call {handle} ended ({ev['code']} {ev['reason']})"
                        f" before reaching {state}\n{self.proc.describe()}")
            return None

        return await self.proc.wait_until(check, timeout, f"call {handle} state {state}")

    async def wait_media(self, handle: str, status: str, timeout: float = 10.0
                         ) -> dict[str, Any]:
        """Wait for a media_state event of `handle` whose first audio stream has
        `status` ("active", "local_hold", "remote_hold", "none")."""
        return await self.wait_event(
            lambda e: e["event"] == "media_state" and e["call"] == handle and e["media"]
            and e["media"][0]["status_name"] == status,
            timeout, what=f"media {status} on {handle}")

    async def wait_transfer_status(self, handle: str, *, final: bool = True,
                                   timeout: float = 10.0) -> dict[str, Any]:
        """Wait for a transfer_status event on the transferring call `handle`
        ({"code", "reason", "final"}); with final=True, for the final NOTIFY."""
        return await self.wait_event(
            lambda e: e["event"] == "transfer_status" and e["call"] == handle
            and (e["final"] or not final),
            timeout, what=f"transfer status of {handle}")

    async def wait_transfer_request(self, timeout: float = 10.0) -> dict[str, Any]:
        """Wait for a REFER received by this agent: {"call", "uri", "new_call"}; the
        agent accepts it and calls `uri` as call `new_call`."""
        return await self.wait_event(lambda e: e["event"] == "transfer_request", timeout,
                                     what="a transfer request (REFER)")

    async def wait_request(self, handle: str, method: str, timeout: float = 10.0
                           ) -> dict[str, Any]:
        """Wait for an in-dialog request `method` received on `handle` (with headers)."""
        return await self.wait_event(
            lambda e: e["event"] == "rx_request" and e["call"] == handle
            and e["method"] == method, timeout, what=f"{method} on {handle}")

    # -- out-of-dialog -----------------------------------------------------------------

    async def options(self, uri: str, *, timeout: float = 40.0, local: bool = False) -> int:
        """Send an out-of-dialog OPTIONS to `uri`; return the final status code (408 when
        unanswered: PJSIP's timer F is 32 s on UDP)."""
        return int((await self.options_full(uri, timeout=timeout, local=local))["code"])

    async def options_full(self, uri: str, *, timeout: float = 40.0, local: bool = False
                           ) -> dict[str, Any]:
        """Like options(), returning {"code", "reason", "headers"} of the response."""
        return dict(await self.request("options", timeout=timeout, uri=uri, local=local))

    # -- settings ----------------------------------------------------------------------

    @property
    def auto_answer(self) -> int | None:
        return self._auto_answer

    @auto_answer.setter
    def auto_answer(self, code: int | None) -> None:
        """Answer incoming calls at once with `code` (None: ring and wait)."""
        self._auto_answer = code
        self._send_nowait("set", auto_answer=code)

    async def configure(self, **settings: Any) -> None:
        """Change settings: auto_answer, honor_auto_answer_headers, ring."""
        if "auto_answer" in settings:
            self._auto_answer = settings["auto_answer"]
        await self.request("set", **settings)

    def contact_for(self, user: str) -> str:
        """A URI reaching this agent directly as `user` (no registrar involved)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        uri = f"sip:{user}@{host}:{self.port}"
        return uri if self.transport == "udp" else f"{uri};transport={self.transport}"

    def describe(self) -> str:
        return self.proc.describe()
