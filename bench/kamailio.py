"""Kamailio 5.6 as the reference proxy: bench/kamailio/kamailio.cfg in the foreground.

    kamailio -f bench/kamailio/kamailio.cfg -DD -E -n WORKERS -m 2048 -M 16 -x fm -X fm
             -l udp:127.0.0.1:PORT -Y RUNDIR -w RUNDIR -A 'DID="..."' ...

-DD keeps the main process in the foreground (it forks the UDP workers, a timer and a
slow-timer process; we measure the whole tree), -E logs to stderr (our log file).

Memory: tm keeps every INVITE and BYE transaction ~5 s after its final reply (its wait
timer), ~10 KB each, so shared memory needs about 2 x rate x 5 s x 10 KB = 100 MB per
1000 calls/s. Measured here: -m 64 (the usual default) runs out of shared memory at
1000 calls/s ("fm_malloc ... Free fragment not found", 500 replies), -m 256 at 3000
calls/s (measured use: ~110 MB per 1000 calls/s). The bench offers up to 8000 calls/s
and gives 2 GiB, so memory never caps the reference; the pages are only touched as used
(see pss_kib in the results). Private memory (-M) 16 MB per process.
-x/-X fm selects the "fast malloc" manager for shared and private memory (`kamailio -h`
of 5.6 lists fm, qm and tlsf).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from .ports import free_port
from .process import Managed
from .targets import DID, EXTENSION, LogSummary, Target, strip_ansi, summarize, wait_sip_ready

CONFIG = Path(__file__).with_name("kamailio") / "kamailio.cfg"
SHM_MB = 2048
PKG_MB = 16
MEMORY_MANAGER = "fm"


def kamailio_binary() -> str:
    path = shutil.which("kamailio") or "/usr/sbin/kamailio"
    if not Path(path).exists():
        raise RuntimeError("kamailio is not installed (Debian package kamailio)")
    return path


class KamailioTarget(Target):
    impl = "kamailio"
    notes = (
        "stateful (tm) record-routing proxy, usrloc in memory, NO authentication "
        "(not even on REGISTER); DID rewritten to the extension before lookup()"
    )

    expected_idle_stop_s = 0.5  # measured: 0.02 s after OPTIONS, 0.3-1 s after calls

    def __init__(self, workers: int) -> None:
        super().__init__()
        self.workers = workers
        self.register_auth = None
        self.register_domain = "127.0.0.1"

    def start(self, workdir: Path) -> None:
        self.workdir = workdir
        self.sip_port = free_port()
        self.uac_port = free_port()
        argv = [
            kamailio_binary(),
            "-f", str(CONFIG),
            "-DD", "-E",
            "-n", str(self.workers),
            "-m", str(SHM_MB), "-M", str(PKG_MB),
            "-x", MEMORY_MANAGER, "-X", MEMORY_MANAGER,
            "-l", f"udp:127.0.0.1:{self.sip_port}",
            "-Y", str(workdir), "-w", str(workdir),
            "-A", f'DID="{DID}"', "-A", f'DID_EXTENSION="{EXTENSION}"',
        ]  # fmt: skip
        self.proc = Managed(self.label, argv, cwd=workdir, log_path=workdir / "kamailio.log")
        wait_sip_ready(self, timeout=15)

    def log_summary(self) -> LogSummary:
        return summarize(parse_kamailio_log(self.proc.log_text() if self.proc else ""))

    def version(self) -> str:
        try:
            out = subprocess.run(
                [kamailio_binary(), "-v"], capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return "unknown"
        first = out.splitlines()[0] if out else ""
        return first.removeprefix("version: ").strip() or "unknown"


# " 1(19797) ERROR: tm [h_table.c:336]: build_cell(): could not allocate ..."
_LINE = re.compile(r"^\s*\d+\(\d+\)\s+(WARNING|ERROR|CRITICAL|ALERT|BUG):\s*(.*)$")


def parse_kamailio_log(text: str) -> list[tuple[str, str]]:
    out = []
    for line in strip_ansi(text).splitlines():
        m = _LINE.match(line)
        if m:
            level = {"WARNING": "warning"}.get(m.group(1), "error")
            # Drop pointers and allocation sizes so identical problems group together.
            msg = re.sub(r"0x[0-9a-f]+", "0x…", m.group(2))
            msg = re.sub(r", \d+\)", ", N)", msg)
            out.append((level, msg[:200]))
    return out
