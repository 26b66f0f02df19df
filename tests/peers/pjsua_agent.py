"""One PJSIP user agent (pjsua2 from the pjsua2-python wheel, pjproject 2.15.1) as a
subprocess, driven over a line protocol. Run by tests/peers/pjsua.py; not imported by tests.

    python pjsua_agent.py --name alice --transport udp|tcp|tls [--port N] [--host 127.0.0.1]
                          [--tls-cert F --tls-key F] [--tls-ca F] [--auto-answer CODE]
                          [--log-file F]

Protocol: one JSON object per line.
  stdin  (commands):  {"id": 1, "cmd": "call", "uri": "sip:bob@127.0.0.1:5062"}
  stdout (replies):   {"id": 1, "ok": true, "result": ...} | {"id": 1, "ok": false, "error": "..."}
  stdout (events):    {"event": "call_state", "call": "c1", "state": "CONFIRMED", ...}
The first line is {"event": "ready", ...} once the transport is up. PJSIP runs with no
worker threads (threadCnt=0, mainThreadOnly): this program's single loop alternates
between Endpoint.libHandleEvents() and non-blocking reads of stdin, so every pjsua2
callback runs on this thread. PJSIP's own console output is moved to stderr; logs go to
--log-file. The agent exits on the "quit" command, on EOF on stdin, or on SIGTERM.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import signal
import sys
import time
import traceback
from typing import Any

import pjsua2 as pj

# The protocol channel is a private copy of the real stdout; fd 1 itself is pointed at
# stderr, so that nothing PJSIP (or anything else) prints can corrupt the protocol.
_proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
os.dup2(2, 1)
sys.stdout = sys.stderr

STATE_NAMES = {
    pj.PJSIP_INV_STATE_NULL: "NULL",
    pj.PJSIP_INV_STATE_CALLING: "CALLING",
    pj.PJSIP_INV_STATE_INCOMING: "INCOMING",
    pj.PJSIP_INV_STATE_EARLY: "EARLY",
    pj.PJSIP_INV_STATE_CONNECTING: "CONNECTING",
    pj.PJSIP_INV_STATE_CONFIRMED: "CONFIRMED",
    pj.PJSIP_INV_STATE_DISCONNECTED: "DISCONNECTED",
}

TRANSPORT_TYPES = {
    ("udp", 4): pj.PJSIP_TRANSPORT_UDP,
    ("tcp", 4): pj.PJSIP_TRANSPORT_TCP,
    ("tls", 4): pj.PJSIP_TRANSPORT_TLS,
    ("udp", 6): pj.PJSIP_TRANSPORT_UDP6,
    ("tcp", 6): pj.PJSIP_TRANSPORT_TCP6,
    ("tls", 6): pj.PJSIP_TRANSPORT_TLS6,
}


def emit(obj: dict[str, Any]) -> None:
    _proto.write(json.dumps(obj, separators=(",", ":")) + "\n")


def log(msg: str) -> None:
    print(f"[agent] {msg}", file=sys.stderr, flush=True)


def parse_headers(whole_msg: str) -> tuple[str, dict[str, list[str]]]:
    """Start line and headers (lower-case name → values, in order) of a SIP message.
    Compact forms are expanded for the common ones."""
    compact = {
        "f": "from", "t": "to", "i": "call-id", "m": "contact", "v": "via",
        "l": "content-length", "c": "content-type", "k": "supported", "s": "subject",
        "r": "refer-to", "b": "referred-by", "e": "content-encoding", "x": "session-expires",
    }
    head = whole_msg.replace("\r\n", "\n").split("\n\n", 1)[0]
    lines = head.split("\n")
    start = lines[0] if lines else ""
    headers: dict[str, list[str]] = {}
    current: str | None = None
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and current is not None:  # folded continuation
            headers[current][-1] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        key = compact.get(key, key)
        headers.setdefault(key, []).append(value.strip())
        current = key
    return start, headers


def wants_auto_answer(headers: dict[str, list[str]]) -> float | None:
    """Delay in seconds if the INVITE asks the phone to answer by itself (Call-Info
    answer-after=N, Alert-Info info=alert-autoanswer / auto answer, Answer-Mode: Auto)."""
    for value in headers.get("call-info", []):
        for param in value.split(";")[1:]:
            k, _, v = param.strip().partition("=")
            if k.lower() == "answer-after":
                try:
                    return float(v)
                except ValueError:
                    return 0.0
    for value in headers.get("alert-info", []):
        low = value.lower()
        if "autoanswer" in low or "auto-answer" in low or "auto answer" in low:
            return 0.0
    for value in headers.get("answer-mode", []):
        if value.split(";")[0].strip().lower() == "auto":
            return 0.0
    return None


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ep = pj.Endpoint()
        self.calls: dict[str, AgentCall] = {}
        self.call_seq = 0
        self.auto_answer: int | None = args.auto_answer
        self.honor_auto_answer_headers = args.honor_auto_answer_headers
        self.ring = not args.no_ring
        self.local_acc: AgentAccount | None = None
        self.reg_acc: AgentAccount | None = None
        # (command id or None, account, is-unregister)
        self.pending_reg: list[tuple[int | None, AgentAccount, bool]] = []
        self.options_queue: list[tuple[int, str, AgentAccount]] = []
        self.options_inflight: int | None = None
        self.dead_accounts: list[AgentAccount] = []
        self.timers: list[tuple[float, Any]] = []  # (deadline, callable)
        self.running = True
        self.stdin_fd = sys.stdin.fileno()
        self.stdin_open = True
        self.inbuf = b""
        self.pending: list[str] = []
        self.transport_id = -1
        self.port = 0
        self.host = args.host
        self.buddies: list[pj.Buddy] = []  # dialog-event watches (cmd_watch_dialog)

    # -- setup ---------------------------------------------------------------------------

    def start(self) -> None:
        a = self.args
        self.ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.userAgent = f"sipgw-test-pjsua/{self.ep.libVersion().full} ({a.name})"
        cfg.uaConfig.maxCalls = 32
        # PJSIP's own log file is written through C stdio buffers (nothing on disk until
        # 4 KiB or exit): log through a Python writer that flushes every line instead, so
        # a failing test can show what the agent did up to the failure.
        cfg.logConfig.level = a.log_level
        cfg.logConfig.consoleLevel = a.log_level
        cfg.logConfig.msgLogging = 1
        cfg.logConfig.decor = (pj.PJ_LOG_HAS_TIME | pj.PJ_LOG_HAS_MICRO_SEC
                               | pj.PJ_LOG_HAS_SENDER | pj.PJ_LOG_HAS_NEWLINE)
        self.log_writer = FileLogWriter(a.log_file) if a.log_file else None
        if self.log_writer is not None:
            cfg.logConfig.writer = self.log_writer
        cfg.medConfig.noVad = True
        cfg.medConfig.ecTailLen = 0
        self.ep.libInit(cfg)

        tcfg = pj.TransportConfig()
        tcfg.port = a.port
        tcfg.boundAddress = self.host
        tcfg.publicAddress = self.host
        if a.transport == "tls":
            tls = tcfg.tlsConfig
            # Verify the server's certificate only when given the CA to verify it with.
            tls.verifyServer = bool(a.tls_ca)
            tls.verifyClient = False
            tls.method = pj.PJSIP_TLSV1_2_METHOD
            tls.proto = pj.PJ_SSL_SOCK_PROTO_TLS1_2 | pj.PJ_SSL_SOCK_PROTO_TLS1_3
            if a.tls_cert:
                tls.certFile = a.tls_cert
                tls.privKeyFile = a.tls_key
            if a.tls_ca:
                tls.CaListFile = a.tls_ca
        family = 6 if ":" in self.host else 4
        self.transport_id = self.ep.transportCreate(TRANSPORT_TYPES[(a.transport, family)], tcfg)
        info = self.ep.transportGetInfo(self.transport_id)
        self.port = int(info.localName.rsplit(":", 1)[1])

        self.ep.audDevManager().setNullDev()
        self.ep.libStart()

        self.local_acc = AgentAccount(self)
        acfg = self.account_config(f"sip:{a.name}@{self.hostport()}")
        acfg.regConfig.registerOnAdd = False
        self.local_acc.create(acfg, True)
        emit({
            "event": "ready",
            "port": self.port,
            "host": self.host,
            "transport": a.transport,
            "uri": self.contact_uri(a.name),
            "pid": os.getpid(),
            "version": self.ep.libVersion().full,
        })

    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def contact_uri(self, user: str) -> str:
        uri = f"sip:{user}@{self.hostport()}"
        if self.args.transport != "udp":
            uri += f";transport={self.args.transport}"
        return uri

    def account_config(self, id_uri: str) -> pj.AccountConfig:
        acfg = pj.AccountConfig()
        acfg.idUri = id_uri
        acfg.sipConfig.transportId = self.transport_id
        med = acfg.mediaConfig.transportConfig
        med.boundAddress = self.host
        med.publicAddress = self.host
        med.port = self.args.rtp_port
        med.portRange = self.args.rtp_range
        acfg.natConfig.iceEnabled = False
        acfg.natConfig.sdpNatRewriteUse = 0
        acfg.natConfig.sipStunUse = pj.PJSUA_STUN_USE_DISABLED
        acfg.natConfig.mediaStunUse = pj.PJSUA_STUN_USE_DISABLED
        # Keep the Contact/Via we were configured with: the gateway sees loopback anyway.
        acfg.natConfig.contactRewriteUse = 0
        acfg.natConfig.viaRewriteUse = 0
        acfg.natConfig.udpKaIntervalSec = 0
        if self.args.transport == "tls":
            acfg.mediaConfig.srtpUse = pj.PJMEDIA_SRTP_DISABLED
            acfg.mediaConfig.srtpSecureSignaling = 0
        return acfg

    def with_transport_param(self, uri: str) -> str:
        t = self.args.transport
        if t == "udp" or "transport=" in uri.lower() or uri.lower().startswith("sips:"):
            return uri
        # put it inside <...> when the URI is a name-addr
        if uri.endswith(">"):
            return uri[:-1] + f";transport={t}>"
        return uri + f";transport={t}"

    # -- loop ------------------------------------------------------------------------------

    def read_stdin(self) -> None:
        """Move whatever stdin holds now (without blocking) into self.pending."""
        while self.stdin_open:
            ready, _, _ = select.select([self.stdin_fd], [], [], 0)
            if not ready:
                return
            chunk = os.read(self.stdin_fd, 65536)
            if not chunk:
                log("stdin closed: quitting")
                self.stdin_open = False
                self.running = False
                return
            self.inbuf += chunk
            while b"\n" in self.inbuf:
                raw, self.inbuf = self.inbuf.split(b"\n", 1)
                if raw.strip():
                    self.pending.append(raw.decode("utf-8", "replace"))

    def run(self) -> None:
        while self.running:
            self.ep.libHandleEvents(10)
            self.run_timers()
            self.read_stdin()
            while self.pending and self.running:
                self.dispatch(self.pending.pop(0))

    def apply_pending_settings(self) -> None:
        """Called when a call comes in: a "set" the test wrote before the INVITE arrived
        must apply to it, even if the INVITE was read first."""
        self.read_stdin()
        rest = []
        for raw in self.pending:
            if '"cmd":"set"' in raw.replace(" ", ""):
                self.dispatch(raw)
            else:
                rest.append(raw)
        self.pending = rest

    def pump(self, until: Any, max_seconds: float) -> None:
        deadline = time.monotonic() + max_seconds
        while not until() and time.monotonic() < deadline:
            self.ep.libHandleEvents(10)

    def shutdown(self) -> None:
        """Hang up, unregister, then destroy the library without its fixed 1 s wait."""
        self.ep.hangupAllCalls()
        self.pump(lambda: not any(c.isActive() for c in self.calls.values()), 1.0)
        if self.reg_acc is not None:
            self.pending_reg.append((None, self.reg_acc, True))
            try:
                self.reg_acc.setRegistration(False)
                self.pump(lambda: self.reg_acc is None, 1.0)
            except pj.Error as exc:
                log(f"unregister at exit: {exc.info()}")
        self.calls.clear()
        self.ep.libDestroy(pj.PJSUA_DESTROY_NO_RX_MSG)

    def run_timers(self) -> None:
        if not self.timers:
            return
        now = time.monotonic()
        due = [t for t in self.timers if t[0] <= now]
        self.timers = [t for t in self.timers if t[0] > now]
        for _, fn in due:
            try:
                fn()
            except Exception as exc:
                log(f"timer failed: {exc!r}")

    def dispatch(self, raw: str) -> None:
        try:
            msg = json.loads(raw)
        except json.JSONDecodeError as exc:
            emit({"event": "protocol_error", "error": str(exc), "line": raw[:200]})
            return
        cmd_id = msg.get("id")
        cmd = msg.get("cmd", "")
        handler = getattr(self, f"cmd_{cmd}", None)
        if handler is None:
            emit({"id": cmd_id, "ok": False, "error": f"unknown command {cmd!r}"})
            return
        try:
            result = handler(cmd_id, msg)
        except pj.Error as exc:
            emit({"id": cmd_id, "ok": False, "error": f"pj.Error: {exc.info()}",
                  "status": exc.status})
            return
        except Exception as exc:
            log(traceback.format_exc())
            emit({"id": cmd_id, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
            return
        if result is not _DEFERRED:
            emit({"id": cmd_id, "ok": True, "result": result})

    # -- helpers ---------------------------------------------------------------------------

    def account(self) -> AgentAccount:
        acc = self.reg_acc or self.local_acc
        assert acc is not None
        return acc

    def get_call(self, msg: dict[str, Any]) -> AgentCall:
        handle = msg.get("call")
        call = self.calls.get(str(handle))
        if call is None:
            raise KeyError(f"no call {handle!r} (known: {sorted(self.calls)})")
        return call

    def new_call(self, acc: AgentAccount, call_id: int = pj.PJSUA_INVALID_ID) -> AgentCall:
        self.call_seq += 1
        handle = f"c{self.call_seq}"
        call = AgentCall(self, acc, handle, call_id)
        self.calls[handle] = call
        return call

    def after(self, delay: float, fn: Any) -> None:
        self.timers.append((time.monotonic() + delay, fn))

    # -- commands --------------------------------------------------------------------------

    def cmd_ping(self, _id: int, _msg: dict[str, Any]) -> Any:
        return "pong"

    def cmd_quit(self, _id: int, _msg: dict[str, Any]) -> Any:
        self.running = False
        return None

    def cmd_set(self, _id: int, msg: dict[str, Any]) -> Any:
        if "auto_answer" in msg:
            self.auto_answer = msg["auto_answer"]
        if "honor_auto_answer_headers" in msg:
            self.honor_auto_answer_headers = bool(msg["honor_auto_answer_headers"])
        if "ring" in msg:
            self.ring = bool(msg["ring"])
        return None

    def cmd_register(self, cmd_id: int, msg: dict[str, Any]) -> Any:
        registrar = self.with_transport_param(msg["registrar"])
        user, domain, password = msg["user"], msg["domain"], msg["password"]
        if self.reg_acc is not None:
            raise RuntimeError("already registered: unregister first")
        display = msg.get("display")
        id_uri = f'"{display}" <sip:{user}@{domain}>' if display else f"sip:{user}@{domain}"
        acfg = self.account_config(id_uri)
        # PJSIP's own NAT keep-alive over UDP: a bare CRLF (udpKaData) every N seconds.
        acfg.natConfig.udpKaIntervalSec = int(msg.get("keepalive", 0))
        acfg.regConfig.registrarUri = registrar
        acfg.regConfig.timeoutSec = int(msg.get("expires", 300))
        acfg.regConfig.retryIntervalSec = 0  # report a failure, don't retry behind our back
        acfg.regConfig.registerOnAdd = True
        acfg.regConfig.unregWaitMsec = 2000
        for name, value in (msg.get("headers") or {}).items():
            h = pj.SipHeader()
            h.hName, h.hValue = name, value
            acfg.regConfig.headers.append(h)
        cred = pj.AuthCredInfo("digest", msg.get("realm", "*"), msg.get("auth_user") or user,
                               0, password)
        acfg.sipConfig.authCreds.append(cred)
        proxy = msg.get("proxy", "registrar")
        if proxy == "registrar":
            proxy = registrar
        if proxy:
            proxy = self.with_transport_param(proxy)
            if ";lr" not in proxy:
                proxy = proxy[:-1] + ";lr>" if proxy.endswith(">") else proxy + ";lr"
            acfg.sipConfig.proxies.append(proxy)
        acc = AgentAccount(self, proxied=bool(proxy))
        self.pending_reg.append((cmd_id, acc, False))
        acc.create(acfg, False)
        self.reg_acc = acc
        return _DEFERRED

    def cmd_unregister(self, cmd_id: int, _msg: dict[str, Any]) -> Any:
        acc = self.reg_acc
        if acc is None:
            return None
        self.pending_reg.append((cmd_id, acc, True))
        acc.setRegistration(False)
        return _DEFERRED

    def cmd_call(self, _id: int, msg: dict[str, Any]) -> Any:
        acc = self.local_acc if msg.get("local") else self.account()
        assert acc is not None
        call = self.new_call(acc)
        prm = pj.CallOpParam(True)
        prm.opt.videoCount = 0
        for name, value in (msg.get("headers") or {}).items():
            h = pj.SipHeader()
            h.hName, h.hValue = name, value
            prm.txOption.headers.append(h)
        uri = msg["uri"]
        # Without an outbound proxy, ";transport=tcp|tls" is what makes PJSIP use our one
        # transport; through a proxy the Request-URI is left as the test wrote it.
        if msg.get("add_transport", not acc.proxied):
            uri = self.with_transport_param(uri)
        try:
            call.makeCall(uri, prm)
        except Exception:
            self.calls.pop(call.handle, None)
            raise
        return {"call": call.handle, "sip_call_id": call.getInfo().callIdString}

    def cmd_answer(self, _id: int, msg: dict[str, Any]) -> Any:
        call = self.get_call(msg)
        prm = pj.CallOpParam(True)
        prm.statusCode = int(msg.get("code", 200))
        if msg.get("reason"):
            prm.reason = msg["reason"]
        call.answer(prm)
        return None

    def cmd_hangup(self, _id: int, msg: dict[str, Any]) -> Any:
        call = self.get_call(msg)
        prm = pj.CallOpParam(True)
        if msg.get("code"):
            prm.statusCode = int(msg["code"])
        call.hangup(prm)
        return None

    def when_idle(self, cmd_id: int, action: Any, deadline: float | None = None) -> Any:
        """Run a re-INVITE-sending action; while another INVITE transaction of the call is
        still pending (PJ_EINVALIDOP), retry every 50 ms for up to 2 s, as a user would
        press the button again once the phone is ready."""
        deadline = deadline or time.monotonic() + 2.0
        try:
            action()
        except pj.Error as exc:
            if exc.status != PJ_EINVALIDOP or time.monotonic() > deadline:
                raise
            self.after(0.05, lambda: self.retry_idle(cmd_id, action, deadline))
            return _DEFERRED
        return None

    def retry_idle(self, cmd_id: int, action: Any, deadline: float) -> None:
        try:
            if self.when_idle(cmd_id, action, deadline) is _DEFERRED:
                return
        except pj.Error as exc:
            emit({"id": cmd_id, "ok": False, "error": f"pj.Error: {exc.info()}",
                  "status": exc.status})
            return
        emit({"id": cmd_id, "ok": True, "result": None})

    def cmd_hold(self, cmd_id: int, msg: dict[str, Any]) -> Any:
        call = self.get_call(msg)
        return self.when_idle(cmd_id, lambda: call.setHold(pj.CallOpParam(True)))

    def cmd_unhold(self, cmd_id: int, msg: dict[str, Any]) -> Any:
        call = self.get_call(msg)
        prm = pj.CallOpParam(True)
        prm.opt.flag = pj.PJSUA_CALL_UNHOLD
        return self.when_idle(cmd_id, lambda: call.reinvite(prm))

    def cmd_transfer(self, _id: int, msg: dict[str, Any]) -> Any:
        call = self.get_call(msg)
        call.xfer(self.with_transport_param(msg["uri"]) if msg.get("add_transport") else
                  msg["uri"], pj.CallOpParam(True))
        return None

    def cmd_watch_dialog(self, _id: int, msg: dict[str, Any]) -> Any:
        """Subscribe to the dialog event package (RFC 4235) of msg["uri"], as a BLF key
        does. The wheel's pjsua2 has no BuddyConfig.subscribe_dlg_event, but its library
        exports pjsua_buddy_subscribe_dlg_event: the buddy is made through pjsua2 and
        subscribed through the C call. Each NOTIFY PJSIP receives, and its answer, are
        reported as "dialog_notify" / "dialog_notify_answered" events (from its log)."""
        cfg = pj.BuddyConfig()
        cfg.uri = msg["uri"]
        cfg.subscribe = False
        buddy = pj.Buddy()
        buddy.create(self.account(), cfg)
        self.buddies.append(buddy)
        if self.log_writer is not None:
            self.log_writer.watch_notifies = True
        library = ctypes.CDLL(pj._pjsua2.__file__)  # the one the binding has loaded
        status = library.pjsua_buddy_subscribe_dlg_event(ctypes.c_int(buddy.getId()), 1)
        if status != 0:
            raise RuntimeError(f"pjsua_buddy_subscribe_dlg_event failed: {status}")
        return {"buddy": buddy.getId()}

    def cmd_call_info(self, _id: int, msg: dict[str, Any]) -> Any:
        return self.get_call(msg).info_dict()

    def cmd_options(self, cmd_id: int, msg: dict[str, Any]) -> Any:
        acc = self.local_acc if msg.get("local") else self.account()
        assert acc is not None
        self.options_queue.append((cmd_id, msg["uri"], acc))
        self.pump_options()
        return _DEFERRED

    def pump_options(self) -> None:
        """OPTIONS go out one at a time, so each completion matches its command."""
        while self.options_inflight is None and self.options_queue:
            cmd_id, uri, acc = self.options_queue.pop(0)
            prm = pj.SendRequestParam()
            prm.method = "OPTIONS"
            prm.txOption.targetUri = uri if acc.proxied else self.with_transport_param(uri)
            try:
                acc.sendRequest(prm)
            except pj.Error as exc:
                emit({"id": cmd_id, "ok": False, "error": f"pj.Error: {exc.info()}"})
                continue
            self.options_inflight = cmd_id

    def on_options_done(self, prm: pj.OnSendRequestParam) -> None:
        cmd_id = self.options_inflight
        self.options_inflight = None
        code, reason, headers = 0, "", {}
        try:
            ev = prm.e
            if ev.type == pj.PJSIP_EVENT_TSX_STATE:
                tsx = ev.body.tsxState.tsx
                code, reason = tsx.statusCode, tsx.statusText
                src = ev.body.tsxState.src
                if ev.body.tsxState.type == pj.PJSIP_EVENT_RX_MSG and src.rdata is not None:
                    _, headers = parse_headers(src.rdata.wholeMsg)
        except Exception as exc:
            log(f"options result: {exc!r}")
        if cmd_id is not None:
            emit({"id": cmd_id, "ok": True,
                  "result": {"code": code, "reason": reason, "headers": headers}})
        self.pump_options()

    def on_reg_state(self, acc: AgentAccount, prm: pj.OnRegStateParam) -> None:
        emit({"event": "reg_state", "code": prm.code, "reason": prm.reason,
              "expiration": prm.expiration})
        if prm.code // 100 == 1:
            return
        for i, (cmd_id, pacc, unreg) in enumerate(self.pending_reg):
            if pacc is acc:
                del self.pending_reg[i]
                if cmd_id is not None:
                    emit({"id": cmd_id, "ok": True,
                          "result": {"code": prm.code, "reason": prm.reason,
                                     "expiration": prm.expiration}})
                if (unreg or prm.code // 100 != 2) and self.reg_acc is acc:
                    # Done with this account (unregistered, or registration failed and
                    # is not retried): a later "register" creates a fresh one. The object
                    # stays referenced; it is shut down outside of its own callback.
                    self.reg_acc = None
                    self.dead_accounts.append(acc)
                    self.after(0, acc.shutdown)
                break

    def on_incoming(self, acc: AgentAccount, prm: pj.OnIncomingCallParam) -> None:
        self.apply_pending_settings()
        call = self.new_call(acc, prm.callId)
        start, headers = parse_headers(prm.rdata.wholeMsg)
        info = call.getInfo()
        emit({
            "event": "incoming",
            "call": call.handle,
            "from": info.remoteUri,
            "to": info.localUri,
            "request_uri": start.split(" ")[1] if " " in start else "",
            "sip_call_id": info.callIdString,
            "src": prm.rdata.srcAddress,
            "headers": headers,
        })
        code = self.auto_answer
        delay = 0.0
        if code is None and self.honor_auto_answer_headers:
            wanted = wants_auto_answer(headers)
            if wanted is not None:
                code, delay = 200, wanted
        if code is not None and delay <= 0:
            self.answer_call(call, int(code))
            return
        if self.ring:
            self.answer_call(call, 180)
        if code is not None:
            self.after(delay, lambda: self.answer_call(call, int(code)))

    def answer_call(self, call: AgentCall, code: int) -> None:
        prm = pj.CallOpParam(True)
        prm.statusCode = code
        try:
            call.answer(prm)
        except pj.Error as exc:
            emit({"event": "error", "call": call.handle, "error": exc.info()})


_DEFERRED = object()
PJ_EINVALIDOP = 70013  # "Invalid operation": e.g. an INVITE transaction is still pending


class FileLogWriter(pj.LogWriter):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.fh = open(path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
        self.watch_notifies = False  # report dialog NOTIFYs (cmd_watch_dialog)

    def write(self, entry: pj.LogEntry) -> None:
        self.fh.write(entry.msg if entry.msg.endswith("\n") else entry.msg + "\n")
        if self.watch_notifies:
            report_dialog_notify(entry.msg)


def report_dialog_notify(text: str) -> None:
    """A NOTIFY of the dialog package PJSIP received, or its answer, as an event."""
    if "RX " in text and " Request msg NOTIFY/" in text:
        start, end = text.find("NOTIFY sip"), text.rfind("--end msg--")
        if start < 0:
            return
        message = text[start:end if end > 0 else None].replace("\r\n", "\n")
        head, _, body = message.partition("\n\n")
        headers: dict[str, str] = {}
        for line in head.split("\n")[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("event", "").split(";")[0] == "dialog":
            emit({"event": "dialog_notify", "headers": headers, "body": body.strip()})
    elif " Response msg " in text and "/NOTIFY/" in text and "TX " in text:
        status = text.split(" Response msg ", 1)[1].split("/", 1)[0]
        emit({"event": "dialog_notify_answered", "status": int(status)})


class AgentAccount(pj.Account):
    def __init__(self, agent: Agent, proxied: bool = False) -> None:
        super().__init__()
        self.agent = agent
        self.proxied = proxied  # has an outbound proxy (the registrar, usually)

    def onRegState(self, prm: pj.OnRegStateParam) -> None:
        self.agent.on_reg_state(self, prm)

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        self.agent.on_incoming(self, prm)

    def onSendRequest(self, prm: pj.OnSendRequestParam) -> None:
        self.agent.on_options_done(prm)


class AgentCall(pj.Call):
    def __init__(self, agent: Agent, acc: AgentAccount, handle: str,
                 call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(acc, call_id)
        self.agent = agent
        self.acc = acc
        self.handle = handle
        self.children: list[AgentCall] = []

    def info_dict(self) -> dict[str, Any]:
        ci = self.getInfo()
        return {
            "call": self.handle,
            "state": STATE_NAMES.get(ci.state, str(ci.state)),
            "code": ci.lastStatusCode,
            "reason": ci.lastReason,
            "sip_call_id": ci.callIdString,
            "remote_uri": ci.remoteUri,
            "local_uri": ci.localUri,
            "remote_contact": ci.remoteContact,
            "role": "uac" if ci.role == pj.PJSIP_ROLE_UAC else "uas",
        }

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        ev = self.info_dict()
        ev["event"] = "call_state"
        try:
            if prm.e.type == pj.PJSIP_EVENT_TSX_STATE:
                src = prm.e.body.tsxState.src
                if prm.e.body.tsxState.type == pj.PJSIP_EVENT_RX_MSG and src.rdata is not None:
                    ev["rx_start_line"] = parse_headers(src.rdata.wholeMsg)[0]
        except Exception:
            pass
        emit(ev)

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        ci = self.getInfo()
        media = []
        for m in ci.media:
            if m.type == pj.PJMEDIA_TYPE_AUDIO:
                media.append({"index": m.index, "status": int(m.status), "dir": int(m.dir)})
        status_names = {
            pj.PJSUA_CALL_MEDIA_NONE: "none",
            pj.PJSUA_CALL_MEDIA_ACTIVE: "active",
            pj.PJSUA_CALL_MEDIA_LOCAL_HOLD: "local_hold",
            pj.PJSUA_CALL_MEDIA_REMOTE_HOLD: "remote_hold",
            pj.PJSUA_CALL_MEDIA_ERROR: "error",
        }
        for m in media:
            m["status_name"] = status_names.get(m["status"], str(m["status"]))
        emit({"event": "media_state", "call": self.handle, "media": media})

    def onCallTsxState(self, prm: pj.OnCallTsxStateParam) -> None:
        try:
            ev = prm.e
            tsx = ev.body.tsxState.tsx
            if tsx.role == pj.PJSIP_ROLE_UAS and tsx.state == pj.PJSIP_TSX_STATE_TRYING:
                src = ev.body.tsxState.src
                start, headers = ("", {})
                if src.rdata is not None:
                    start, headers = parse_headers(src.rdata.wholeMsg)
                emit({"event": "rx_request", "call": self.handle, "method": tsx.method,
                      "start_line": start, "headers": headers})
        except Exception as exc:
            log(f"tsx state: {exc!r}")

    def onCallTransferRequest(self, prm: pj.OnCallTransferRequestParam) -> None:
        new = self.agent.new_call(self.acc)
        self.children.append(new)
        prm.newCall = new
        emit({"event": "transfer_request", "call": self.handle, "uri": prm.dstUri,
              "new_call": new.handle, "code": prm.statusCode})

    def onCallTransferStatus(self, prm: pj.OnCallTransferStatusParam) -> None:
        emit({"event": "transfer_status", "call": self.handle, "code": prm.statusCode,
              "reason": prm.reason, "final": bool(prm.finalNotify)})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="agent")
    p.add_argument("--transport", choices=("udp", "tcp", "tls"), default="udp")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--rtp-port", type=int, default=0)
    p.add_argument("--rtp-range", type=int, default=0)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tls-ca")
    p.add_argument("--auto-answer", type=int)
    p.add_argument("--honor-auto-answer-headers", action="store_true")
    p.add_argument("--no-ring", action="store_true")
    p.add_argument("--log-file")
    p.add_argument("--log-level", type=int, default=4)
    args = p.parse_args()

    agent = Agent(args)

    def on_term(_sig: int, _frm: Any) -> None:
        agent.running = False

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        agent.start()
    except Exception as exc:
        log(traceback.format_exc())
        emit({"event": "fatal", "error": f"{type(exc).__name__}: {exc}"})
        return 2
    try:
        agent.run()
    finally:
        emit({"event": "stopping"})
        try:
            agent.shutdown()
        except Exception as exc:
            log(f"shutdown: {exc!r}")
    _proto.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
