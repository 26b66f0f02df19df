"""Row readers for ``sipgw sync``: CSV, JSON lines, an SQLite query, a PostgreSQL query.

``read_rows(spec, columns)`` streams ``(line, values)`` pairs: ``values`` holds the
requested columns' raw values in the order asked (``None`` for an absent key or cell),
or is ``Unreadable`` for a row that could not be read at all (bad JSON on a line). Only
the requested columns are ever picked out of a row; the rest is dropped right here.

``line`` is what an operator finds the row by: the file line a CSV record starts on
(the header is line 1), the line of a JSON lines file, the 1-based row number of a query
result. ``position(spec, line)`` renders it (``contacts.csv:17``, ``crm.db row 17``).

Columns are checked before the first row: the CSV header, the query's result columns.
A JSON lines file has no header, so a requested key found in no row at all is reported
at the end of the file, which ``run`` reads completely before sending anything.

Errors: ``MissingColumns`` (the mapping names a column the source does not have),
``SourceError`` (the source cannot be read: missing file, broken CSV quoting, a failing
query). A source that fails half-way must never look like a source that ended, so every
such failure raises instead of ending the iteration.
"""

from __future__ import annotations

import csv
import difflib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from gateway.cli.sync.mapping import InputSpec

_FETCH = 2000  # rows per round trip to a database
_MAX_KEYS_SHOWN = 50  # of a JSON lines file's keys, in a missing-column message


class SourceError(Exception):
    """The source cannot be read (the message names it); nothing may be sent."""


class MissingColumns(Exception):
    """Columns the mapping names but the source does not have."""

    def __init__(self, missing: Sequence[str], available: Sequence[str]) -> None:
        super().__init__(f"missing columns: {', '.join(missing)}")
        self.missing = tuple(missing)
        self.available = tuple(available)

    def hint(self, column: str) -> str:
        """A close match among the available columns (case or a typo), if any."""
        close = difflib.get_close_matches(column, self.available, n=1, cutoff=0.6)
        folded = [name for name in self.available if name.lower() == column.lower()]
        best = folded[0] if folded else close[0] if close else None
        return "" if best is None else f'; did you mean "{best}"?'


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A row that could not be read at all; ``reason`` says why (never the data)."""

    reason: str


Row = tuple[int, Sequence[object] | Unreadable]


def position(spec: InputSpec, line: int) -> str:
    """Where a row is, as an operator looks for it: ``contacts.csv:17``, ``crm.db row 17``."""
    if spec.kind in ("csv", "jsonl"):
        return f"{spec.label}:{line}"
    return f"{spec.label} row {line}"


def line_word(spec: InputSpec) -> str:
    """ "line" for files read line by line, "row" for query results."""
    return "line" if spec.kind in ("csv", "jsonl") else "row"


def read_rows(spec: InputSpec, columns: Sequence[str]) -> Iterator[Row]:
    """Stream the rows of the source, keeping only ``columns`` (see the module doc)."""
    if spec.kind == "csv":
        return _csv_rows(spec, columns)
    if spec.kind == "jsonl":
        return _jsonl_rows(spec, columns)
    if spec.kind == "sqlite":
        return _sqlite_rows(spec, columns)
    return _postgresql_rows(spec, columns)


def _picker(available: Sequence[str], columns: Sequence[str]) -> Callable[[Any], Sequence[Any]]:
    """A function picking ``columns`` out of a row laid out as ``available``.

    Raises ``MissingColumns``. A duplicated name picks its first occurrence.
    """
    missing = [c for c in columns if c not in available]
    if missing:
        raise MissingColumns(missing, available)
    indices = [available.index(c) for c in columns]
    if len(indices) == 1:
        only = indices[0]
        return lambda row: (row[only],)
    getter: Callable[[Any], Sequence[Any]] = itemgetter(*indices)
    return getter


# --- CSV ----------------------------------------------------------------------------------


def _csv_rows(spec: InputSpec, columns: Sequence[str]) -> Iterator[Row]:
    """A CSV file with a header line. Quoting errors are fatal: a stray quote can swallow
    the rest of the file, and a file that silently ended early would delete contacts."""
    assert spec.path is not None
    label = spec.label
    end = 0  # the last physical line of the record read so far
    try:
        with spec.path.open(encoding=spec.encoding, newline="") as file:
            reader = csv.reader(file, delimiter=spec.delimiter, strict=True)
            header = next(reader, None)
            if header is None:
                raise SourceError(f"{label}: empty file (the first line must name the columns)")
            pick = _picker([name.strip() for name in header], columns)
            end = reader.line_num
            width = max(len(header), 1)
            for cells in reader:
                start, end = end + 1, reader.line_num
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue  # a blank line
                if len(cells) < width:  # a short record: the missing cells are empty
                    cells += [""] * (width - len(cells))
                yield start, pick(cells)
    except FileNotFoundError:
        raise SourceError(f"{label}: file not found: {spec.path}") from None
    except OSError as exc:
        raise SourceError(f"{label}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"{label}:{end + 1}: not {spec.encoding} text ({exc.reason}); "
            'set input.encoding (e.g. "cp1252")'
        ) from None
    except csv.Error as exc:
        raise SourceError(f"{label}:{end + 1}: broken CSV ({exc}); nothing was sent") from None


# --- JSON lines ---------------------------------------------------------------------------


def _jsonl_rows(spec: InputSpec, columns: Sequence[str]) -> Iterator[Row]:
    """One JSON object per line; blank lines are skipped, a bad line is ``Unreadable``."""
    assert spec.path is not None
    label = spec.label
    unseen = set(columns)  # requested keys not found in any object yet
    keys: dict[str, None] = {}  # every key met, in order, while some are unseen
    line = 0
    try:
        with spec.path.open(encoding=spec.encoding) as file:
            for line, text in enumerate(file, 1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield line, Unreadable(f"not JSON: {exc.msg} (column {exc.colno})")
                    continue
                if not isinstance(obj, dict):
                    yield line, Unreadable(f"not a JSON object but {_json_kind(obj)}")
                    continue
                if unseen:
                    unseen.difference_update(obj.keys())
                    if len(keys) < 10 * _MAX_KEYS_SHOWN:
                        keys.update(dict.fromkeys(obj))
                yield line, tuple(obj.get(column) for column in columns)
    except FileNotFoundError:
        raise SourceError(f"{label}: file not found: {spec.path}") from None
    except OSError as exc:
        raise SourceError(f"{label}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SourceError(f"{label}:{line + 1}: not {spec.encoding} text ({exc.reason})") from None
    if unseen:
        missing = [column for column in columns if column in unseen]
        raise MissingColumns(missing, list(keys)[:_MAX_KEYS_SHOWN])


def _json_kind(value: object) -> str:
    """What a JSON value that is not an object is, in words (never the value itself)."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true or false"
    return "null" if value is None else "a number"


# --- SQLite -------------------------------------------------------------------------------


def _sqlite_rows(spec: InputSpec, columns: Sequence[str]) -> Iterator[Row]:
    """An SQLite query, on a connection opened read-only: sync never writes to the source."""
    assert spec.path is not None and spec.query is not None
    label = spec.label
    if not spec.path.is_file():
        raise SourceError(f"{label}: file not found: {spec.path}")
    try:
        conn = sqlite3.connect(spec.path.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise SourceError(f"{label}: cannot open: {exc}") from None
    try:
        conn.execute("PRAGMA query_only = ON")
        cursor = conn.execute(spec.query)
        if cursor.description is None:
            raise SourceError(f"{label}: input.query returns no rows (is it a SELECT?)")
        pick = _picker([d[0] for d in cursor.description], columns)
        number = 0
        while batch := cursor.fetchmany(_FETCH):
            for row in batch:
                number += 1
                yield number, pick(row)
    except sqlite3.Error as exc:
        # "Could not decode to UTF-8 column 'name' with text '…'": not the text (a value).
        message = str(exc).split(" with text ", 1)[0]
        raise SourceError(f"{label}: query failed: {message}") from None
    finally:
        conn.close()


# --- PostgreSQL ---------------------------------------------------------------------------


def _postgresql_rows(spec: InputSpec, columns: Sequence[str]) -> Iterator[Row]:
    """A PostgreSQL query in a read-only transaction, streamed by a server-side cursor
    (one snapshot, however long the sync takes; never the whole result in memory)."""
    assert spec.dsn is not None and spec.query is not None
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo
    except ImportError:
        raise SourceError(
            "postgresql: psycopg is not installed (pip install 'sipgw[sync]')"
        ) from None
    label = spec.label
    try:
        params = conninfo_to_dict(spec.dsn)
    except psycopg.Error as exc:
        # A DSN from the environment may hold a password: do not echo libpq's excerpt.
        detail = f": {exc}" if spec.dsn_env is None else ""
        where = "input.dsn" if spec.dsn_env is None else f"${spec.dsn_env} (input.dsn_env)"
        raise SourceError(f"{label}: {where} is not a valid DSN{detail}") from None
    defaults: dict[str, str | int] = {"application_name": "sipgw-sync", "connect_timeout": 15}
    conninfo = make_conninfo(
        spec.dsn, **{name: value for name, value in defaults.items() if name not in params}
    )
    try:
        conn = psycopg.connect(conninfo)
    except psycopg.Error as exc:
        raise SourceError(f"{label}: cannot connect: {_pg_message(exc)}") from None
    try:
        conn.read_only = True
        with conn.cursor(name="sipgw_sync") as cursor:
            cursor.itersize = _FETCH
            cursor.execute(spec.query)
            if cursor.description is None:
                raise SourceError(f"{label}: input.query returns no rows (is it a SELECT?)")
            pick = _picker([d.name for d in cursor.description], columns)
            number = 0
            while batch := cursor.fetchmany(_FETCH):
                for row in batch:
                    number += 1
                    yield number, pick(row)
    except psycopg.Error as exc:
        raise SourceError(f"{label}: query failed: {_pg_message(exc)}") from None
    finally:
        conn.close()


def _pg_message(exc: Exception) -> str:
    """libpq's message on one line."""
    return " ".join(str(exc).split())
