"""Run sipp (SIPp 3.6.1, Debian package sip-tester) from tests.

    result = await run_sipp(["-sf", scenario("uac"), "127.0.0.1:5060", "-s", "202",
                             "-m", "50", "-r", "25"], timeout=30, keys={"domain": "acme.test"})
    result.check(calls=50)                  # rc 0, 50 successful, 0 failed, with logs if not

    uas = await start_sipp(["-sf", scenario("uas"), "-m", "50"])   # background UAS
    ... uas.port ...
    result = await uas.wait(timeout=30)     # or: await uas.stop() (soft quit, stats kept)

Every run gets its own local SIP port (-p), control port (-cp: the default 8888 collides
between instances) and media port (-mp: sipp binds it and fails with exit code 254 if it is
taken), binds 127.0.0.1 (-i), never reads stdin (-nostdin), writes its statistics CSV
(-trace_stat), final screen (-trace_screen), unexpected messages (-trace_err) and, unless
disabled, all messages (-trace_msg) into a temporary directory, and has a global -timeout.

Our scenarios (tests/peers/scenarios) take the keywords [domain] (Request-URI/To host),
[caller] (From user), [expires] (REGISTER), [realm], [auth_user], [auth_password]
(register_uas); `keys` overrides the defaults (DEFAULT_KEYS).
"""

from __future__ import annotations

import csv
import math
import signal
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from . import ports
from .process import PeerError, PeerProcess, require_binary, tail_file

SCENARIOS = Path(__file__).with_name("scenarios")

# sipp exit codes (sipp(1)): 0 all calls OK, 1 some failed, 97 internal command exit,
# 99 normal exit without processed calls, 255 fatal error, 254 fatal socket bind error.
EXIT_MEANING = {
    0: "all calls successful",
    1: "at least one call failed",
    97: "exit on internal command",
    99: "normal exit without calls processed",
    255: "fatal error",
    254: "fatal error binding a socket",
}

_OPTS_WITH_VALUE = {
    "-sf", "-sn", "-sd", "-t", "-i", "-p", "-cp", "-mp", "-mi", "-m", "-r", "-rp", "-l",
    "-d", "-s", "-au", "-ap", "-timeout", "-recv_timeout", "-inf", "-stf",
    "-fd", "-screen_file", "-error_file", "-message_file", "-users", "-rsa", "-base_cseq",
    "-max_recv_loops", "-max_sched_loops", "-auth_uri", "-default_behaviors", "-ci", "-cid_str",
    "-tls_cert", "-tls_key", "-tls_ca", "-tls_crl", "-tls_version", "-rate_max",
    "-rate_increase", "-dynamicMax", "-dynamicStart", "-dynamicStep", "-mb", "-rtp_payload",
}
_OPTS_WITH_TWO_VALUES = {"-key", "-set", "-infindex"}


# Keywords our scenarios use; every run gets all of them (sipp rejects a scenario that
# uses an unknown keyword). "domain" defaults to the remote host (or our own address).
DEFAULT_KEYS = {
    "caller": "sipp",
    "expires": "300",
    "realm": "sipgw.test",
    "auth_user": "sipp",
    "auth_password": "password",
}


def scenario(name: str) -> str:
    """Path of one of our scenarios by name ("uac", "uas_bye", "options_uac_503", ...)."""
    path = SCENARIOS / (name if name.endswith(".xml") else f"{name}.xml")
    if not path.is_file():
        known = sorted(p.stem for p in SCENARIOS.glob("*.xml"))
        raise FileNotFoundError(f"no sipp scenario {name!r}; known: {known}")
    return str(path)


@dataclass
class SippResult:
    returncode: int
    stats: dict[str, str]  # last row of the -trace_stat CSV (cumulative columns end in (C))
    screen: str  # final screens (message counts per scenario step, statistics)
    errors: str  # unexpected messages and other errors (-trace_err)
    output: str  # stdout + stderr
    argv: list[str]
    workdir: Path | None = None
    messages_tail: str = ""

    def _int(self, column: str) -> int:
        try:
            return int(float(self.stats.get(column, "0") or 0))
        except ValueError:
            return 0

    @property
    def successful(self) -> int:
        return self._int("SuccessfulCall(C)")

    @property
    def failed(self) -> int:
        return self._int("FailedCall(C)")

    @property
    def created(self) -> int:
        return self._int("TotalCallCreated")

    @property
    def retransmissions(self) -> int:
        return self._int("Retransmissions(C)")

    @property
    def unexpected(self) -> int:
        return self._int("FailedUnexpectedMessage(C)")

    @property
    def timeouts(self) -> int:
        return self._int("FailedTimeoutOnRecv(C)") + self._int("FailedMaxUDPRetrans(C)")

    @property
    def call_rate(self) -> float:
        try:
            return float(self.stats.get("CallRate(C)", "0") or 0)
        except ValueError:
            return math.nan

    @property
    def response_time_ms(self) -> float:
        """Mean cumulative response time 1 (rtd="true" steps) in milliseconds."""
        return _hms_to_ms(self.stats.get("ResponseTime1(C)", ""))

    def describe(self) -> str:
        meaning = EXIT_MEANING.get(self.returncode, "?")
        parts = [
            f"sipp {' '.join(self.argv)}",
            f"exit code {self.returncode} ({meaning}); calls created {self.created}, "
            f"successful {self.successful}, failed {self.failed}, "
            f"retransmissions {self.retransmissions}, unexpected {self.unexpected}",
        ]
        if self.screen:
            parts += ["--- final screen", self.screen[-4000:]]
        if self.errors:
            parts += ["--- errors (tail)", self.errors[-4000:]]
        if self.messages_tail:
            parts += ["--- messages (tail)", self.messages_tail]
        if self.output:
            parts += ["--- output (tail)", self.output[-2000:]]
        return "\n".join(parts)

    def check(self, calls: int | None = None, *, allow_retransmissions: bool = True) -> None:
        """Assert exit code 0, no failed call, `calls` successful calls (if given)."""
        ok = self.returncode == 0 and self.failed == 0
        if calls is not None:
            ok = ok and self.successful == calls
        if not allow_retransmissions:
            ok = ok and self.retransmissions == 0
        if not ok:
            raise AssertionError(f"sipp run not clean (expected {calls} calls)\n"
                                 f"{self.describe()}")


def _hms_to_ms(value: str) -> float:
    # "00:00:00:012000" = hh:mm:ss:microseconds
    try:
        h, m, s, us = (int(x) for x in value.split(":"))
    except ValueError:
        return math.nan
    return ((h * 60 + m) * 60 + s) * 1000 + us / 1000


def _read_stats(path: Path) -> dict[str, str]:
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            rows = list(csv.reader(fh, delimiter=";"))
    except OSError:
        return {}
    if len(rows) < 2:
        return {}
    header, last = rows[0], rows[-1]
    return {k: v for k, v in zip(header, last, strict=False) if k}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _auth_uri(args: Sequence[str], domain: str) -> list[str]:
    """sipp's digest ``uri`` is its remote address unless told otherwise; RFC 3261 §22
    (and the gateway) want the Request-URI, which our scenarios write as
    ``sip:[domain]`` (REGISTER) or ``sip:[service]@[domain]`` (INVITE)."""
    if not _has(args, "-au") or _has(args, "-auth_uri"):
        return []
    scenario_file = _value(args, "-sf") or ""
    if "register" in Path(scenario_file).name:
        return ["-auth_uri", domain]
    return ["-auth_uri", f"{_value(args, '-s') or 'service'}@{domain}"]


def _value(args: Sequence[str], opt: str) -> str | None:
    args = list(args)
    if opt in args and args.index(opt) + 1 < len(args):
        return args[args.index(opt) + 1]
    return None


def _has(args: Sequence[str], opt: str) -> bool:
    return opt in args


def _remote_host(args: Sequence[str]) -> str | None:
    """The positional remote host[:port] argument, if any."""
    skip = 0
    for a in args:
        if skip:
            skip -= 1
        elif a in _OPTS_WITH_TWO_VALUES:
            skip = 2
        elif a in _OPTS_WITH_VALUE:
            skip = 1
        elif not a.startswith("-"):
            return a
    return None


class SippProcess:
    """A running sipp (see start_sipp). `port` is its SIP port."""

    def __init__(self, proc: PeerProcess, argv: list[str],
                 workdir: tempfile.TemporaryDirectory[str], port: int, control_port: int,
                 keep_workdir: bool, host: str = "127.0.0.1") -> None:
        self.proc = proc
        self.argv = argv
        self._workdir = workdir
        self.workdir = Path(workdir.name)
        self.port = port
        self.control_port = control_port
        self.keep_workdir = keep_workdir
        self.host = host
        self.result: SippResult | None = None

    @property
    def uri_host(self) -> str:
        """host:port of its SIP socket (IPv6 in brackets), for URIs and the command line."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def __aenter__(self) -> SippProcess:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def _collect(self) -> SippResult:
        if self.result is not None:
            return self.result
        rc = self.proc.returncode
        w = self.workdir
        screen = _read_text(w / "screen.log")
        errors = _read_text(w / "errors.log")
        messages = tail_file(w / "messages.log", 80) if (w / "messages.log").exists() else ""
        self.result = SippResult(
            returncode=-1 if rc is None else (rc & 0xFF),
            stats=_read_stats(w / "stats.csv"),
            screen=screen,
            errors=errors,
            output=self.proc.output(),
            argv=self.argv,
            workdir=w if self.keep_workdir else None,
            messages_tail=messages,
        )
        if not self.keep_workdir:
            self._workdir.cleanup()
        return self.result

    async def wait(self, timeout: float) -> SippResult:
        """Wait for sipp to finish by itself (-m calls done, or its -timeout)."""
        try:
            await self.proc.wait_exit(timeout)
        except PeerError:
            await self.stop()
            raise
        return self._collect()

    async def stop(self, grace: float = 5.0) -> SippResult:
        """Soft quit (SIGUSR1: no new calls, wait for the running ones, write the final
        screen and statistics), then SIGKILL after `grace` seconds."""
        if self.proc.running:
            await self.proc.stop(grace, sig=signal.SIGUSR1)
        else:
            await self.proc.stop()
        return self._collect()

    def describe(self) -> str:
        return self.proc.describe()


async def start_sipp(
    args: Sequence[str],
    *,
    local_port: int | None = None,
    timeout: float | None = 60.0,
    keys: Mapping[str, str] | None = None,
    trace_msg: bool = True,
    keep_workdir: bool = False,
    name: str = "sipp",
    host: str = "127.0.0.1",
) -> SippProcess:
    """Start sipp in the background with `args` (scenario, remote host, -m, -r, -t, -s,
    -au/-ap, ...) plus the harness options described in the module docstring.
    `timeout` becomes sipp's own -timeout (seconds) with -timeout_error (None: no limit).
    `host` is the local address (-i/-mi): "127.0.0.1" or "::1" (then give the remote
    host as "[::1]:port")."""
    binary = require_binary("sipp")
    args = list(args)
    port = local_port or ports.free_port(host=host)
    control_port = ports.free_port(udp=True, tcp=True)
    media_port = ports.free_port(udp=True, tcp=False, span=4, host=host)
    workdir = tempfile.TemporaryDirectory(prefix="sipp-")
    w = Path(workdir.name)
    argv = [binary, *args]
    if not _has(args, "-i"):
        argv += ["-i", host]
    if not _has(args, "-mi"):
        argv += ["-mi", host]
    argv += ["-p", str(port), "-cp", str(control_port), "-mp", str(media_port), "-nostdin"]
    argv += ["-trace_stat", "-stf", str(w / "stats.csv"), "-fd", "1"]
    argv += ["-trace_screen", "-screen_file", str(w / "screen.log")]
    argv += ["-trace_err", "-error_file", str(w / "errors.log")]
    if trace_msg:
        argv += ["-trace_msg", "-message_file", str(w / "messages.log")]
    if timeout is not None and not _has(args, "-timeout"):
        argv += ["-timeout", f"{max(1, math.ceil(timeout))}s", "-timeout_error"]
    remote = _remote_host(args) or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    all_keys = dict(DEFAULT_KEYS, domain=remote)
    all_keys.update(keys or {})
    for k, v in all_keys.items():
        argv += ["-key", k, str(v)]
    argv += _auth_uri(args, all_keys["domain"])
    proc = await PeerProcess.start(
        name, argv, cwd=w, stdin=False,
        log_files=[w / "errors.log", w / "messages.log"] if trace_msg else [w / "errors.log"],
    )
    return SippProcess(proc, argv[1:], workdir, port, control_port, keep_workdir, host)


async def run_sipp(
    args: Sequence[str],
    *,
    timeout: float = 60.0,
    local_port: int | None = None,
    keys: Mapping[str, str] | None = None,
    trace_msg: bool = True,
    keep_workdir: bool = False,
    host: str = "127.0.0.1",
) -> SippResult:
    """Run sipp to completion (it should have -m) and return its result. sipp's own
    -timeout is `timeout`; we wait a little longer and SIGKILL if it still runs."""
    proc = await start_sipp(args, local_port=local_port, timeout=timeout, keys=keys,
                            trace_msg=trace_msg, keep_workdir=keep_workdir, host=host)
    try:
        await proc.proc.wait_exit(timeout + 10)
    except PeerError:
        result = await proc.stop(grace=2)
        raise AssertionError(f"sipp did not finish within {timeout}s\n{result.describe()}"
                             ) from None
    except BaseException:
        await proc.stop(grace=1)
        raise
    await proc.proc.stop()
    return proc._collect()


@dataclass
class SippPair:
    """Convenience: results of a UAC run against a background UAS."""

    uac: SippResult
    uas: SippResult
    extra: dict[str, object] = field(default_factory=dict)


async def run_pair(
    uac_scenario: str,
    uas_scenario: str,
    *,
    calls: int,
    transport: str = "u1",
    rate: int = 50,
    timeout: float = 30.0,
    uac_args: Sequence[str] = (),
    uas_args: Sequence[str] = (),
    host: str = "127.0.0.1",
) -> SippPair:
    """sipp UAC ↔ sipp UAS directly (validates scenarios and the harness itself)."""
    async with await start_sipp(
        ["-sf", scenario(uas_scenario), "-t", transport, "-m", str(calls), *uas_args],
        timeout=timeout, name="sipp-uas", host=host,
    ) as uas:
        uac = await run_sipp(
            ["-sf", scenario(uac_scenario), uas.uri_host, "-t", transport, "-m", str(calls),
             "-r", str(rate), "-s", "callee", *uac_args],
            timeout=timeout, host=host,
        )
        uas_result = await uas.wait(timeout) if uac.returncode == 0 else await uas.stop(1)
    return SippPair(uac=uac, uas=uas_result)

