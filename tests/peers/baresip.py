"""Async driver for baresip 1.0.0 (Debian package), a real softphone, controlled through its
`ctrl_tcp` module (netstring-framed JSON commands, responses and events).

    async with await Baresip.start("dave") as dave:
        await dave.register("sip:127.0.0.1:5060", "204", "acme.test", "s3cret")
        call = await dave.call("sip:201@acme.test")
        await dave.wait_call_state(call, "CONFIRMED", timeout=10)
        await dave.hangup(call)

Its config directory (-f) is a temporary directory: SIP on 127.0.0.1 only
(`sip_listen 127.0.0.1:PORT` + `net_interface 127.0.0.1`), only the g711, aubridge (no sound
card: audio source and player are an in-process bridge), menu (commands) and ctrl_tcp
modules, RTP in a free port range on 127.0.0.1.

Quirks (baresip 1.0.0 on Debian 12):
* `sip_listen 127.0.0.1:P` binds UDP P, TCP P and TLS on TCP P+1: keep instances 2 ports
  apart (ports.free_port(span=2) does);
* `net_interface` must be an address ("127.0.0.1"); the interface name "lo" fails with
  "net: lo: could not get network address";
* a `dial` command's response carries no call id; the call's SIP Call-ID appears in its
  first call event (CALL_RINGING, CALL_PROGRESS, CALL_ESTABLISHED or CALL_CLOSED), so
  `call()` returns a handle that is bound to that id when the event arrives;
* `accept`/`hangup` act on the "current" call; with several calls the driver selects one
  with `callfind <call-id>` first;
* CALL_CLOSED's param is the reason: "Connection reset by user" (we hung up),
  "Connection reset by peer" (BYE received), or "<code> <reason>" for a failed call;
* it can send an out-of-dialog OPTIONS (`options <uri>`): the answer is printed on stdout
  only ("----- OPTIONS of <uri> -----" then the response), or "OPTIONS failed: <code>".
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from . import ports
from .process import PeerError, PeerProcess, require_binary

CALL_EVENT_STATES = {
    "CALL_INCOMING": "INCOMING",
    "CALL_RINGING": "EARLY",
    "CALL_PROGRESS": "EARLY",
    "CALL_ESTABLISHED": "CONFIRMED",
    "CALL_CLOSED": "DISCONNECTED",
}
STATES = ("CALLING", "INCOMING", "EARLY", "CONFIRMED", "DISCONNECTED")


class Baresip:
    """One baresip softphone. Create with `await Baresip.start(...)`."""

    def __init__(self, name: str, proc: PeerProcess, workdir: tempfile.TemporaryDirectory[str],
                 port: int, ctrl_port: int) -> None:
        self.name = name
        self.proc = proc
        self._workdir = workdir
        self.workdir = Path(workdir.name)
        self.port = port
        self.ctrl_port = ctrl_port
        self.events: list[dict[str, Any]] = []
        self.responses: dict[str, dict[str, Any]] = {}
        self._tokens = itertools.count(1)
        self._handles = itertools.count(1)
        # our handle -> (events index at dial time, bound call id or None)
        self._outgoing: dict[str, list[Any]] = {}
        self._incoming_cursor = 0
        self._seen_incoming: set[str] = set()
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.aor = f"sip:{name}@127.0.0.1"
        self.registered_aor: str | None = None

    @property
    def uri(self) -> str:
        return f"sip:{self.name}@127.0.0.1:{self.port}"

    def contact_for(self, user: str | None = None, transport: str = "udp") -> str:
        uri = f"sip:{user or self.name}@127.0.0.1:{self.port}"
        return uri if transport == "udp" else f"{uri};transport={transport}"

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        name: str = "baresip",
        *,
        port: int | None = None,
        auto_answer: bool = False,
        extra_config: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> Baresip:
        """Start baresip with SIP on 127.0.0.1:`port` (default: a free port with the next
        one free too) and a local account sip:`name`@127.0.0.1 (no registration).
        `auto_answer` sets that account's answermode=auto."""
        binary = require_binary("baresip")
        workdir = tempfile.TemporaryDirectory(prefix=f"baresip-{name}-")
        w = Path(workdir.name)
        port = port or ports.free_port(span=2)
        ctrl_port = ports.free_tcp_port()
        rtp_lo, rtp_hi = ports.free_rtp_range(20)
        config = {
            "poll_method": "epoll",
            "sip_listen": f"127.0.0.1:{port}",
            "net_interface": "127.0.0.1",
            "call_local_timeout": "120",
            "call_max_calls": "8",
            "audio_player": "aubridge,nil",
            "audio_source": "aubridge,nil",
            "audio_alert": "aubridge,nil",
            "rtp_ports": f"{rtp_lo}-{rtp_hi - 1}",
            "module_path": "/usr/lib/baresip/modules",
            "ctrl_tcp_listen": f"127.0.0.1:{ctrl_port}",
        }
        config.update(extra_config or {})
        lines = [f"{k}\t{v}" for k, v in config.items()]
        lines += [
            "module\tg711.so",
            "module\taubridge.so",
            "module_tmp\taccount.so",
            "module_app\tmenu.so",
            "module\tctrl_tcp.so",
        ]
        (w / "config").write_text("\n".join(lines) + "\n")
        answer = ";answermode=auto" if auto_answer else ""
        (w / "accounts").write_text(f"<sip:{name}@127.0.0.1>;regint=0{answer}\n")
        (w / "contacts").write_text("")
        proc = await PeerProcess.start(f"baresip[{name}]", [binary, "-f", str(w)], cwd=w,
                                       stdin=False)
        self = cls(name, proc, workdir, port, ctrl_port)
        try:
            await proc.wait_line("baresip is ready", timeout, stream=None)
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", ctrl_port), timeout)
            self._writer = writer
            self._reader = asyncio.create_task(self._read(reader), name=f"baresip-{name}-ctrl")
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aenter__(self) -> Baresip:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def stop(self, timeout: float = 5.0) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 1)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self.proc.running:
            # First SIGTERM: baresip unregisters and waits for the answers; a second one
            # forces the exit (useful when the registrar is gone already).
            with contextlib.suppress(ProcessLookupError):
                self.proc.proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.proc.wait(), min(1.5, timeout))
        await self.proc.stop(timeout)
        self._workdir.cleanup()

    # -- ctrl_tcp ----------------------------------------------------------------------

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Netstrings: b"<len>:<json>," """
        while True:
            try:
                head = await reader.readuntil(b":")
                length = int(head[:-1])
                payload = await reader.readexactly(length + 1)
            except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                break
            try:
                msg = json.loads(payload[:-1])
            except json.JSONDecodeError:
                continue
            if msg.get("event"):
                self.events.append(msg)
            elif msg.get("response"):
                self.responses[str(msg.get("token"))] = msg
            await self.proc.notify()
        await self.proc.notify()

    async def command(self, command: str, params: str = "", *, timeout: float = 5.0) -> str:
        """Run a baresip command (as listed by `help`); returns its response text."""
        if self._writer is None:
            raise PeerError(f"baresip[{self.name}]: not connected")
        token = str(next(self._tokens))
        body = json.dumps({"command": command, "params": params, "token": token}).encode()
        self._writer.write(b"%d:%s," % (len(body), body))
        await self._writer.drain()
        resp = await self.proc.wait_until(lambda: self.responses.pop(token, None), timeout,
                                          f"response to {command} {params}")
        if not resp.get("ok"):
            raise PeerError(f"baresip[{self.name}] {command} {params} failed: {resp}\n"
                            f"{self.proc.describe()}")
        return str(resp.get("data", ""))

    async def wait_event(self, pred: Any, timeout: float, *, start: int = 0,
                         what: str = "an event") -> dict[str, Any]:
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
                       expires: int = 300, timeout: float = 10.0) -> int:
        """Add a user agent sip:user@domain that registers through `registrar_uri` (its
        outbound proxy, used for calls too) with digest auth, make it the current one, and
        return the final REGISTER status code (200 on success; baresip reports the failing
        code, e.g. 403, in REGISTER_FAIL)."""
        aor = f"sip:{user}@{domain}"
        mark = len(self.events)
        await self.command(
            "uanew",
            f'<{aor}>;auth_pass={password};outbound="{registrar_uri}";regint={expires}',
        )
        ev = await self.wait_event(
            lambda e: e.get("type") in ("REGISTER_OK", "REGISTER_FAIL")
            and e.get("accountaor") == aor, timeout, start=mark,
            what=f"registration of {aor}")
        with contextlib.suppress(PeerError):
            await self.command("uafind", aor)
        if ev["type"] == "REGISTER_OK":
            self.aor = self.registered_aor = aor
            return 200
        m = re.match(r"\s*(\d{3})", str(ev.get("param", "")))
        return int(m.group(1)) if m else 0

    async def unregister(self, *, timeout: float = 10.0) -> None:
        """Delete the registered user agent (baresip unregisters it)."""
        if self.registered_aor is None:
            return
        aor = self.registered_aor
        await self.command("uadel", aor, timeout=timeout)
        self.registered_aor = None
        self.aor = f"sip:{self.name}@127.0.0.1"
        with contextlib.suppress(PeerError):
            await self.command("uafind", self.aor)

    # -- calls -------------------------------------------------------------------------

    async def call(self, uri: str) -> str:
        """Dial `uri` from the current user agent; returns a handle for wait_call_state,
        hangup, ... (bound to the SIP Call-ID by the call's first event)."""
        handle = f"out{next(self._handles)}"
        self._outgoing[handle] = [len(self.events), None]
        await self.command("dial", uri)
        return handle

    def call_id(self, handle: str) -> str | None:
        """SIP Call-ID of a handle (incoming handles are Call-IDs already)."""
        if handle not in self._outgoing:
            return handle
        entry = self._outgoing[handle]
        if entry[1] is None:
            claimed = {e[1] for e in self._outgoing.values() if e[1] is not None}
            for ev in self.events[entry[0]:]:
                if (ev.get("class") == "call" and ev.get("direction") == "outgoing"
                        and ev.get("id") and ev["id"] not in claimed):
                    entry[1] = ev["id"]
                    break
        return entry[1]

    async def wait_incoming(self, timeout: float = 10.0) -> dict[str, Any]:
        """Next incoming call not returned yet: {"call": Call-ID (the handle), "from",
        "to" (our AOR)}. (An auto-answered call has no CALL_INCOMING event: its first
        event, e.g. CALL_ESTABLISHED, counts.)"""
        def check() -> dict[str, Any] | None:
            while self._incoming_cursor < len(self.events):
                ev = self.events[self._incoming_cursor]
                self._incoming_cursor += 1
                cid = ev.get("id")
                if ev.get("direction") == "incoming" and cid and cid not in self._seen_incoming:
                    self._seen_incoming.add(cid)
                    return ev
            return None

        ev = await self.proc.wait_until(check, timeout, "an incoming call")
        return {"call": ev["id"], "from": ev.get("peeruri"), "to": ev.get("accountaor")}

    async def _select(self, handle: str | None) -> None:
        if handle is None:
            return
        cid = self.call_id(handle)
        if cid is None:
            raise PeerError(f"baresip[{self.name}]: call {handle} has no Call-ID yet")
        await self.command("callfind", cid)

    async def answer(self, handle: str | None = None) -> None:
        await self._select(handle)
        await self.command("accept")

    async def hangup(self, handle: str | None = None) -> None:
        """Hang up (BYE), cancel (CANCEL) or reject an incoming call."""
        await self._select(handle)
        await self.command("hangup")

    async def hold(self, handle: str | None = None) -> None:
        await self._select(handle)
        await self.command("hold")

    async def resume(self, handle: str | None = None) -> None:
        await self._select(handle)
        await self.command("resume")

    async def transfer(self, handle: str | None, uri: str) -> None:
        await self._select(handle)
        await self.command("transfer", uri)

    async def set_auto_answer(self, enabled: bool) -> None:
        await self.command("answermode", "auto" if enabled else "manual")

    def call_events(self, handle: str) -> list[dict[str, Any]]:
        cid = self.call_id(handle)
        return [e for e in self.events if cid is not None and e.get("id") == cid]

    async def wait_call_state(self, handle: str, state: str, timeout: float = 10.0
                              ) -> dict[str, Any]:
        """Wait until the call reached `state` (INCOMING, EARLY, CONFIRMED, DISCONNECTED;
        CALLING = its first event). Returns the event; for DISCONNECTED its "param" is the
        reason. If the call closes first, PeerError with the reason."""
        state = state.upper()
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; one of {STATES}")

        def check() -> dict[str, Any] | None:
            cid = self.call_id(handle)
            if cid is None:
                return None
            for ev in self.events:
                if ev.get("id") != cid or ev.get("class") != "call":
                    continue
                got = CALL_EVENT_STATES.get(str(ev.get("type")))
                if got == state or (state == "CALLING" and got is not None):
                    return ev
                if got == "DISCONNECTED":
                    raise PeerError(f"baresip[{self.name}] call {handle} closed "
                                    f"({ev.get('param')}) before reaching {state}\n"
                                    f"{self.proc.describe()}")
            return None

        return await self.proc.wait_until(check, timeout, f"call {handle} state {state}")

    # -- out-of-dialog -----------------------------------------------------------------

    async def options(self, uri: str, *, timeout: float = 40.0) -> int:
        """Send OPTIONS to `uri` from the current user agent (through its outbound proxy
        once registered); returns the final status code (parsed from stdout)."""
        mark = self.proc.mark
        await self.command("options", uri)
        rx_ok = re.compile(r"^SIP/2\.0 (\d{3}) ")
        rx_fail = re.compile(r"OPTIONS failed: (\d{3})")
        seen_header = False

        def check() -> int | None:
            nonlocal mark, seen_header
            while mark < len(self.proc.lines):
                text = self.proc.lines[mark].text
                mark += 1
                m = rx_fail.search(text)
                if m:
                    return int(m.group(1))
                if "----- OPTIONS of" in text:
                    seen_header = True
                    continue
                m = rx_ok.match(text)
                if seen_header and m:
                    return int(m.group(1))
            return None

        return await self.proc.wait_until(check, timeout, f"OPTIONS reply from {uri}")

    def describe(self) -> str:
        return self.proc.describe()
