"""What every implementation under test offers the runner, and a SIP readiness probe.

A target is one proxy configuration (sipgw in one process or with 2 workers, Kamailio
with 1 or 2 workers). The runner starts it for each repetition, registers the sipp UAS with it,
measures the CPU of its process tree, and stops it.
"""

from __future__ import annotations

import re
import secrets
import socket
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .process import Managed

# The dial plan both implementations get: this DID rings extension 201, where the sipp
# UAS registers. The same constants as tests/integration/gateway.py (not imported: the
# bench stands on its own).
DID = "+31201234567"
EXTENSION = "201"
DOMAIN = "acme.test"


@dataclass
class LogSummary:
    warnings: int = 0
    errors: int = 0
    other: int = 0  # lines outside the log format (e.g. a library printing to stderr)
    # The most frequent messages at warning level or above, with their counts.
    top: list[tuple[str, int]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "warnings": self.warnings,
            "errors": self.errors,
            "other": self.other,
            "top": [{"message": m, "count": c} for m, c in self.top],
        }


def summarize(messages: list[tuple[str, str]], top: int = 10) -> LogSummary:
    """`messages` are (level, text) pairs; level is "warning", "error", "critical" or
    "other"."""
    counts = Counter(f"{level}: {text}" for level, text in messages)
    return LogSummary(
        warnings=sum(1 for level, _ in messages if level == "warning"),
        errors=sum(1 for level, _ in messages if level in ("error", "critical")),
        other=sum(1 for level, _ in messages if level == "other"),
        top=counts.most_common(top),
    )


class Target(ABC):
    impl: str  # implementation: "sipgw" or "kamailio"
    workers: int  # processes that handle SIP messages
    notes: str = ""
    # The sipp UAC's source port (sipgw trusts the trunk by its source address).
    uac_port: int = 0
    # -au/-ap for the REGISTER, or None when the registrar does not challenge.
    register_auth: tuple[str, str] | None = None
    # The REGISTER's domain (Request-URI and To host).
    register_domain: str = "127.0.0.1"

    # Seconds the implementation may take to exit after SIGTERM before SIGKILL, and what
    # it usually takes (kept free in the time budget).
    stop_grace_s: float = 10.0
    expected_stop_s: float = 1.0
    # ... and when no request is left pending (the OPTIONS scenario: answered at once).
    expected_idle_stop_s: float = 1.0

    # Whose search keeps its time when a step scenario's budget runs short (a lower
    # number first): the product's (sipgw's) before the reference's.
    budget_priority: int = 1

    # The step scenarios it takes part in (the runner skips it in the others): a proxy
    # does both; the uvloop floor only answers OPTIONS.
    scenarios: frozenset[str] = frozenset({"proxied-calls", "options"})
    # At most this many step searches per scenario (None: every repetition asked for),
    # and whether it gets a sustained check.
    max_repetitions: int | None = None
    sustained_check: bool = True
    # What starting it and the idle sample take, when less than the scenario's estimate
    # (None: the scenario's; see runner.turn_start_s).
    start_s: float | None = None

    def expected_stop(self, requests_pending: bool) -> float:
        return self.expected_stop_s if requests_pending else self.expected_idle_stop_s

    def __init__(self) -> None:
        self.proc: Managed | None = None
        self.sip_port = 0
        self.workdir = Path()
        self.stop_s: float | None = None  # how long the last stop() took

    @property
    def aux_pids(self) -> list[int]:
        """Processes the implementation needs beside its own tree (sipgw's Redis): their
        CPU is reported apart from the proxy's."""
        return []

    @property
    def label(self) -> str:
        """kamailio-1w, kamailio-2w; sipgw (one process), sipgw-2w."""
        if self.impl == "kamailio" or self.workers > 1:
            return f"{self.impl}-{self.workers}w"
        return self.impl

    @property
    def remote(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def argv(self) -> list[str]:
        return self.proc.argv if self.proc is not None else []

    def turn_counters(self) -> dict[str, Any]:
        """The implementation's own counters at the end of a turn (sipgw: how its
        workers shared the requests), kept in the record; {} when it has none."""
        return {}

    @abstractmethod
    def start(self, workdir: Path) -> None:
        """Start the process on free ports and return once it answers SIP."""

    @abstractmethod
    def log_summary(self) -> LogSummary: ...

    @abstractmethod
    def version(self) -> str: ...

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after `stop_grace_s`; the exit code (-9: killed)."""
        if self.proc is None:
            return None
        t0 = time.monotonic()
        code = self.proc.stop(grace=self.stop_grace_s).returncode
        self.stop_s = round(time.monotonic() - t0, 2)
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.proc.running


def supported(
    labels: Sequence[str], make: Mapping[str, Callable[[], Target]], scenario: str
) -> tuple[list[str], dict[str, str]]:
    """The targets (by label) that take part in `scenario`, and why each other one does
    not: a target in a scenario it does not support is skipped, not an error."""
    taking, skipped = [], {}
    for label in labels:
        target = make[label]()
        if scenario in target.scenarios:
            taking.append(label)
        else:
            skipped[label] = f"takes part in {', '.join(sorted(target.scenarios))} only"
    return taking, skipped


def sip_ping(port: int, host: str = "127.0.0.1", timeout: float = 0.3) -> bool:
    """Send one OPTIONS to host:port and wait for any SIP response."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        s.settimeout(timeout)
        local = s.getsockname()[1]
        tag = secrets.token_hex(6)
        msg = (
            f"OPTIONS sip:ping@{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{local};branch=z9hG4bK-{tag};rport\r\n"
            f"From: <sip:bench@{host}>;tag={tag}\r\n"
            f"To: <sip:ping@{host}:{port}>\r\n"
            f"Call-ID: ping-{tag}@{host}\r\n"
            "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        s.sendto(msg.encode(), (host, port))
        try:
            data = s.recv(65535)
        except OSError:
            return False
        return data.startswith(b"SIP/2.0 ")


def wait_sip_ready(target: Target, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not target.alive():
            raise RuntimeError(
                f"{target.label} exited during start; log tail:\n"
                + tail(target.proc.log_text() if target.proc else "")
            )
        if sip_ping(target.sip_port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{target.label} did not answer SIP OPTIONS within {timeout}s")


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)
