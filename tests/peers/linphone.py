"""Async driver for linphonec (linphone-cli 5.1.65), a real softphone.

    async with await Linphone.start("carol", auto_answer=True) as carol:
        await carol.register("sip:127.0.0.1:5060", "203", "acme.test", "s3cret")
        call_id = await carol.call("sip:201@acme.test")
        await carol.wait_call_state(call_id, "CONFIRMED", timeout=10)
        await carol.terminate(call_id)

linphonec runs with its own config file (-c) and HOME in a temporary directory, SIP bound
to 127.0.0.1 (`[sip] bind_address`) on a free port (UDP and TCP), no TLS listener, RTP on
127.0.0.1 in a free port range; commands go to its stdin, its human-readable state lines
come on stdout; its debug log goes to a file (-l) shown on failure.

Quirks (linphone-cli 5.1.65 on Debian 12):
* with stdin not a terminal it polls stdin from a thread and iterates the core itself, so
  a pipe works; it needs $HOME/.local/share/linphone to exist (else the core never starts
  listening, silently);
* it prints no registration event: `status register` is polled (bounded) until it prints
  "registered, identity=..."; it prints no SIP status codes either;
* it ignores Call-Info answer-after; auto-answer is its own setting (-a or
  `autoanswer enable`); it cannot send OPTIONS;
* as a TLS client it stalls in the handshake if the server sends a CertificateRequest
  (PJSIP does) and it has no client certificate: with tls=True the driver gives it one;
* call ids are small integers that it assigns ("assigned id N"); prompts ("linphonec> ")
  are printed without a newline, so state lines may start with one.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from . import ports
from .process import PeerError, PeerProcess, require_binary
from .tls import make_self_signed

# stdout line patterns -> (normalized state, detail). Order matters only for readability.
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"Establishing call id to (?P<uri>.+?), assigned id (?P<id>\d+)"), "CALLING"),
    (re.compile(r"Call (?P<id>\d+) to (?P<uri>.+?) in progress\."), "CALLING"),
    (re.compile(r"Call (?P<id>\d+) to (?P<uri>.+?) ringing\."), "EARLY"),
    (re.compile(r"Call (?P<id>\d+) with (?P<uri>.+?) early media\."), "EARLY"),
    (re.compile(r"Receiving new incoming call from (?P<uri>.+?), assigned id (?P<id>\d+)"),
     "INCOMING"),
    (re.compile(r"Call (?P<id>\d+) with (?P<uri>.+?) connected\."), "CONFIRMED"),
    (re.compile(r"Media streams established with (?P<uri>.+?) for call (?P<id>\d+)"), "MEDIA"),
    (re.compile(r"Call (?P<id>\d+) with (?P<uri>.+?) is now paused\."), "HELD"),
    (re.compile(r"Call (?P<id>\d+) has been paused by (?P<uri>.+?)\.$"), "REMOTE_HELD"),
    (re.compile(r"Resuming call (?P<id>\d+) with (?P<uri>.+?)\."), "RESUMING"),
    (re.compile(r"The distant endpoint (?P<uri>.+?) of call (?P<id>\d+) has been transfered"),
     "TRANSFERRED"),
    (re.compile(r"Call (?P<id>\d+) with (?P<uri>.+?) ended \((?P<reason>.*)\)\."),
     "DISCONNECTED"),
    (re.compile(r"Call (?P<id>\d+) with (?P<uri>.+?) error\."), "DISCONNECTED"),
]

STATES = ("CALLING", "INCOMING", "EARLY", "CONFIRMED", "MEDIA", "HELD", "REMOTE_HELD",
          "RESUMING", "TRANSFERRED", "DISCONNECTED")


@dataclass
class LinphoneEvent:
    state: str
    call: int
    uri: str
    reason: str | None
    line: str
    index: int  # position in Linphone.events


@dataclass
class _Config:
    name: str
    port: int
    rtp: tuple[int, int]
    video_rtp: tuple[int, int]
    auto_answer: bool
    tls: bool = False
    tls_ca: str | None = None
    extra: dict[str, dict[str, str]] = field(default_factory=dict)

    def render(self, workdir: Path) -> str:
        sections: dict[str, dict[str, str]] = {
            "sip": {
                "sip_port": str(self.port),
                "sip_tcp_port": str(self.port),
                # 0 = disabled, -1 = a random port (needed to connect as a TLS client too)
                "sip_tls_port": "-1" if self.tls else "0",
                "bind_address": "127.0.0.1",
                "use_ipv6": "0",
                "contact": f'"{self.name}" <sip:{self.name}@127.0.0.1>',
                "auto_answer": "1" if self.auto_answer else "0",
                "register_only_when_network_is_up": "0",
                "register_only_when_upnp_is_ok": "0",
                "guess_hostname": "0",
                "ping_with_options": "0",
                "inc_timeout": "60",
                "user_agent": f"sipgw-test-linphonec/{self.name}",
            },
            "rtp": {
                "bind_address": "127.0.0.1",
                "audio_rtp_port": f"{self.rtp[0]}-{self.rtp[1] - 1}",
                "video_rtp_port": f"{self.video_rtp[0]}-{self.video_rtp[1] - 1}",
                "nortp_timeout": "0",
            },
            "net": {"mtu": "1300", "firewall_policy": "0"},
            "sound": {"echocancellation": "0"},
            "video": {"capture": "0", "display": "0", "automatically_initiate": "0",
                      "automatically_accept": "0"},
            "misc": {"user_certificates_path": str(workdir / "certs"),
                     "enable_basic_to_client_group_chat_room_migration": "0"},
        }
        if self.tls:
            # belle-sip stalls the handshake when a TLS server asks for a client
            # certificate (PJSIP does) and it has none: always give it one.
            pair = make_self_signed(workdir / "certs", name="client")
            sections["sip"].update({
                "client_cert_chain": str(pair.cert),
                "client_cert_key": str(pair.key),
                "verify_server_certs": "1" if self.tls_ca else "0",
                "verify_server_cn": "1" if self.tls_ca else "0",
            })
            if self.tls_ca:
                sections["sip"]["root_ca"] = self.tls_ca
        for sec, values in self.extra.items():
            sections.setdefault(sec, {}).update(values)
        out = []
        for sec, values in sections.items():
            out.append(f"[{sec}]")
            out.extend(f"{k}={v}" for k, v in values.items())
            out.append("")
        return "\n".join(out)


class Linphone:
    """One linphonec softphone. Create with `await Linphone.start(...)`."""

    def __init__(self, name: str, proc: PeerProcess, workdir: tempfile.TemporaryDirectory[str],
                 port: int) -> None:
        self.name = name
        self.proc = proc
        self._workdir = workdir
        self.workdir = Path(workdir.name)
        self.port = port
        self.events: list[LinphoneEvent] = []
        self._incoming_cursor = 0

    @property
    def uri(self) -> str:
        """This phone's own address (direct calls, no registrar)."""
        return f"sip:{self.name}@127.0.0.1:{self.port}"

    def contact_for(self, user: str | None = None, transport: str = "udp") -> str:
        uri = f"sip:{user or self.name}@127.0.0.1:{self.port}"
        return uri if transport == "udp" else f"{uri};transport={transport}"

    @classmethod
    async def start(
        cls,
        name: str = "linphone",
        *,
        port: int | None = None,
        auto_answer: bool = False,
        tls: bool = False,
        tls_ca: str | Path | None = None,
        config: dict[str, dict[str, str]] | None = None,
        log_level: int = 5,
        timeout: float = 10.0,
    ) -> Linphone:
        """Start linphonec listening on 127.0.0.1:`port` (UDP and TCP; default: a free
        port). `auto_answer` answers every incoming call (linphonec -a). `tls` enables
        its TLS transport (listening on a random port, and as a client with a throw-away
        client certificate); the server certificate is verified only when `tls_ca` (a CA
        file) is given. `config` adds or overrides rc-file keys: {"sip": {"key": "value"}}."""
        binary = require_binary("linphonec")
        workdir = tempfile.TemporaryDirectory(prefix=f"linphonec-{name}-")
        w = Path(workdir.name)
        (w / "home" / ".local" / "share" / "linphone").mkdir(parents=True)
        (w / "certs").mkdir()
        port = port or ports.free_port()
        cfg = _Config(name=name, port=port, rtp=ports.free_rtp_range(20),
                      video_rtp=ports.free_rtp_range(4), auto_answer=auto_answer,
                      tls=tls, tls_ca=str(tls_ca) if tls_ca else None, extra=config or {})
        rc = w / "linphonerc"
        rc.write_text(cfg.render(w))
        log = w / "linphone.log"
        argv = [binary, "-c", str(rc), "-d", str(log_level), "-l", str(log)]
        if auto_answer:
            argv.append("-a")
        holder: list[Linphone] = []

        def on_line(text: str) -> None:
            if holder:
                holder[0]._on_line(text)

        proc = await PeerProcess.start(f"linphonec[{name}]", argv, cwd=w,
                                       env={"HOME": str(w / "home")}, on_stdout=on_line,
                                       log_files=[log])
        self = cls(name, proc, workdir, port)
        holder.append(self)
        for line in proc.lines:
            if line.stream == "stdout":
                self._on_line(line.text)
        try:
            # The prompt has no newline, so it can't be awaited as a line. Commands are
            # read from the same loop that iterates the core (which binds the SIP ports),
            # so an answer to `status register` means linphonec is ready.
            await self.command("status register", expect=r"registered=|registered,|unregistered",
                               timeout=timeout)
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aenter__(self) -> Linphone:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def stop(self, timeout: float = 5.0) -> None:
        if self.proc.running:
            try:
                self.proc.write_line("quit")
                await self.proc.wait_exit(timeout)
            except (PeerError, OSError):
                pass
        await self.proc.stop()
        self._workdir.cleanup()

    # -- output parsing ----------------------------------------------------------------

    def _on_line(self, text: str) -> None:
        for pattern, state in _PATTERNS:
            m = pattern.search(text)
            if m:
                gd = m.groupdict()
                self.events.append(LinphoneEvent(
                    state=state, call=int(gd["id"]), uri=gd["uri"], reason=gd.get("reason"),
                    line=text, index=len(self.events)))
                return

    async def command(self, cmd: str, *, expect: str | None = None, timeout: float = 5.0) -> str:
        """Send a command line; with `expect` (a regex), wait for and return the first
        output line after it that matches."""
        mark = self.proc.mark
        await self.proc.send_line(cmd)
        if expect is None:
            return ""
        rx = re.compile(expect)
        line = await self.proc.wait_line(lambda t: rx.search(t) is not None, timeout,
                                         start=mark)
        return line.text

    # -- registration ------------------------------------------------------------------

    async def register(self, registrar_uri: str, user: str, domain: str, password: str, *,
                       timeout: float = 10.0, poll_interval: float = 0.1) -> int:
        """`register sip:user@domain <registrar_uri> password`, then poll `status register`
        until it reports registered; returns 200. linphonec reports no failure code: if
        not registered within `timeout`, PeerError (its log shows why)."""
        await self.command(f"register sip:{user}@{domain} {registrar_uri} {password}")
        return await self._poll_registered(True, timeout, poll_interval)

    async def unregister(self, *, timeout: float = 10.0, poll_interval: float = 0.1) -> None:
        await self.command("unregister")
        await self._poll_registered(False, timeout, poll_interval)

    async def registration_status(self) -> str:
        """The raw answer of `status register` ("registered, identity=... duration=N",
        "registered=0" (in progress or failed), "registered=-1" (no proxy), "unregistered")."""
        return await self.command("status register",
                                  expect=r"registered=|registered,|unregistered")

    async def _poll_registered(self, want: bool, timeout: float, interval: float) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = ""
        while True:
            last = await self.registration_status()
            done = last.split("linphonec>")[-1].strip().startswith("registered,")
            if done == want:
                return 200
            if loop.time() >= deadline:
                what = "registered" if want else "unregistered"
                raise PeerError(f"linphonec[{self.name}] not {what} within {timeout}s "
                                f"(last status {last!r})\n{self.proc.describe()}")
            # linphonec offers no registration event: bounded polling is the only way
            await asyncio.sleep(interval)

    # -- calls -------------------------------------------------------------------------

    async def call(self, uri: str, *, timeout: float = 5.0) -> int:
        """Call `uri`; returns linphonec's call id."""
        mark = len(self.events)
        await self.proc.send_line(f"call {uri}")
        ev = await self._wait(lambda e: e.state == "CALLING", timeout, start=mark,
                              what=f"call {uri} to start")
        return ev.call

    async def wait_incoming(self, timeout: float = 10.0) -> dict[str, Any]:
        """Next incoming call not returned yet: {"call": id, "from": uri}."""
        def check() -> LinphoneEvent | None:
            while self._incoming_cursor < len(self.events):
                ev = self.events[self._incoming_cursor]
                self._incoming_cursor += 1
                if ev.state == "INCOMING":
                    return ev
            return None

        ev = await self.proc.wait_until(check, timeout, "an incoming call")
        return {"call": ev.call, "from": ev.uri}

    async def answer(self, call: int | None = None) -> None:
        await self.proc.send_line("answer" if call is None else f"answer {call}")

    async def terminate(self, call: int | None = None) -> None:
        """Hang up (BYE), cancel (CANCEL) or decline an incoming call."""
        await self.proc.send_line("terminate" if call is None else f"terminate {call}")

    async def pause(self, call: int) -> None:
        await self.proc.send_line(f"pause {call}")

    async def resume(self, call: int) -> None:
        await self.proc.send_line(f"resume {call}")

    async def transfer(self, call: int, uri: str) -> None:
        await self.proc.send_line(f"transfer {call} {uri}")

    async def set_auto_answer(self, enabled: bool) -> None:
        await self.command(f"autoanswer {'enable' if enabled else 'disable'}",
                           expect="Auto answer")

    def call_events(self, call: int) -> list[LinphoneEvent]:
        return [e for e in self.events if e.call == call]

    async def wait_call_state(self, call: int, state: str, timeout: float = 10.0
                              ) -> LinphoneEvent:
        """Wait until call `call` has reached `state` (CALLING, INCOMING, EARLY, CONFIRMED,
        MEDIA, HELD, REMOTE_HELD, DISCONNECTED, ...; an earlier one counts). If the call
        ends first, PeerError with linphonec's reason (e.g. "Call declined", "Busy")."""
        state = state.upper()
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; one of {STATES}")

        def check() -> LinphoneEvent | None:
            for ev in self.events:
                if ev.call != call:
                    continue
                if ev.state == state:
                    return ev
                if ev.state == "DISCONNECTED":
                    raise PeerError(f"linphonec[{self.name}] call {call} ended ({ev.reason}) "
                                    f"before reaching {state}\n{self.proc.describe()}")
            return None

        return await self.proc.wait_until(check, timeout, f"call {call} state {state}")

    async def _wait(self, pred: Any, timeout: float, *, start: int, what: str) -> LinphoneEvent:
        cursor = start

        def check() -> LinphoneEvent | None:
            nonlocal cursor
            while cursor < len(self.events):
                ev = self.events[cursor]
                cursor += 1
                if pred(ev):
                    return ev
            return None

        return await self.proc.wait_until(check, timeout, what)

    def describe(self) -> str:
        return self.proc.describe()
