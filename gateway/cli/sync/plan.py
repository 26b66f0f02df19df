"""What one sync must send: the source's rows diffed against the local state.

Each row goes through two steps.

``prepare_rows`` (pure, per row, parallel when there are many rows): the numbers of the
row's number columns are normalized to E.164, the mapped fields are cleaned (strings
stripped, empty → null, cut at 512 characters, only JSON scalars), serialized as
canonical JSON (sorted keys, no spaces, UTF-8) and hashed (16-byte BLAKE2b). A row with
several numbers has one field set, one digest, for all of them.

``build_plan`` (in order, one process): the duplicate rule, then the diff. Within one
source the first row holding a number wins; a later row with the same number is
reported as ``duplicate of line N`` and that number of it is skipped. A number whose
digest differs from the state's (or is not in the state, or every number under
``full``) is an upsert and goes to the ``Spool``; numbers in the state that no row
holds any more are the deletes, known only once the whole source has been read.

Only numbers, digests and first lines stay in memory (about 250 bytes a number); the
field values of the upserts wait in the spool, an unlinked temporary file.

Normalizing is most of the work, and a source changes little between two runs, so a
``Memo`` (the state file) remembers which cell text gave which E.164 number; its tag
(``normalizer_tag``) changes with the region, phonenumbers or numbers.py, which empties
it. Only texts that gave a number are remembered: problems are always worked out anew.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import json
import math
import os
import tempfile
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import islice
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple, Protocol

import phonenumbers

from gateway.cli.sync.mapping import Mapping as SyncMapping
from gateway.cli.sync.sources import Row, Unreadable
from gateway.config.syntax import show
from gateway.recognition import numbers as numbers_module
from gateway.recognition.numbers import normalize

MAX_VALUE = 512  # characters of a field value; the gateway refuses longer ones
DIGEST_SIZE = 16
_SHOWN = 32  # characters of a bad number's text shown in a problem
_CHUNK = 1000  # rows per unit of parallel work
_IN_FLIGHT = 3  # chunks queued per worker: enough to keep it busy, bounded memory
_INLINE_ROWS = 20_000  # rows prepared before worker processes are worth starting
_HEAVY = _CHUNK // 10  # numbers to normalize that make a chunk worth a worker's time

Scalar = str | int | float | bool | None


class Problem(NamedTuple):
    """A row problem: ``line`` of the source, the column (None: the whole row), why.

    Never holds a field value: only column names, reasons and, for a number that is
    not one, the start of its text (the customer's own input, on their own machine).
    """

    line: int
    column: str | None
    reason: str

    def render(self, where: str) -> str:
        """``contacts.csv:17: phone: "12ab" is not a phone number``."""
        return (
            f"{where}: {self.reason}"
            if self.column is None
            else (f"{where}: {self.column}: {self.reason}")
        )


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the mapping's columns sit in a row from ``read_rows(spec, mapping.columns)``."""

    region: str
    numbers: tuple[tuple[str, int], ...]  # (column, index)
    fields: tuple[tuple[str, str, int], ...]  # (exported name, column, index)

    @classmethod
    def of(cls, mapping: SyncMapping) -> Layout:
        columns = mapping.columns
        return cls(
            region=mapping.region,
            numbers=tuple((c, columns.index(c)) for c in mapping.number_columns),
            fields=tuple((name, c, columns.index(c)) for name, c in mapping.fields),
        )


class Prepared(NamedTuple):
    """One row after ``prepare_rows``: its usable numbers and its serialized fields."""

    line: int
    numbers: tuple[tuple[str, str], ...]  # (column, E.164), each number once
    problems: tuple[Problem, ...]
    fields_json: bytes  # canonical JSON of the fields (b"" when the row has no number)
    digest: bytes


class Chunk(NamedTuple):
    """Consecutive rows after ``prepare_rows``, and what normalizing them taught."""

    rows: list[Prepared]
    learned: list[tuple[str, str]]  # (number cell text, E.164) normalized here


class Memo(Protocol):
    """Number cell text -> E.164, remembered from earlier runs (``state.State``)."""

    def lookup(self, texts: Collection[str]) -> dict[str, str]: ...

    def learn(self, pairs: Sequence[tuple[str, str]]) -> None: ...


def normalizer_tag(region: str) -> str:
    """Changes whenever ``normalize`` could answer differently for the same text: another
    region, another phonenumbers (its metadata), another numbers.py."""
    code = Path(numbers_module.__file__).read_bytes()
    return f"{region} {phonenumbers.__version__} {hashlib.sha256(code).hexdigest()[:16]}"


def canonical_fields(fields: Mapping[str, Scalar]) -> bytes:
    """The fields as canonical JSON: sorted keys, no spaces, UTF-8. The digest's input,
    so the same fields in any order give the same digest."""
    return json.dumps(
        fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def digest_of(fields_json: bytes) -> bytes:
    return hashlib.blake2b(fields_json, digest_size=DIGEST_SIZE).digest()


# --- step 1: per row ----------------------------------------------------------------------


def prepare_rows(
    rows: Sequence[Row], layout: Layout, known: Mapping[str, str] | None = None
) -> Chunk:
    """Normalize the numbers and serialize the fields of each row (see the module doc).

    ``known`` maps number cell texts to their E.164 form already (from the memo)."""
    chunk = Chunk([], [])
    for line, values in rows:
        chunk.rows.append(_prepare(line, values, layout, known or {}, chunk.learned))
    return chunk


def _prepare(
    line: int,
    values: Sequence[object] | Unreadable,
    layout: Layout,
    known: Mapping[str, str],
    learned: list[tuple[str, str]],
) -> Prepared:
    if isinstance(values, Unreadable):
        return Prepared(line, (), (Problem(line, None, values.reason),), b"", b"")
    problems: list[Problem] = []
    numbers: list[tuple[str, str]] = []
    for column, index in layout.numbers:
        value = values[index]
        text = _cell_text(value)
        if text is None:
            if value is not None and not isinstance(value, str):
                problems.append(Problem(line, column, f"{_kind(value)} is not a phone number"))
            continue  # empty cells are not a problem: most contacts have no mobile
        e164 = known.get(text) or _normalize(text, layout.region, learned)
        if isinstance(e164, Problem):
            problems.append(e164._replace(line=line, column=column))
        # The same number in two columns of one row (phone = mobile) is one key.
        elif all(e164 != held for _, held in numbers):
            numbers.append((column, e164))
    if not numbers:
        if not problems:
            columns = ", ".join(column for column, _ in layout.numbers)
            problems.append(Problem(line, columns, "no phone number; row skipped"))
        return Prepared(line, (), tuple(problems), b"", b"")
    fields: dict[str, Scalar] = {}
    for name, column, index in layout.fields:
        fields[name] = _field_value(values[index], line, column, problems)
    fields_json = canonical_fields(fields)
    return Prepared(line, tuple(numbers), tuple(problems), fields_json, digest_of(fields_json))


def _cell_text(value: object) -> str | None:
    """The text of a number cell: stripped text, or an integer column's digits."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _normalize(text: str, region: str, learned: list[tuple[str, str]]) -> str | Problem:
    """The E.164 form of a number cell's text (learned), or the problem (line and column
    left for the caller to fill in)."""
    number = normalize(text, region)
    if number.e164 is not None:
        learned.append((text, number.e164))
        return number.e164
    shown = show(text if len(text) <= _SHOWN else text[:_SHOWN] + "…")
    why = "a placeholder for no number" if number.kind == "anonymous" else number.reason
    return Problem(0, None, f"{shown} is not a phone number ({why})")


def _field_value(value: object, line: int, column: str, problems: list[Problem]) -> Scalar:
    """A field value as sent: a JSON scalar, strings stripped and at most 512 characters."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, bool):
        return value
    elif isinstance(value, int):
        # msgpack (the gateway's store) holds 64-bit integers; beyond that, digits.
        return value if -(2**63) <= value < 2**63 else str(value)
    elif isinstance(value, float):
        if math.isfinite(value):
            return value
        problems.append(Problem(line, column, "not a finite number; sent as null"))
        return None
    elif isinstance(value, datetime.date | datetime.time):
        text = value.isoformat()
    elif isinstance(value, decimal.Decimal | uuid.UUID | datetime.timedelta):
        text = str(value)
    elif isinstance(value, bytes | bytearray | memoryview | list | tuple | dict):
        problems.append(Problem(line, column, f"{_kind(value)} cannot be sent; sent as null"))
        return None
    else:
        text = str(value)
    if not text:
        return None
    if len(text) > MAX_VALUE:
        problems.append(Problem(line, column, f"{len(text)} characters cut to {MAX_VALUE}"))
        return text[:MAX_VALUE]
    return text


def _kind(value: object) -> str:
    """What a value is, in words, without showing it."""
    if isinstance(value, bytes | bytearray | memoryview):
        return "binary data"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, float):
        return "a decimal number"
    return f"a value of type {type(value).__name__}"


# --- parallel preparation -----------------------------------------------------------------


def _prepared(
    rows: Iterable[Row], layout: Layout, workers: int, memo: Memo | None
) -> Iterator[Chunk]:
    """``prepare_rows`` over the stream, a chunk at a time, in order.

    Normalizing a number costs tens of microseconds (phonenumbers), so a large source
    wants every core: once ``_INLINE_ROWS`` rows are read, a chunk with many numbers the
    memo does not know goes to a worker process (started then, costing about a second).
    A chunk the memo knows, as in most runs after the first, is cheaper to do here than
    to ship. The rows are read here, in this thread (database connections must stay in
    theirs), and only a few chunks are in flight, so memory stays bounded.
    """
    stream = iter(rows)
    read = 0
    with _Workers(workers, layout) as pool:
        for chunk in iter(lambda: list(islice(stream, _CHUNK)), []):
            texts = _number_texts(chunk, layout)
            known = memo.lookup(texts) if memo is not None and texts else {}
            heavy = read >= _INLINE_ROWS and len(texts) - len(known) >= _HEAVY
            read += len(chunk)
            yield from pool.run(chunk, known, offload=heavy)
        yield from pool.drain()


def _number_texts(rows: list[Row], layout: Layout) -> set[str]:
    """The distinct texts of the number cells of these rows."""
    return {
        text
        for _, values in rows
        if not isinstance(values, Unreadable)
        for _, index in layout.numbers
        if (text := _cell_text(values[index])) is not None
    }


class _Workers:
    """Worker processes for the heavy chunks, started with the first one; every chunk
    (done here or there) comes out in the order it went in."""

    def __init__(self, size: int, layout: Layout) -> None:
        self._size = size
        self._layout = layout
        self._pool: ProcessPoolExecutor | None = None
        self._usable = size > 1
        self._pending: deque[tuple[list[Row], dict[str, str], Future[Chunk] | Chunk]] = deque()

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def run(self, rows: list[Row], known: dict[str, str], *, offload: bool) -> Iterator[Chunk]:
        """Prepare a chunk (in a worker if ``offload``); yield the chunks now due."""
        job = self._submit(rows, known) if offload and self._usable else None
        self._pending.append((rows, known, job or prepare_rows(rows, self._layout, known)))
        while self._pending and (
            not isinstance(self._pending[0][2], Future)
            or len(self._pending) >= _IN_FLIGHT * self._size
        ):
            yield self._take()

    def drain(self) -> Iterator[Chunk]:
        while self._pending:
            yield self._take()

    def _submit(self, rows: list[Row], known: dict[str, str]) -> Future[Chunk] | None:
        try:
            if self._pool is None:
                # "spawn": forking a process with threads or a database connection is unsafe.
                self._pool = ProcessPoolExecutor(self._size, mp_context=get_context("spawn"))
            return self._pool.submit(prepare_rows, rows, self._layout, known)
        except BrokenProcessPool:
            self._usable = False
            return None

    def _take(self) -> Chunk:
        rows, known, job = self._pending.popleft()
        if not isinstance(job, Future):
            return job
        try:
            return job.result()
        except BrokenProcessPool:
            # The workers could not start (a program without the ``__main__`` guard that
            # "spawn" needs) or died: correctness first, the rest is done here.
            self._usable = False
            return prepare_rows(rows, self._layout, known)


def default_workers() -> int:
    """One worker per usable core; the reading process mostly waits on them."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# --- step 2: in order ---------------------------------------------------------------------


class Spool:
    """The upserts waiting to be sent, in an unlinked temporary file (mode 0600: it holds
    field values; it disappears when closed, or when the process dies).

    One line per upsert: ``number TAB digest-hex TAB canonical-fields-JSON``; JSON
    escapes every control character, so neither a tab nor a newline occurs in it.
    """

    def __init__(self, directory: Path | None = None) -> None:
        # Lives as long as the Spool: close() closes it.
        self._file = tempfile.TemporaryFile(dir=directory, prefix="sipgw-sync-")  # noqa: SIM115
        self.count = 0

    def add(self, number: str, digest: bytes, fields_json: bytes) -> None:
        self._file.write(b"%s\t%s\t%s\n" % (number.encode(), digest.hex().encode(), fields_json))
        self.count += 1

    def batches(self, size: int, max_bytes: int) -> Iterator[list[Upsert]]:
        """The upserts in order, in lists of at most ``size`` items and about ``max_bytes``
        of JSON (a single larger item still goes alone)."""
        self._file.flush()
        self._file.seek(0)
        batch: list[Upsert] = []
        total = 0
        for line in self._file:
            number, digest_hex, fields_json = line.rstrip(b"\n").split(b"\t", 2)
            item = b'{"number":"%s","fields":%s}' % (number, fields_json)
            if batch and (len(batch) >= size or total + len(item) > max_bytes):
                yield batch
                batch, total = [], 0
            batch.append(Upsert(number.decode(), bytes.fromhex(digest_hex.decode()), item))
            total += len(item) + 1
        if batch:
            yield batch

    def close(self) -> None:
        self._file.close()


class Upsert(NamedTuple):
    number: str
    digest: bytes
    item: bytes  # {"number": …, "fields": {…}} as JSON, ready for the batch body


@dataclass(slots=True)
class Plan:
    rows_read: int = 0
    rows_skipped: int = 0  # rows that gave no number at all
    numbers: int = 0  # distinct numbers in the source
    unchanged: int = 0
    upserts: int = 0  # in the spool
    deletes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def build_plan(
    rows: Iterable[Row],
    layout: Layout,
    previous: dict[str, bytes],
    on_upsert: Callable[[str, bytes, bytes], None] | None,
    *,
    full: bool = False,
    line_word: str = "line",
    on_problem: Callable[[Problem], None] | None = None,
    workers: int = 1,
    memo: Memo | None = None,
) -> Plan:
    """Read every row, apply the duplicate rule, hand on the upserts, list the deletes.

    ``previous`` is the state (number → digest of what the gateway holds). It is
    consumed: each number found is taken out, so what is left are the deletes, and
    memory holds each number about once. ``on_upsert(number, digest, fields_json)`` gets
    every upsert (``Spool.add``; None only counts them, for a dry run).

    Raises what the rows raise (``SourceError``, ``MissingColumns``): then there is no
    plan, and in particular no deletes.
    """
    plan = Plan()
    first_line: dict[str, int] = {}

    def problem(found: Problem) -> None:
        plan.problems.append(found)
        if on_problem is not None:
            on_problem(found)

    for row in _learning(_prepared(rows, layout, workers, memo), memo):
        plan.rows_read += 1
        for found in row.problems:
            problem(found)
        kept = 0
        for column, number in row.numbers:
            earlier = first_line.get(number)
            if earlier is not None:
                problem(Problem(row.line, column, f"{number} duplicate of {line_word} {earlier}"))
                continue
            first_line[number] = row.line
            kept += 1
            held = previous.pop(number, None)
            if full or held != row.digest:
                if on_upsert is not None:
                    on_upsert(number, row.digest, row.fields_json)
                plan.upserts += 1
            else:
                plan.unchanged += 1
        if not kept:
            plan.rows_skipped += 1
    plan.numbers = len(first_line)
    plan.deletes = sorted(previous)
    return plan


def _learning(chunks: Iterator[Chunk], memo: Memo | None) -> Iterator[Prepared]:
    """The rows of the chunks, in order; what normalizing them taught goes to the memo."""
    for chunk in chunks:
        if memo is not None and chunk.learned:
            memo.learn(chunk.learned)
        yield from chunk.rows
