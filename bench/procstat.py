"""CPU time and memory of process trees, host CPU, and a description of the machine.

All from /proc, so the figures mean the same for sipgw (one Python process) and
Kamailio (a main process that forks UDP workers and timer processes): the CPU of an
implementation is the user + system time of its whole process tree.

Times in /proc/<pid>/stat are in clock ticks (SC_CLK_TCK, 100 per second on Linux):
a 10 ms resolution, fine for steps that burn seconds of CPU.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    comm: str
    state: str
    ppid: int
    utime: int  # ticks
    stime: int
    cutime: int  # ticks of reaped children
    cstime: int

    @property
    def own_ticks(self) -> int:
        return self.utime + self.stime

    @property
    def reaped_children_ticks(self) -> int:
        return self.cutime + self.cstime


def parse_stat(text: str) -> ProcStat:
    """Parse one /proc/<pid>/stat line (proc(5)).

    The command name is in parentheses and may itself contain spaces and ')', so the
    fields are split after the LAST ')'.
    """
    open_paren = text.index("(")
    close_paren = text.rindex(")")
    pid = int(text[:open_paren].strip())
    comm = text[open_paren + 1 : close_paren]
    rest = text[close_paren + 2 :].split()
    # rest[0] is field 3 (state); utime is field 14, so rest[11].
    return ProcStat(
        pid=pid,
        comm=comm,
        state=rest[0],
        ppid=int(rest[1]),
        utime=int(rest[11]),
        stime=int(rest[12]),
        cutime=int(rest[13]),
        cstime=int(rest[14]),
    )


def read_stat(pid: int) -> ProcStat | None:
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None  # the process is gone (or the line is unreadable)


def all_stats() -> list[ProcStat]:
    stats = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                stats.append(stat)
    return stats


def tree_pids(root: int, stats: list[ProcStat]) -> list[int]:
    """`root` and all its descendants among `stats`."""
    children: dict[int, list[int]] = {}
    for s in stats:
        children.setdefault(s.ppid, []).append(s.pid)
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, ()))
    return pids


def tree_ticks(root: int, stats: list[ProcStat]) -> int:
    """CPU ticks of the tree under `root`: every live member's own time, plus the
    children-time of each member (workers that exited and were reaped still count)."""
    by_pid = {s.pid: s for s in stats}
    total = 0
    for pid in tree_pids(root, stats):
        s = by_pid.get(pid)
        if s is not None:
            total += s.own_ticks + s.reaped_children_ticks
    return total


def tree_cpu_seconds(root: int) -> float:
    return tree_ticks(root, all_stats()) / CLK_TCK


def parse_pss_kib(smaps_rollup: str) -> int:
    """The Pss line of /proc/<pid>/smaps_rollup, in KiB (0 if absent)."""
    for line in smaps_rollup.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def tree_pss_kib(root: int) -> int:
    """Proportional set size of the tree: shared memory (Kamailio's shm pool) is split
    between the processes that map it, so the sum does not count it several times."""
    total = 0
    for pid in tree_pids(root, all_stats()):
        try:
            total += parse_pss_kib((PROC / str(pid) / "smaps_rollup").read_text())
        except OSError:
            continue
    return total


def parse_host_cpu(proc_stat: str) -> tuple[int, int]:
    """(busy, total) ticks from the aggregate "cpu" line of /proc/stat.

    Idle is idle + iowait; guest times are already inside user/nice, so they are left
    out of the total to avoid counting them twice.
    """
    for line in proc_stat.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            fields = values[:8]  # user nice system idle iowait irq softirq steal
            total = sum(fields)
            idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
            return total - idle, total
    raise ValueError("no aggregate cpu line in /proc/stat")


def host_cpu() -> tuple[int, int]:
    return parse_host_cpu((PROC / "stat").read_text())


def busy_fraction(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of all cores' time that was busy between two host_cpu() samples."""
    busy = after[0] - before[0]
    total = after[1] - before[1]
    return busy / total if total > 0 else 0.0


def parse_udp_snmp(snmp: str) -> dict[str, int]:
    """The "Udp:" counters of /proc/net/snmp (a header line, then a value line)."""
    lines = [line.split()[1:] for line in snmp.splitlines() if line.startswith("Udp:")]
    if len(lines) < 2:
        return {}
    return {k: int(v) for k, v in zip(lines[0], lines[1], strict=False)}


def udp_counters() -> dict[str, int]:
    """Host-wide (this network namespace) UDP counters. RcvbufErrors counts datagrams
    dropped because a receiving socket's buffer was full: on loopback, the bench's own
    losses, whoever's socket it was."""
    return parse_udp_snmp(_read("/proc/net/snmp"))


def parse_udp_sockets(proc_net_udp: str) -> dict[int, int]:
    """Local port -> datagrams dropped (last column, "drops") of each socket listed in
    /proc/net/udp; sockets sharing a port add up. "0100007F:3A98" is port 15000."""
    drops: dict[int, int] = {}
    for line in proc_net_udp.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 2 or ":" not in fields[1]:
            continue
        port = int(fields[1].rsplit(":", 1)[1], 16)
        dropped = int(fields[-1]) if len(fields) >= 13 and fields[-1].isdigit() else 0
        drops[port] = drops.get(port, 0) + dropped
    return drops


def udp_sockets() -> dict[int, int]:
    return parse_udp_sockets(_read("/proc/net/udp"))


def parse_udp_socket_drops(proc_net_udp: str) -> dict[int, int]:
    """Socket inode -> datagrams dropped, for every socket in /proc/net/udp."""
    drops: dict[int, int] = {}
    for line in proc_net_udp.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 13 and fields[9].isdigit() and fields[-1].isdigit():
            drops[int(fields[9])] = int(fields[-1])
    return drops


def socket_inodes(pids: list[int]) -> set[int]:
    """Inodes of the sockets the processes hold open (a socket inherited by forked
    workers, as Kamailio's, counts once)."""
    inodes = set()
    for pid in pids:
        try:
            fds = list((PROC / str(pid) / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    return inodes


def tree_udp_drops(root: int) -> int:
    """Datagrams dropped (receive buffer full) at every UDP socket of the process tree
    under `root`: the shared SIP port and, with sipgw's workers, each worker's own
    port, where the responses to the requests it forwarded arrive."""
    drops = parse_udp_socket_drops(_read("/proc/net/udp"))
    return sum(drops.get(inode, 0) for inode in socket_inodes(tree_pids(root, all_stats())))


def udp_port_socket_count(port: int) -> int:
    """How many UDP sockets are bound to `port` (workers sharing it with SO_REUSEPORT)."""
    count = 0
    for line in _read("/proc/net/udp").splitlines()[1:]:
        fields = line.split()
        if len(fields) > 1 and ":" in fields[1] and int(fields[1].rsplit(":", 1)[1], 16) == port:
            count += 1
    return count


def udp_port_bound(port: int) -> bool:
    """Whether some socket is bound to UDP `port` (IPv4), without binding it ourselves
    (a test bind could make the very process we wait for fail to bind)."""
    return port in udp_sockets()


_SKMEM = re.compile(r"skmem:\(([^)]*)\)")


def parse_ss_skmem(ss_output: str) -> dict[str, int]:
    """Receive and send buffer sizes (bytes, as the kernel reports them: twice what was
    asked with setsockopt) of the first socket in `ss -uamn` output."""
    m = _SKMEM.search(ss_output)
    if not m:
        return {}
    fields = dict(re.findall(r"([a-z]+)(\d+)", m.group(1)))
    out = {}
    for key, name in (("rb", "rcvbuf"), ("tb", "sndbuf")):
        if key in fields:
            out[name] = int(fields[key])
    return out


def socket_buffers(port: int) -> dict[str, int]:
    """The buffers of the UDP socket bound to 127.0.0.1:`port` ({} if `ss` is missing)."""
    ss = shutil.which("ss")
    if ss is None:
        return {}
    try:
        out = subprocess.run(
            [ss, "-uamn", "sport", "=", f":{port}"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_ss_skmem(out)


def parse_cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model"):
            return value.strip()
    return "unknown"


def parse_meminfo_kib(meminfo: str, key: str = "MemTotal") -> int:
    for line in meminfo.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_info() -> dict[str, object]:
    """What the results depend on: cores, CPU, memory, kernel, UDP buffer limits, load."""
    rmem_default = _read("/proc/sys/net/core/rmem_default").strip()
    rmem_max = _read("/proc/sys/net/core/rmem_max").strip()
    wmem_max = _read("/proc/sys/net/core/wmem_max").strip()
    return {
        "cores": os.cpu_count(),
        "cpu_model": parse_cpu_model(_read("/proc/cpuinfo")),
        "memory_kib": parse_meminfo_kib(_read("/proc/meminfo")),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "loadavg_at_start": _read("/proc/loadavg").split()[:3],
        "net_core_rmem_default": int(rmem_default) if rmem_default.isdigit() else None,
        "net_core_rmem_max": int(rmem_max) if rmem_max.isdigit() else None,
        "net_core_wmem_max": int(wmem_max) if wmem_max.isdigit() else None,
        "clock_ticks_per_s": CLK_TCK,
    }
