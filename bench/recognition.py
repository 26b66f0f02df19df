"""The recognition scenario: caller look-ups and contact sync, measured end to end.

**Look-ups** (one child process, ``python -m bench.recognition lookups``, asyncio on
uvloop): a private redis-server gets N = 100 000 contacts written with
``ContactIndex.apply`` in batches of 1000 (what the sync API does); Redis's ``INFO
memory`` before and after gives the bytes per contact. Then the production
``Recognizer`` answers, one look-up at a time:

- ``cache_hit``: ``Recognizer.cached()`` for numbers a warm-up put in the local cache;
- ``redis_hit``: ``Recognizer.lookup()`` with the local cache disabled, numbers held;
- ``miss``: the same for numbers the index does not hold (one HGET that finds nothing);
- ``redis_hit_concurrent``: ``redis_hit`` with 100 look-ups in flight (100 tasks, each
  awaiting one look-up after another): throughput and latency under load.

Each latency is ``time.perf_counter_ns()`` around the one call, in microseconds.

**Sync** (the harness process): a real sipgw (``bench/sipgw.py``'s config plus
``[tenants.recognition] fields = ["name", "company", "crm_id"]``) with its own Redis, a
sync token from ``sipgw token create --sync``, and a generated CSV of Dutch contacts
(mobile ``06xxxxxxxx`` in national format, ~5 % of the rows with a landline in a second
number column). ``sipgw sync`` runs as a subprocess with ``SIPGW_SYNC_TOKEN`` in its
environment, as a customer runs it: the initial sync, a delta sync after 1 % of the rows
changed (0.5 % edited, 0.25 % added, 0.25 % deleted: the numbers sent must be exactly
the changed rows' numbers, which is checked), and a sync with nothing changed. For each:
the wall time of the command, rows/s, batches, and the CPU of sipgw, its Redis and the
sync client (with its worker processes).

The pure helpers (``latency_summary``, ``change_counts``, the CSV rows and their
changes) are tested in tests/unit/test_bench_recognition.py. The gateway is imported
only by the look-up child process; the harness talks to sipgw over HTTP and the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import textwrap
import time
import traceback
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from . import SCHEMA, procstat
from .ports import free_port
from .process import Managed
from .sipgw import REPO, SipgwTarget, render_config, start_redis
from .steps import percentile
from .targets import wait_sip_ready

NAME = "recognition"
TITLE = "Caller recognition: look-ups (cache, Redis, miss) and `sipgw sync` of a CSV"
TENANT = "acme"  # the tenant of bench/sipgw.py's config
FIELDS = ("name", "company", "crm_id")
RECOGNITION_TOML = f"""
[tenants.recognition]
fields = [{", ".join(f'"{f}"' for f in FIELDS)}]
"""
TOKEN_ENV = "SIPGW_SYNC_TOKEN"

LOOKUP_CONTACTS = 100_000
LOOKUPS_FULL, LOOKUPS_QUICK = 20_000, 5_000
CONCURRENCY = 100
LOAD_BATCH = 1000
WARMUP_LOOKUPS = 2000
SYNC_SIZES_FULL = (100_000, 1_000_000)
SYNC_SIZES_QUICK = (10_000, 100_000)
EDIT_FRACTION, ADD_FRACTION, DELETE_FRACTION = 0.005, 0.0025, 0.0025
SECOND_NUMBER_FRACTION = 0.05
SEED = 20261122
# Rough costs on the 2-core bench machine, for --quick's time check: with --quick a part
# that does not fit in the time left is skipped (and says so); a full run measures
# everything, past its share if need be, and says by how much.
EST_LOOKUPS_S = 10.0
EST_SYNC_SETUP_S = 8.0  # sipgw's start, the token, the probe of `sipgw sync`
EST_SYNC_S_PER_ROW = 220e-6  # the CSV and the three syncs
KINDS = ("cache_hit", "redis_hit", "miss", "redis_hit_concurrent")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- pure helpers ---------------------------------------------------------------------------


def latency_summary(samples_ns: Sequence[int]) -> dict[str, float | int | None]:
    """Count, p50/p95/p99 (nearest rank: observed values), max and mean, in microseconds
    (two decimals) of latencies measured in nanoseconds."""
    us = [s / 1000 for s in samples_ns]

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    return {
        "count": len(us),
        "p50_us": r(percentile(us, 50)),
        "p95_us": r(percentile(us, 95)),
        "p99_us": r(percentile(us, 99)),
        "max_us": r(max(us)) if us else None,
        "mean_us": r(statistics.fmean(us)) if us else None,
    }


@dataclass(frozen=True)
class ChangeCounts:
    edit: int
    add: int
    delete: int

    @property
    def rows(self) -> int:
        return self.edit + self.add + self.delete


def change_counts(rows: int) -> ChangeCounts:
    """1 % of the rows: 0.5 % edited, 0.25 % added, 0.25 % deleted (at least one each)."""
    return ChangeCounts(
        edit=max(1, round(rows * EDIT_FRACTION)),
        add=max(1, round(rows * ADD_FRACTION)),
        delete=max(1, round(rows * DELETE_FRACTION)),
    )


_FIRST = (
    "Jan", "Piet", "Kees", "Henk", "Johan", "Willem", "Daan", "Sem", "Lucas", "Finn",
    "Thijs", "Bram", "Ruben", "Lars", "Jesse", "Maria", "Anna", "Emma", "Sophie", "Julia",
    "Lisa", "Sanne", "Fleur", "Eva", "Noor", "Tess", "Lotte", "Ingrid", "Marieke", "Femke",
    "Mohamed", "Ahmed", "Fatima", "Yusuf", "Priya", "Wei", "Joris", "Gerrit", "Annelies",
)  # fmt: skip
_LAST = (
    "de Jong", "Jansen", "de Vries", "van den Berg", "van Dijk", "Bakker", "Janssen",
    "Visser", "Smit", "Meijer", "de Boer", "Mulder", "de Groot", "Bos", "Vos", "Peters",
    "Hendriks", "van Leeuwen", "Dekker", "Brouwer", "de Wit", "Dijkstra", "Smits",
    "de Graaf", "van der Meer", "van der Linden", "Kok", "Jacobs", "de Haan", "Vermeulen",
    "van den Heuvel", "van der Veen", "van den Broek", "de Bruijn", "El Amrani", "Yilmaz",
)  # fmt: skip
_TRADE = (
    "Bakkerij", "Installatiebedrijf", "Transport", "Advocatenkantoor", "Tandartspraktijk",
    "Autobedrijf", "Bouwbedrijf", "Schildersbedrijf", "Accountants", "Makelaardij",
    "Hoveniers", "Logistiek", "Zorggroep", "IT Diensten", "Adviesbureau", "Kinderopvang",
)  # fmt: skip
_PLACE = (
    "Amsterdam", "Rotterdam", "Utrecht", "Eindhoven", "Groningen", "Zwolle", "Haarlem",
    "Leiden", "Delft", "Breda", "Tilburg", "Nijmegen", "Arnhem", "Almere", "Den Bosch",
)  # fmt: skip
_LEGAL = ("B.V.", "B.V.", "V.O.F.", "N.V.", "")
# Geographic area codes (national prefix included), 7-digit subscriber numbers 2xxxxxx-9xxxxxx.
_AREAS = (
    "010", "013", "015", "020", "023", "024", "026", "030", "033", "035", "038", "040",
    "043", "045", "046", "050", "053", "055", "058", "070", "071", "072", "073", "076",
)  # fmt: skip
_SUBSCRIBERS = 8_000_000
HEADER = ("id", "name", "company", "mobile", "phone")
Row = list[str]  # id, name, company, mobile (06…), phone ("" or a landline)


def person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def company(rng: random.Random) -> str:
    name = f"{rng.choice(_TRADE)} {rng.choice(_LAST).split()[-1]} {rng.choice(_PLACE)}"
    legal = rng.choice(_LEGAL)
    return f"{name} {legal}" if legal else name


class NumberPool:
    """Distinct Dutch numbers in national format: mobiles ``06xxxxxxxx`` and landlines
    ``0AA xxxxxxx``, each handed out once (drawn without replacement up front)."""

    def __init__(self, rng: random.Random, mobiles: int, landlines: int) -> None:
        self._mobiles = iter(rng.sample(range(10**8), mobiles))
        self._landlines = iter(rng.sample(range(len(_AREAS) * _SUBSCRIBERS), landlines))

    def mobile(self) -> str:
        return f"06{next(self._mobiles):08d}"

    def landline(self) -> str:
        v = next(self._landlines)
        return f"{_AREAS[v // _SUBSCRIBERS]}{2_000_000 + v % _SUBSCRIBERS}"


def numbers_of(row: Row) -> int:
    return 1 + (1 if row[4] else 0)


def new_row(rng: random.Random, pool: NumberPool, ident: int) -> Row:
    second = pool.landline() if rng.random() < SECOND_NUMBER_FRACTION else ""
    return [f"CRM-{ident:07d}", person(rng), company(rng), pool.mobile(), second]


def pool_for(rows: int, rng: random.Random) -> NumberPool:
    """Enough numbers for `rows` rows and the rows a change adds (with a margin for the
    ~5 % of second numbers, which are random)."""
    extra = change_counts(rows).add
    total = rows + extra
    return NumberPool(rng, total, max(100, int(total * SECOND_NUMBER_FRACTION * 1.5) + 100))


def generate_rows(rows: int, rng: random.Random, pool: NumberPool) -> list[Row]:
    return [new_row(rng, pool, i + 1) for i in range(rows)]


@dataclass
class Change:
    rows: list[Row]  # the changed source
    counts: ChangeCounts
    upsert_numbers: int  # numbers of the edited and the added rows
    delete_numbers: int  # numbers of the deleted rows
    numbers_after: int  # numbers the source holds after the change


def change_rows(rows: Sequence[Row], rng: random.Random, pool: NumberPool) -> Change:
    """Edit 0.5 % of the rows (the name or the company), delete 0.25 %, add 0.25 % new
    ones. The sync must then send exactly the numbers of the edited and added rows as
    upserts and those of the deleted rows as deletes."""
    counts = change_counts(len(rows))
    picked = rng.sample(range(len(rows)), counts.edit + counts.delete)
    edited, deleted = set(picked[: counts.edit]), set(picked[counts.edit :])
    out: list[Row] = []
    upserts = deletes = 0
    for i, row in enumerate(rows):
        if i in deleted:
            deletes += numbers_of(row)
            continue
        if i in edited:
            row = list(row)
            column, make = (1, person) if rng.random() < 0.5 else (2, company)
            old = row[column]
            while row[column] == old:
                row[column] = make(rng)
            upserts += numbers_of(row)
        out.append(row)
    next_id = len(rows) + 1
    for j in range(counts.add):
        row = new_row(rng, pool, next_id + j)
        upserts += numbers_of(row)
        out.append(row)
    return Change(out, counts, upserts, deletes, sum(numbers_of(r) for r in out))


def write_csv(path: Path, rows: Iterable[Row]) -> int:
    """Write the rows under the header; the file's size in bytes."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path.stat().st_size


def mapping_toml(source: str, url: str, csv_path: Path) -> str:
    return textwrap.dedent(
        f"""\
        # Written by bench/recognition.py.
        tenant = "{TENANT}"
        source = "{source}"
        region = "NL"

        [gateway]
        url = "{url}"

        [input]
        kind = "csv"
        path = "{csv_path}"

        [numbers]
        columns = ["mobile", "phone"]

        [fields]
        name = "name"
        company = "company"
        crm_id = "id"
        """
    )


def sync_estimate_s(rows: int) -> float:
    return rows * EST_SYNC_S_PER_ROW + 2.0


def no_time(quick: bool, estimate_s: float, left_s: float) -> str | None:
    """Why a part is skipped (None: run it). Only --quick skips; a full run measures
    everything and reports how long it took."""
    if quick and estimate_s > left_s:
        return f"time budget: ~{estimate_s:.0f} s needed, {max(left_s, 0):.0f} s left"
    return None


def summary_line(log_text: str) -> str | None:
    """The last ``sipgw sync: … rows read …`` line of the command's output."""
    found = None
    for line in log_text.splitlines():
        if line.startswith("sipgw sync:") and "rows read" in line:
            found = line.strip()
    return found


def parse_info(text: str) -> dict[str, str]:
    """``INFO`` output (``key:value`` lines, ``# Section`` headers) as a dict."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


# -- the look-up child process ----------------------------------------------------------------


async def _used_memory(redis: Any) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])


async def measure_lookups(
    redis_url: str, contacts: int, lookups: int, concurrency: int, seed: int
) -> dict[str, Any]:
    """Everything the look-up part measures (runs in the child process)."""
    from gateway.recognition import keys
    from gateway.recognition.cache import ContactCache
    from gateway.recognition.index import ContactIndex, Upsert
    from gateway.recognition.lookup import Recognizer
    from gateway.stats import Counters

    rng = random.Random(seed)
    drawn = rng.sample(range(10**8), contacts + lookups)
    present = [f"+316{v:08d}" for v in drawn[:contacts]]
    absent = [f"+316{v:08d}" for v in drawn[contacts:]]
    index = ContactIndex(redis_url)
    result: dict[str, Any] = {
        "loop": type(asyncio.get_running_loop()).__module__,
        "contacts": contacts,
        "lookups_per_kind": lookups,
        "concurrency": concurrency,
    }
    try:
        await index.redis.ping()
        # The scripts are loaded by a first, empty batch, so that their memory is not
        # counted as the contacts'.
        await index.apply(TENANT, "bench", [], [])
        before = await _used_memory(index.redis)
        t0 = time.perf_counter()
        for start in range(0, contacts, LOAD_BATCH):
            batch = [
                Upsert(n, {"name": person(rng), "company": company(rng), "crm_id": f"CRM-{i:07d}"})
                for i, n in enumerate(present[start : start + LOAD_BATCH], start + 1)
            ]
            await index.apply(TENANT, "bench", batch, [])
        load_s = time.perf_counter() - t0
        after = await _used_memory(index.redis)
        held = await index.count(TENANT)
        if held != contacts:
            raise RuntimeError(f"the index holds {held} contacts, {contacts} were written")
        usage = index.redis.memory_usage
        hash_bytes = await usage(keys.contacts(TENANT), samples=0) or 0
        set_bytes = await usage(keys.source(TENANT, "bench"), samples=0) or 0
        result["load"] = {
            "batch": LOAD_BATCH,
            "seconds": round(load_s, 3),
            "contacts_per_s": round(contacts / load_s),
        }
        result["memory"] = {
            "used_memory_before": before,
            "used_memory_after": after,
            "bytes_per_contact": round((after - before) / contacts, 1),
            "contacts_hash_bytes_per_contact": round(hash_bytes / contacts, 1),
            "source_set_bytes_per_contact": round(set_bytes / contacts, 1),
        }
        result["timer_overhead_ns"] = _timer_overhead_ns()
        result["kinds"] = await _lookup_kinds(
            Recognizer, ContactCache, Counters, index, present, absent, lookups, concurrency, rng
        )
    finally:
        await index.close()
    return result


def _timer_overhead_ns() -> int:
    """Median of back-to-back perf_counter_ns() calls: included in every latency."""
    clock = time.perf_counter_ns
    deltas = []
    for _ in range(10_000):
        t = clock()
        deltas.append(clock() - t)
    return int(statistics.median(deltas))


async def _lookup_kinds(
    recognizer_cls: Any,
    cache_cls: Any,
    counters_cls: Any,
    index: Any,
    present: list[str],
    absent: list[str],
    lookups: int,
    concurrency: int,
    rng: random.Random,
) -> dict[str, Any]:
    clock = time.perf_counter_ns
    cache = cache_cls(len(present) + len(absent), 3600.0, 3600.0)
    recognizer = recognizer_cls(index, cache, counters_cls())
    kinds: dict[str, Any] = {}
    wrong: dict[str, int] = {}

    async def sequential(kind: str, numbers: Sequence[str], want: str) -> list[int]:
        samples = []
        bad = 0
        for number in numbers:
            t = clock()
            found = await recognizer.lookup(TENANT, number)
            samples.append(clock() - t)
            bad += found.status != want or found.cache != "miss"
        wrong[kind] = bad
        return samples

    # Warm-up: connection, scripts, the interpreter's caches. Not measured.
    cache.enabled = False
    await sequential("warm_up", rng.sample(present, WARMUP_LOOKUPS), "hit")

    hits = rng.sample(present, lookups)
    kinds["redis_hit"] = latency_summary(await sequential("redis_hit", hits, "hit"))
    misses = rng.sample(absent, lookups)
    kinds["miss"] = latency_summary(await sequential("miss", misses, "miss"))

    # The local cache: a warm-up look-up puts each number in it, then cached() answers.
    cache.enabled = True
    cache.clear()
    cached = rng.sample(present, lookups)
    for number in cached:
        await recognizer.lookup(TENANT, number)
    rng.shuffle(cached)
    samples = []
    bad = 0
    for number in cached:
        t = clock()
        answer = recognizer.cached(TENANT, number)
        samples.append(clock() - t)
        bad += answer is None or answer.status != "hit" or answer.cache != "hit"
    wrong["cache_hit"] = bad
    kinds["cache_hit"] = latency_summary(samples)

    # 100 look-ups in flight, distinct numbers (so none shares another's round trip).
    cache.enabled = False
    conc_latencies: list[int] = []
    conc_bad = 0

    async def worker(numbers: Iterator[str]) -> None:
        nonlocal conc_bad
        for number in numbers:  # the iterator is shared: each number is looked up once
            t = clock()
            found = await recognizer.lookup(TENANT, number)
            conc_latencies.append(clock() - t)
            conc_bad += found.status != "hit"

    # Warm-up of the connection pool: one connection per task in flight.
    warm = iter(rng.sample(present, concurrency * 5))
    await asyncio.gather(*(worker(warm) for _ in range(concurrency)))
    conc_latencies.clear()
    conc_bad = 0
    numbers = iter(rng.sample(present, lookups))
    t0 = clock()
    await asyncio.gather(*(worker(numbers) for _ in range(concurrency)))
    wall_ns = clock() - t0
    summary = latency_summary(conc_latencies)
    summary["concurrency"] = concurrency
    summary["wall_s"] = round(wall_ns / 1e9, 3)
    summary["lookups_per_s"] = round(len(conc_latencies) / (wall_ns / 1e9))
    kinds["redis_hit_concurrent"] = summary
    wrong["redis_hit_concurrent"] = conc_bad
    kinds["wrong_answers"] = wrong
    pool = index.redis.connection_pool
    kinds["redis_connections"] = len(getattr(pool, "_available_connections", ())) + len(
        getattr(pool, "_in_use_connections", ())
    )
    return kinds


def lookups_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.recognition lookups")
    p.add_argument("--redis-url", required=True)
    p.add_argument("--contacts", type=int, default=LOOKUP_CONTACTS)
    p.add_argument("--lookups", type=int, default=LOOKUPS_FULL)
    p.add_argument("--concurrency", type=int, default=CONCURRENCY)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # as `sipgw run` does
    result = asyncio.run(
        measure_lookups(args.redis_url, args.contacts, args.lookups, args.concurrency, args.seed)
    )
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


# -- the harness side ---------------------------------------------------------------------


def sipgw_cli() -> list[str]:
    """The ``sipgw`` command of this virtualenv (its console script), as customers run it."""
    script = Path(sys.executable).with_name("sipgw")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


# Used only when the console script has no `sync` subcommand (an old install): the same parser
# registration (gateway/cli/sync/command.py) behind a minimal `sipgw` parser.
_SYNC_SHIM = (
    "import argparse, sys; from gateway.cli.sync import command as cli_sync; "
    "p = argparse.ArgumentParser(prog='sipgw'); "
    "cli_sync.register(p.add_subparsers(dest='command', required=True)); "
    "a = p.parse_args(); sys.exit(a.func(a))"
)


def sync_cli() -> tuple[list[str], str]:
    """(argv up to and including ``sync``, what it is)."""
    base = sipgw_cli()
    try:
        probe = subprocess.run(
            [*base, "sync", "--help"], capture_output=True, timeout=60, cwd=REPO
        ).returncode
    except (OSError, subprocess.SubprocessError):
        probe = -1
    if probe == 0:
        return [*base, "sync"], "sipgw sync"
    return (
        [sys.executable, "-c", _SYNC_SHIM, "sync"],
        "gateway.cli.sync.command through python -c (the console script had no sync)",
    )


class RecognitionGateway(SipgwTarget):
    """bench/sipgw.py's gateway (its config, its own Redis), with the tenant's contact
    fields configured, ready once SIP and HTTP (/readyz) answer."""

    notes = "sipgw run, tenant acme with [tenants.recognition] fields name, company, crm_id"

    def __init__(self) -> None:
        super().__init__()
        self.config = Path()
        self.redis_port = 0

    def start(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis, self.redis_port = start_redis(workdir / "redis")
        self.sip_port = free_port()
        self.http_port = free_port(udp=False)
        self.uac_port = free_port()
        self.config = workdir / "sipgw.toml"
        redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        ports = (self.sip_port, self.http_port, free_port())
        self.config.write_text(render_config(*ports, redis_url) + RECOGNITION_TOML)
        argv = [
            *sipgw_cli(), "run", "--config", str(self.config),
            "--state-dir", str(workdir / "state"), "--quiet",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = Managed("sipgw", argv, cwd=REPO, log_path=workdir / "sipgw.log", env=env)
        wait_sip_ready(self, timeout=20)
        deadline = time.monotonic() + 20
        while not self.ready():
            if time.monotonic() > deadline or not self.alive():
                raise RuntimeError("sipgw's HTTP API did not become ready (/readyz)")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def redis_info(port: int, section: str = "memory") -> dict[str, str]:
    """``INFO section`` of the redis-server on 127.0.0.1:port (one RESP bulk reply)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"INFO {section}\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            data += sock.recv(65536)
        head, _, rest = data.partition(b"\r\n")
        size = int(head[1:])
        while len(rest) < size:
            rest += sock.recv(65536)
    return parse_info(rest[:size].decode())


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return next((ln.strip() for ln in (out.stdout + out.stderr).splitlines() if ln.strip()), "?")


def _dist(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "uvloop": _dist("uvloop"),
        "matplotlib": _dist("matplotlib"),
        "sipgw": _dist("sipgw"),
        "redis_server": _first_line([shutil.which("redis-server") or "redis-server", "--version"]),
        "redis_py": _dist("redis"),
        "hiredis": _dist("hiredis"),
    }


@dataclass
class Options:
    quick: bool
    budget_s: float
    lookups: int = 0
    sync_sizes: tuple[int, ...] = ()

    @classmethod
    def of(cls, quick: bool, budget_s: float) -> Options:
        return cls(
            quick=quick,
            budget_s=budget_s,
            lookups=LOOKUPS_QUICK if quick else LOOKUPS_FULL,
            sync_sizes=SYNC_SIZES_QUICK if quick else SYNC_SIZES_FULL,
        )


def run_lookups(workdir: Path, lookups: int) -> dict[str, Any]:
    """The look-up child process against a fresh redis-server."""
    record: dict[str, Any] = {"error": None}
    redis, port = start_redis(workdir / "redis")
    out = workdir / "lookups.json"
    argv = [
        sys.executable, "-m", "bench.recognition", "lookups",
        "--redis-url", f"redis://127.0.0.1:{port}/0", "--contacts", str(LOOKUP_CONTACTS),
        "--lookups", str(lookups), "--concurrency", str(CONCURRENCY), "--seed", str(SEED),
        "--out", str(out),
    ]  # fmt: skip
    record["command"] = argv
    record["redis_command"] = redis.argv
    t0 = time.monotonic()
    try:
        proc = Managed("lookups", argv, cwd=REPO, log_path=workdir / "lookups.log")
        redis_cpu0 = procstat.tree_cpu_seconds(redis.pid)
        result = proc.wait(600) or proc.stop(grace=2)
        record["redis_cpu_s"] = round(procstat.tree_cpu_seconds(redis.pid) - redis_cpu0, 2)
        record["process_cpu_s"] = round(result.cpu_s, 2)
        record["exit_code"] = result.returncode
        if result.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"the look-up process exited {result.returncode}:\n{proc.log_text()[-3000:]}"
            )
        record.update(json.loads(out.read_text()))
        wrong = {k: v for k, v in record["kinds"].get("wrong_answers", {}).items() if v}
        if wrong:
            record["error"] = f"wrong answers: {wrong}"
    except Exception as err:
        record["error"] = f"{type(err).__name__}: {err}"
        record["traceback"] = traceback.format_exc()
    finally:
        record["wall_s"] = round(time.monotonic() - t0, 1)
        redis.stop(grace=5)
    return record


def _sources(gw: RecognitionGateway, token: str) -> dict[str, int]:
    """GET /v1/sources: numbers held per source, as the gateway counts them."""
    req = urllib.request.Request(
        gw.url + "/v1/sources", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        data = json.loads(resp.read())
    return {s["id"]: int(s["numbers"]) for s in data["sources"]}


def _sync_run(
    kind: str,
    sync_argv: list[str],
    mapping: Path,
    workdir: Path,
    gw: RecognitionGateway,
    token: str,
    rows: int,
) -> dict[str, Any]:
    """One `sipgw sync` command, measured: wall time, CPU of each process, its report."""
    report = workdir / f"{kind}.report.json"
    argv = [*sync_argv, str(mapping), "--report", str(report)]
    env = {**os.environ, TOKEN_ENV: token, "PYTHONUNBUFFERED": "1"}
    assert gw.redis is not None
    cpu0 = procstat.tree_cpu_seconds(gw.pid)
    redis0 = procstat.tree_cpu_seconds(gw.redis.pid)
    t0 = time.monotonic()
    proc = Managed(f"sync-{kind}", argv, cwd=workdir, log_path=workdir / f"{kind}.log", env=env)
    result = proc.wait(120 + rows * 2e-3) or proc.stop(grace=5)
    wall = time.monotonic() - t0
    record: dict[str, Any] = {
        "kind": kind,
        "command": argv,
        "environment": {TOKEN_ENV: "<the sync token>"},
        "exit_code": result.returncode,
        "wall_s": round(wall, 2),
        "rows_per_s": round(rows / wall) if wall > 0 else None,
        "sipgw_cpu_s": round(procstat.tree_cpu_seconds(gw.pid) - cpu0, 2),
        "redis_cpu_s": round(procstat.tree_cpu_seconds(gw.redis.pid) - redis0, 2),
        "client_cpu_s": round(result.cpu_s, 2),  # with its reaped worker processes
        "summary_line": summary_line(proc.log_text()),
    }
    if report.exists():
        data = json.loads(report.read_text())
        record["report"] = {k: v for k, v in data.items() if k != "problems"}
        record["problems"] = len(data.get("problems", []))
    if result.returncode != 0:
        record["error"] = f"exit {result.returncode}: {proc.log_text()[-2000:]}"
    return record


def _check(name: str, expected: int, got: int | None) -> dict[str, Any]:
    ok = got == expected
    if not ok:
        _log(f"   CHECK FAILED: {name}: expected {expected}, got {got}")
    return {"check": name, "expected": expected, "got": got, "ok": ok}


def run_sync_size(
    rows: int,
    workdir: Path,
    gw: RecognitionGateway,
    token: str,
    sync_argv: list[str],
) -> dict[str, Any]:
    """Initial, 1 % delta and no-change sync of a generated CSV of `rows` contacts."""
    t_size = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    source = f"crm-{rows}"
    rng = random.Random(SEED + rows)
    t0 = time.monotonic()
    pool = pool_for(rows, rng)
    data = generate_rows(rows, rng, pool)
    csv_path = workdir / "contacts.csv"
    size = write_csv(csv_path, data)
    numbers = sum(numbers_of(r) for r in data)
    record: dict[str, Any] = {
        "rows": rows,
        "source": source,
        "numbers": numbers,
        "rows_with_second_number": numbers - rows,
        "csv_bytes": size,
        "generate_s": round(time.monotonic() - t0, 2),
        "runs": [],
        "checks": [],
        "error": None,
    }
    mapping = workdir / "mapping.toml"
    mapping.write_text(mapping_toml(source, gw.url, csv_path))
    record["mapping"] = mapping.read_text()
    checks = record["checks"]

    def one(kind: str, rows_now: int, upserts: int, deletes: int, held: int) -> dict[str, Any]:
        run = _sync_run(kind, sync_argv, mapping, workdir, gw, token, rows_now)
        rep = run.get("report", {})
        run["numbers_sent"] = (rep.get("upserts_sent") or 0) + (rep.get("deletes_sent") or 0)
        run["expected_upserts"], run["expected_deletes"] = upserts, deletes
        run["source_numbers_after"] = _sources(gw, token).get(source)
        run["redis_used_memory_after"] = int(redis_info(gw.redis_port)["used_memory"])
        checks.extend(
            [
                _check(f"{kind}: exit status", 0, run["exit_code"]),
                _check(f"{kind}: upserts sent", upserts, rep.get("upserts_sent")),
                _check(f"{kind}: deletes sent", deletes, rep.get("deletes_sent")),
                _check(f"{kind}: row problems", 0, run.get("problems")),
                _check(f"{kind}: numbers the gateway holds", held, run["source_numbers_after"]),
            ]
        )
        _log(
            f"   {rows} rows, {kind}: {run['wall_s']:.1f} s, {run['rows_per_s']} rows/s, "
            f"{run['numbers_sent']} numbers sent, sipgw {run['sipgw_cpu_s']} s CPU\n"
            f"     {run['summary_line']}"
        )
        record["runs"].append(run)
        return run

    try:
        one("initial", rows, numbers, 0, numbers)
        t0 = time.monotonic()
        change = change_rows(data, rng, pool)
        del data
        write_csv(csv_path, change.rows)
        record["change"] = {
            "edited_rows": change.counts.edit,
            "added_rows": change.counts.add,
            "deleted_rows": change.counts.delete,
            "numbers_to_upsert": change.upsert_numbers,
            "numbers_to_delete": change.delete_numbers,
            "prepare_s": round(time.monotonic() - t0, 2),
        }
        rows_after = len(change.rows)
        one("delta", rows_after, change.upsert_numbers, change.delete_numbers, change.numbers_after)
        one("unchanged", rows_after, 0, 0, change.numbers_after)
    except Exception as err:
        record["error"] = f"{type(err).__name__}: {err}"
        record["traceback"] = traceback.format_exc()
        _log(f"   sync of {rows} rows: ERROR {err}")
    failed = [c["check"] for c in checks if not c["ok"]]
    if failed and record["error"] is None:
        record["error"] = "checks failed: " + "; ".join(failed)
    record["wall_s"] = round(time.monotonic() - t_size, 1)
    return record


def _sync_token(gw: RecognitionGateway) -> tuple[str, list[str]]:
    config = str(gw.config)
    argv = [*sipgw_cli(), "token", "create", "--tenant", TENANT, "--sync", "--config", config]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO)
    token = out.stdout.strip()
    if out.returncode != 0 or not token or len(token.split()) != 1:
        raise RuntimeError(f"sipgw token create failed ({out.returncode}): {out.stderr[-1000:]}")
    return token, argv


def run_sync(workdir: Path, opts: Options, deadline: float) -> dict[str, Any]:
    record: dict[str, Any] = {"error": None, "sizes": []}
    smallest = EST_SYNC_SETUP_S + sync_estimate_s(min(opts.sync_sizes))
    skip = no_time(opts.quick, smallest, deadline - time.monotonic())
    if skip:
        _log(f"-- sync: skipped, {skip}")
        record["skipped"] = skip
        return record
    gw = RecognitionGateway()
    t0 = time.monotonic()
    try:
        gw.start(workdir)
        record["sipgw_command"] = gw.argv
        record["config"] = gw.config.read_text()
        token, token_argv = _sync_token(gw)
        record["token_command"] = token_argv
        sync_argv, what = sync_cli()
        record["sync_cli"] = what
        _log(f"-- sync with {what}")
        for rows in opts.sync_sizes:
            skip = no_time(opts.quick, sync_estimate_s(rows), deadline - time.monotonic())
            if skip:
                _log(f"   {rows} rows: skipped, {skip}")
                record["sizes"].append({"rows": rows, "skipped": skip})
                continue
            size = run_sync_size(rows, workdir / f"sync-{rows}", gw, token, sync_argv)
            size["over_budget"] = time.monotonic() > deadline
            record["sizes"].append(size)
        record["sipgw_pss_kib_after"] = procstat.tree_pss_kib(gw.pid)
    except Exception as err:
        record["error"] = f"{type(err).__name__}: {err}"
        record["traceback"] = traceback.format_exc()
        _log(f"   sync: ERROR {err}")
    finally:
        record["alive_until_stop"] = gw.alive()
        record["exit_code"] = gw.stop()
        record["stop_s"] = gw.stop_s
        record["log"] = gw.log_summary().to_json() if gw.proc else None
        record["wall_s"] = round(time.monotonic() - t0, 1)
    return record


def run(quick: bool, budget_s: float, workroot: Path) -> dict[str, Any]:
    """The whole scenario; one JSON-ready document (see bench/README.md)."""
    from .runner import utc_now

    opts = Options.of(quick, budget_s)
    started = utc_now()
    t0 = time.monotonic()
    deadline = t0 + budget_s
    _log(f"== {NAME}: {TITLE} (budget {budget_s:.0f} s)")
    root = workroot / NAME
    root.mkdir(parents=True, exist_ok=True)
    _log(f"-- look-ups: {LOOKUP_CONTACTS} contacts, {opts.lookups} look-ups per kind")
    skip = no_time(quick, EST_LOOKUPS_S, deadline - time.monotonic())
    if skip:
        _log(f"   look-ups: skipped, {skip}")
        lookups: dict[str, Any] = {"error": None, "skipped": skip}
    else:
        lookups = run_lookups(root / "lookups", opts.lookups)
    if lookups.get("error"):
        _log(f"   look-ups: ERROR {lookups['error']}")
    for kind in KINDS:
        s = lookups.get("kinds", {}).get(kind)
        if s:
            _log(f"   {kind:22} p50 {s['p50_us']} µs, p99 {s['p99_us']} µs, max {s['max_us']} µs")
    sync = run_sync(root / "sync", opts, deadline)
    wall = time.monotonic() - t0
    return {
        "schema": SCHEMA,
        "scenario": NAME,
        "title": TITLE,
        "unit": "µs",
        "quick": quick,
        "started_at": started.isoformat(),
        "finished_at": utc_now().isoformat(),
        "wall_time_s": round(wall, 1),
        "budget_s": round(budget_s, 1),
        "over_budget_s": round(max(0.0, wall - budget_s), 1),
        "machine": procstat.machine_info(),
        "versions": versions(),
        "method": {
            "lookup_contacts": LOOKUP_CONTACTS,
            "lookups_per_kind": opts.lookups,
            "concurrency": CONCURRENCY,
            "load_batch": LOAD_BATCH,
            "warmup_lookups": WARMUP_LOOKUPS,
            "latency": "time.perf_counter_ns() around one Recognizer.cached() or "
            "Recognizer.lookup() call, one process, asyncio on uvloop; percentiles by "
            "nearest rank",
            "sync_sizes": list(opts.sync_sizes),
            "change": {
                "edit": EDIT_FRACTION,
                "add": ADD_FRACTION,
                "delete": DELETE_FRACTION,
            },
            "second_number_fraction": SECOND_NUMBER_FRACTION,
            "sync_time": "wall time of the `sipgw sync` command, start to exit",
            "cpu": "user+system time from /proc (sipgw, its redis-server) and wait4() "
            "(the sync command with its worker processes)",
            "seed": SEED,
        },
        "commands": {
            "lookups": lookups.get("command"),
            "lookups_redis": lookups.get("redis_command"),
            "sipgw": sync.get("sipgw_command"),
            "token": sync.get("token_command"),
            "sync": next((r["command"] for s in sync["sizes"] for r in s.get("runs", [])), None),
        },
        "lookups": lookups,
        "sync": sync,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] != ["lookups"]:
        print(
            "usage: python -m bench.recognition lookups --redis-url URL --out FILE …\n"
            "(the scenario itself: python -m bench --scenario recognition)",
            file=sys.stderr,
        )
        return 2
    return lookups_main(args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
