"""``sipgw demo``: the demo's simulated peers, so a newcomer sees calls without a softphone.

    sipgw demo phone            a phone registered as the demo DID's extension (201): it
                                rings for a few seconds, then answers (``make run``
                                starts it)
    sipgw demo call             an inbound call from the demo carrier to the demo DID,
                                from a number the demo contacts know (Jane Example)
    sipgw demo call --unknown   the same from a number no demo contact has

Both are sipp (Debian ``sip-tester``) running the scenarios in ``gateway/demo/``. Who to
register as and which number to call come from the embedded demo settings
(gateway/default.toml), so they follow it. They speak SIP only and import no server
package: like ``sipgw watch`` they could run on another machine.

``make run`` (scripts/run-demo.sh) adds what the demo needs on top of the embedded
settings: the phone's profile, which challenges with MD5 alone (sipp 3.6 reads only the
first challenge and knows only MD5), and the address the carrier's calls come from
(``--source``, 127.0.0.1:5081) among the demo trunk's trusted ones.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.config.syntax import split_host_port, uri_host

DEFAULT_GATEWAY = "127.0.0.1:5060"
# The carrier's second address: its first, 127.0.0.1:5080 (the demo trunk's host and
# port), is where the simulated carrier of `make run` answers the phones' outbound calls.
DEFAULT_SOURCE = "127.0.0.1:5081"
RING_SECONDS = 3.0  # phone_answer.xml's wait for a CANCEL before it answers
PROBE_TIMEOUT = 2.0


@dataclass(frozen=True)
class Caller:
    number: str
    name: str | None = None  # the demo contact who has this number, if any
    company: str | None = None


# demo/contacts.csv, row C-1001: mobile 06 1234 5678, read as +31 6 1234 5678 (region NL).
KNOWN_CALLER = Caller("+31612345678", "Jane Example", "Example BV")
UNKNOWN_CALLER = Caller("+31687654321")  # in no row of demo/contacts.csv


class DemoError(Exception):
    """What stops a demo command before sipp starts: the person running it must fix it."""


@dataclass(frozen=True)
class Demo:
    """What the demo commands need to know of the embedded demo settings."""

    domain: str  # the tenant's first domain: the phone registers there
    did: str  # the public number the carrier calls
    extension: str  # the extension the DID rings
    username: str  # the SIP user of that extension
    password: str  # its demo password (public, see gateway/default.toml)


def embedded_demo() -> Demo:
    raw: dict[str, Any] = tomllib.loads(
        resources.files("gateway").joinpath("default.toml").read_text()
    )
    tenant = raw["tenants"][0]
    did = tenant["dids"][0]
    user = next(u for u in tenant["users"] if u["extension"] == did["extension"])
    return Demo(
        domain=tenant["domains"][0],
        did=did["number"],
        extension=did["extension"],
        username=user["username"],
        password=user["password"],
    )


def scenario(name: str) -> Path:
    """A scenario shipped in gateway/demo/ (package data)."""
    path = Path(str(resources.files("gateway").joinpath("demo", name)))
    if not path.is_file():
        raise DemoError(f"the demo scenario {name} is missing from the installation ({path})")
    return path


def sipp_binary() -> str:
    binary = shutil.which("sipp")
    if binary is None:
        raise DemoError(
            "sipp is not installed: the demo's simulated phone and carrier are sipp "
            "scenarios (Debian package sip-tester; `make run` installs it)"
        )
    return binary


def address(text: str) -> tuple[str, int]:
    """An argparse type: "ip:port"."""
    try:
        host, port = split_host_port(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if port is None:
        raise argparse.ArgumentTypeError(f"give host:port, got {text!r}")
    return host, port


def seconds(text: str) -> float:
    """An argparse type: a duration in seconds, 0-3600."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"give 0 to 3600 seconds, got {text}")
    return value


def show(addr: tuple[str, int]) -> str:
    return f"{uri_host(addr[0])}:{addr[1]}"


def free_udp_port(host: str, span: int = 1) -> int:
    """A UDP port of `host` that is free, with the `span - 1` ports above it: sipp binds
    its control port (-cp) and media ports (-mp, and the ones above it) itself and fails
    when one is taken, and its defaults (8888, 6000) collide between two sipps."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
            base = int(probe.getsockname()[1])
        if base + span <= 65536 and all(_udp_free(family, host, base + i) for i in range(span)):
            return base
    raise DemoError(f"found no free UDP port on {host}")


def _udp_free(family: socket.AddressFamily, host: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def probe_gateway(gateway: tuple[str, int], source: tuple[str, int] | None = None) -> None:
    """Ask the gateway for an OPTIONS answer (RFC 3261 §11) before sipp starts: sipp
    would retransmit into the void for half a minute where this says at once that no
    gateway listens. Sent from `source` when given, which also proves it free for sipp."""
    family = socket.AF_INET6 if ":" in gateway[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(source or (gateway[0], 0))
        except OSError as err:
            assert source is not None
            raise DemoError(
                f"cannot send from {show(source)} ({err.strerror}): is another demo call "
                "still running? (--source picks another address the demo trunk trusts)"
            ) from None
        local = show(sock.getsockname()[:2])
        target = show(gateway)
        request = (
            f"OPTIONS sip:{target} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:sipgw-demo@{local}>;tag={secrets.token_hex(4)}\r\n"
            f"To: <sip:{target}>\r\n"
            f"Call-ID: {secrets.token_hex(12)}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        sock.settimeout(PROBE_TIMEOUT)
        try:
            sock.connect(gateway)
            sock.send(request.encode())
            answer = sock.recv(65535)
        except OSError:  # refused (nothing listens: ICMP port unreachable) or no answer
            answer = b""
    if not answer.startswith(b"SIP/2.0 "):
        raise DemoError(
            f"no SIP gateway answers on udp {target}: is the demo running? Start it with "
            "`make run` (or give the gateway's address with --gateway)"
        )


# --- sipgw demo phone -------------------------------------------------------------------


def phone_argv(
    sipp: str,
    demo: Demo,
    gateway: tuple[str, int],
    *,
    port: int | None,
    expires: int,
    log: Path | None,
) -> list[str]:
    host = gateway[0]
    # Registered again at 80 % of the granted time: well before the binding expires, and
    # on the same Call-ID (phone_register.xml).
    refresh_ms = int(expires * 800)
    argv = [sipp, "-sf", str(scenario("phone_register.xml"))]
    argv += ["-oocsf", str(scenario("phone_answer.xml")), show(gateway)]
    argv += ["-i", host, "-m", "1", "-s", demo.username, "-nostdin", "-aa"]
    argv += ["-au", demo.username, "-ap", demo.password, "-auth_uri", demo.domain]
    argv += ["-key", "domain", demo.domain, "-key", "expires", str(expires)]
    argv += ["-key", "refresh_ms", str(refresh_ms)]
    # Always an explicit -p: without one sipp binds a random port yet writes 5060 into
    # its Contact ([local_port]), and the callee's in-dialog requests would go there.
    argv += ["-p", str(port or free_udp_port(host))]
    argv += ["-cp", str(free_udp_port(host)), "-mp", str(free_udp_port(host, span=4))]
    if log is not None:
        argv += ["-trace_logs", "-log_file", str(log)]
    return argv


def cmd_phone(args: argparse.Namespace) -> int:
    demo = embedded_demo()
    try:
        sipp = sipp_binary()
        probe_gateway(args.gateway)
        argv = phone_argv(
            sipp, demo, args.gateway, port=args.port, expires=args.expires, log=args.log
        )
    except DemoError as err:
        print(f"sipgw demo phone: {err}", file=sys.stderr)
        return 2
    print(
        f"demo phone: registering as {demo.username}@{demo.domain} (extension "
        f"{demo.extension}) at udp {show(args.gateway)}, every {args.expires * 0.8:.0f} s; "
        f"each call rings {RING_SECONDS:.0f} s, then is answered",
        flush=True,
    )
    # sipp takes over this process: whoever started `sipgw demo phone` stops sipp by
    # this very PID, and no Python stays in between.
    os.execv(sipp, argv)


# --- sipgw demo call --------------------------------------------------------------------


# The final answers trunk_call.xml tells apart (RFC 3261 §21), and what each says here.
FAILURES = {
    "403": "Forbidden",
    "404": "Not Found",
    "407": "Proxy Authentication Required",
    "408": "Request Timeout",
    "480": "Temporarily Unavailable",
    "483": "Too Many Hops",
    "486": "Busy Here",
    "487": "Request Terminated",
    "488": "Not Acceptable Here",
    "500": "Server Internal Error",
    "502": "Bad Gateway",
    "503": "Service Unavailable",
    "504": "Server Time-out",
    "603": "Decline",
}


@dataclass
class CallOutcome:
    steps: list[str]  # "ringing", "answered", "ended", "failed <status code>"
    returncode: int | None = None  # sipp's
    errors: str = ""  # what sipp wrote on stderr (the tail)
    seconds: float = 0.0  # how long sipp ran

    @property
    def ended(self) -> bool:
        return "ended" in self.steps

    @property
    def failure(self) -> str | None:
        """The status code of the final error answer, if the call got one."""
        failed = [s for s in self.steps if s.startswith("failed ")]
        return failed[-1].removeprefix("failed ") if failed else None


def call_argv(
    sipp: str,
    demo: Demo,
    caller: Caller,
    gateway: tuple[str, int],
    source: tuple[str, int],
    *,
    hold: float,
    timeout: float,
) -> list[str]:
    host = source[0]
    argv = [sipp, "-sf", str(scenario("trunk_call.xml")), show(gateway)]
    argv += ["-i", host, "-p", str(source[1]), "-m", "1", "-nostdin"]
    argv += ["-s", demo.did, "-key", "domain", show(gateway), "-key", "caller", caller.number]
    argv += ["-d", str(int(hold * 1000))]
    argv += ["-cp", str(free_udp_port(host)), "-mp", str(free_udp_port(host, span=4))]
    argv += ["-timeout", f"{max(1, round(timeout + hold))}s", "-timeout_error"]
    return argv


def follow_call(argv: list[str], work: Path, hold: float, timeout: float) -> CallOutcome:
    """Run sipp to its end, printing each step of the call as its scenario logs it."""
    describe = {
        "ringing": "ringing: the phone of the extension rings",
        "answered": f"answered: holding the call for {hold:g} s",
        "ended": "ended: the carrier hung up",
    }
    log, errors = work / "call.log", work / "sipp.err"
    outcome = CallOutcome([])
    with errors.open("wb") as stderr:
        proc = subprocess.Popen(
            [*argv, "-trace_logs", "-log_file", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    started = time.monotonic()
    deadline = started + timeout + hold + 10  # sipp's own -timeout comes first
    try:
        while True:
            done = proc.poll() is not None
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            for step in lines[len(outcome.steps) :]:
                outcome.steps.append(step)
                if step in describe:
                    print(describe[step], flush=True)
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # sipp offers no progress to wait on but this file
    finally:
        if proc.poll() is None:  # late or interrupted: stop sipp, by its PID, first
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    outcome.returncode = proc.returncode
    outcome.seconds = time.monotonic() - started
    outcome.errors = errors.read_text(errors="replace").strip()[-2000:]
    return outcome


def _hint(code: str, demo: Demo, source: tuple[str, int]) -> str:
    if code in ("401", "403", "407"):
        return (
            f"the gateway does not trust {show(source)} as the demo trunk (`make run`'s "
            f"demo trunk trusts {DEFAULT_SOURCE}, or the port in $DEMO_CALLER_PORT)"
        )
    if code in ("404", "408", "480"):
        return (
            f"is a phone registered as extension {demo.extension}? `make run` starts the "
            "simulated one (sipgw demo phone)"
        )
    return "see the gateway's log"


def cmd_call(args: argparse.Namespace) -> int:
    demo = embedded_demo()
    caller = UNKNOWN_CALLER if args.unknown else KNOWN_CALLER
    try:
        sipp = sipp_binary()
        probe_gateway(args.gateway, args.source)
    except DemoError as err:
        print(f"sipgw demo call: {err}", file=sys.stderr)
        return 2
    print(
        f"demo call: {caller.number} calls {demo.did} (extension {demo.extension}) through "
        f"the demo carrier ({show(args.source)} -> udp {show(args.gateway)})",
        flush=True,
    )
    if caller.name is not None:
        print(
            f"  a demo contact has this number: the screen pop names {caller.name} "
            f"({caller.company})",
            flush=True,
        )
    else:
        print(
            "  no demo contact has this number: the screen pop offers a new contact",
            flush=True,
        )
    argv = call_argv(
        sipp, demo, caller, args.gateway, args.source, hold=args.hold, timeout=args.timeout
    )
    with tempfile.TemporaryDirectory(prefix="sipgw-demo-call-") as work:
        try:
            outcome = follow_call(argv, Path(work), args.hold, args.timeout)
        except KeyboardInterrupt:
            print("demo call: interrupted", file=sys.stderr)
            return 1
    if outcome.ended:
        return 0
    if outcome.failure is not None:
        code = outcome.failure
        problem = f"the call failed: SIP {code} {FAILURES.get(code, '')}; "
        problem += _hint(code, demo, args.source)
    elif outcome.seconds >= args.timeout + args.hold:
        last = outcome.steps[-1] if outcome.steps else "no answer"
        problem = f"the call did not end within {args.timeout + args.hold:g} s "
        problem += f"(last step: {last}); {_hint('408', demo, args.source)}"
    else:
        problem = f"sipp failed (exit status {outcome.returncode}): {outcome.errors}"
    print(f"sipgw demo call: {problem}", file=sys.stderr)
    return 1


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "demo", help="the demo's simulated phone and carrier (sipp), for `make run`"
    )
    sub = parser.add_subparsers(dest="demo_command", required=True)

    phone = sub.add_parser(
        "phone",
        help=f"register a simulated phone for the demo DID's extension: it rings "
        f"{RING_SECONDS:.0f} s, then answers",
    )
    phone.add_argument(
        "--gateway", type=address, default=DEFAULT_GATEWAY,
        help=f"the gateway's SIP address, UDP ({DEFAULT_GATEWAY})",
    )  # fmt: skip
    phone.add_argument("--port", type=int, help="the phone's own SIP port (default: any free)")
    phone.add_argument(
        "--expires", type=int, default=300,
        help="seconds each registration asks for (300); renewed at 80 %%",
    )  # fmt: skip
    phone.add_argument(
        "--log", type=Path, help='append a line "registered" to this file at each registration'
    )
    phone.set_defaults(func=cmd_phone)

    call = sub.add_parser("call", help="an inbound call from the demo carrier to the demo DID")
    call.add_argument(
        "--unknown", action="store_true", help="call from a number no demo contact has"
    )
    call.add_argument(
        "--gateway", type=address, default=DEFAULT_GATEWAY,
        help=f"the gateway's SIP address, UDP ({DEFAULT_GATEWAY})",
    )  # fmt: skip
    call.add_argument(
        "--source", type=address, default=DEFAULT_SOURCE,
        help=f"the carrier address to call from; the demo trunk must trust it ({DEFAULT_SOURCE})",
    )  # fmt: skip
    call.add_argument(
        "--hold", type=seconds, default=10.0, help="seconds from the answer to the hang-up (10)"
    )
    call.add_argument(
        "--timeout", type=seconds, default=60.0,
        help="seconds to wait for the answer (60; the gateway gives up after 32)",
    )  # fmt: skip
    call.set_defaults(func=cmd_call)
