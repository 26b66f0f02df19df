"""The local state of ``sipgw sync``: what the gateway holds for this source, as digests.

An SQLite file (mode 0600: it lists phone numbers, never field values)::

    meta(key, value)          format, tenant, source, gateway, full_pending, normalizer
    numbers(number, digest)   E.164 number -> 16-byte digest of the fields last sent
    normalized(raw, e164)     number cell text -> its E.164 form (a cache, see below)

It is written only after the gateway acknowledged a batch, one transaction per batch in
the order sent, so it never claims more than the gateway holds: an interrupted sync
resumes with exactly what was not acknowledged, and a refused batch is sent again.

A state file belongs to one tenant, source and gateway URL; another one is refused
(``StateMismatch``) unless a ``--full`` sync starts it over. A ``--full`` sync sets
``full_pending`` until its commit is acknowledged, and the next sync repeats a full sync
while it is set: only a commit removes what an earlier generation left on the gateway.

The ``normalized`` table is a cache of ``numbers.normalize`` (``plan.Memo``): texts
that gave a number, valid for one ``normalizer`` tag (region, phonenumbers and numbers.py
versions), emptied when the tag changes, and pruned of numbers the state no longer holds.

Two syncs never share a state file: the file is locked (``flock``) while open.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

FORMAT = "1"
_TABLES = {"meta", "numbers", "normalized"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS numbers (number TEXT PRIMARY KEY, digest BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS normalized (raw TEXT PRIMARY KEY, e164 TEXT NOT NULL) WITHOUT ROWID;
"""
_LOOKUP = 500  # texts per query (SQLite allows at least 999 parameters)


class StateError(Exception):
    """The state file cannot be used (the message says why and names the file)."""


class StateMismatch(StateError):
    """The state file was made for another tenant, source or gateway."""


@dataclass(frozen=True, slots=True)
class Identity:
    """What a state file is the state of."""

    tenant: str
    source: str
    gateway: str  # the gateway URL

    def describe(self) -> str:
        return f"tenant {self.tenant}, source {self.source}, gateway {self.gateway}"


class State:
    """An open state file; use ``State.open`` and close it (or use it as a context)."""

    def __init__(
        self, path: Path, conn: sqlite3.Connection | None, lock_fd: int | None, found: Identity
    ) -> None:
        self.path = path
        self._conn = conn
        self._lock_fd = lock_fd
        self.found = found  # the identity in the file (or the expected one, for a new file)
        self._memo_valid = False  # until use_normalizer() agreed

    @classmethod
    def open(cls, path: Path, identity: Identity, *, read_only: bool = False) -> State:
        """Open (or create) the state file and lock it; ``read_only`` (a dry run) never
        creates nor writes it, and a missing file reads as an empty state."""
        if read_only:
            if not path.exists():
                return cls(path, None, None, identity)
            conn = _connect(path, f"{path.resolve().as_uri()}?mode=ro")
            return cls(path, conn, None, _read_identity(conn, path, identity))
        lock_fd = _lock(path)
        try:
            conn = _connect(path, str(path))
            try:
                conn.executescript(_SCHEMA)
            except sqlite3.Error as exc:
                conn.close()
                raise StateError(f"{path}: cannot use the state file: {exc}") from None
            found = _read_identity(conn, path, identity)
        except BaseException:
            os.close(lock_fd)
            raise
        state = cls(path, conn, lock_fd, found)
        if not state._get("format"):
            state._write_identity(identity)
        return state

    def __enter__(self) -> State:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- reading --------------------------------------------------------------------------

    def mismatch(self, identity: Identity) -> str | None:
        """Why this file is not the state for ``identity``, or None when it is."""
        if self.found == identity:
            return None
        return (
            f"the state file {self.path} is for {self.found.describe()}, not for "
            f"{identity.describe()}: give another --state file, or run with --full to "
            "start it over"
        )

    @property
    def full_pending(self) -> bool:
        """A ``--full`` sync started and its commit was not acknowledged."""
        return bool(self._get("full_pending"))

    def digests(self) -> dict[str, bytes]:
        """Number -> digest of everything the gateway acknowledged."""
        if self._conn is None:
            return {}
        try:
            rows = self._conn.execute("SELECT number, digest FROM numbers")
            return {number: digest for number, digest in rows}
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot read the state file: {exc}") from None

    # --- writing (each call is one transaction) --------------------------------------------

    def record(
        self, upserts: Iterable[tuple[str, bytes]] = (), deletes: Iterable[str] = ()
    ) -> None:
        """Remember what the gateway acknowledged: one batch."""
        with self._write() as conn:
            conn.executemany("INSERT OR REPLACE INTO numbers VALUES (?, ?)", upserts)
            conn.executemany("DELETE FROM numbers WHERE number = ?", ((n,) for n in deletes))

    def start_full(self, identity: Identity) -> None:
        """A full sync begins: a state of another identity is emptied and taken over."""
        with self._write() as conn:
            if self.found != identity:
                conn.execute("DELETE FROM numbers")
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('full_pending', '1')")
        self._write_identity(identity)

    def finish_full(self, stale: Iterable[str]) -> None:
        """The commit was acknowledged: forget the numbers the gateway just removed."""
        with self._write() as conn:
            conn.executemany("DELETE FROM numbers WHERE number = ?", ((n,) for n in stale))
            conn.execute("DELETE FROM meta WHERE key = 'full_pending'")

    # --- the normalization cache (plan.Memo) ---------------------------------------------

    def use_normalizer(self, tag: str) -> None:
        """The cache answers only for this tag; a cache of another one is emptied (or, in
        a read-only state, ignored)."""
        if self._get("normalizer") == tag:
            self._memo_valid = True
            return
        if self._lock_fd is None:
            return  # read-only: leave it, do not use it
        with self._write() as conn:
            conn.execute("DELETE FROM normalized")
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('normalizer', ?)", (tag,))
        self._memo_valid = True

    def lookup(self, texts: Collection[str]) -> dict[str, str]:
        """Text -> E.164 for the texts the cache holds."""
        if self._conn is None or not self._memo_valid or not texts:
            return {}
        items = list(texts)
        found: dict[str, str] = {}
        try:
            for start in range(0, len(items), _LOOKUP):
                part = items[start : start + _LOOKUP]
                marks = ",".join("?" * len(part))
                sql = f"SELECT raw, e164 FROM normalized WHERE raw IN ({marks})"
                found.update(self._conn.execute(sql, part))
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot read the state file: {exc}") from None
        return found

    def learn(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Add to the cache; kept in the open transaction until ``commit_learned``, so a
        million rows cost one commit."""
        if self._conn is None or self._lock_fd is None or not self._memo_valid:
            return
        try:
            self._conn.executemany("INSERT OR REPLACE INTO normalized VALUES (?, ?)", pairs)
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot write the state file: {exc}") from None

    def commit_learned(self) -> None:
        if self._conn is None or self._lock_fd is None:
            return
        try:
            self._conn.commit()
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot write the state file: {exc}") from None

    def prune_learned(self) -> None:
        """Forget cell texts of numbers the state no longer holds."""
        with self._write() as conn:
            conn.execute("DELETE FROM normalized WHERE e164 NOT IN (SELECT number FROM numbers)")

    # --- helpers --------------------------------------------------------------------------

    def _write_identity(self, identity: Identity) -> None:
        items = {"format": FORMAT, "tenant": identity.tenant, "source": identity.source}
        items["gateway"] = identity.gateway
        with self._write() as conn:
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", items.items())
        self.found = identity

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction: committed at the end, rolled back on any error."""
        if self._conn is None or self._lock_fd is None:
            raise StateError(f"{self.path}: opened read-only")
        try:
            with self._conn:
                yield self._conn
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot write the state file: {exc}") from None

    def _get(self, key: str) -> str | None:
        rows = self._rows("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def _rows(self, sql: str, params: tuple[str, ...] = ()) -> list[tuple[object, ...]]:
        if self._conn is None:
            return []
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot read the state file: {exc}") from None


def default_state_path(mapping_path: Path) -> Path:
    """``crm.toml`` -> ``crm.state.db`` next to it."""
    return mapping_path.with_name(f"{mapping_path.stem}.state.db")


def _lock(path: Path) -> int:
    """Create the file (0600) if needed and take an exclusive lock on it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StateError(f"{path}: cannot open the state file: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StateError(f"{path}: another sync is using this state file") from None
    return fd


def _connect(path: Path, target: str) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(target, uri=target.startswith("file:"), isolation_level=None)
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error as exc:
        raise StateError(f"{path}: not a sipgw sync state file ({exc})") from None
    # Never write into someone's database that --state happened to point at.
    foreign = {name for name in names if not name.startswith("sqlite_")} - _TABLES
    if foreign:
        conn.close()
        raise StateError(f"{path}: not a sipgw sync state file (it has other tables)")
    conn.isolation_level = "DEFERRED"
    return conn


def _read_identity(conn: sqlite3.Connection, path: Path, expected: Identity) -> Identity:
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.Error:
        return expected  # a new, empty file
    if not meta.get("format"):
        return expected
    if meta["format"] != FORMAT:
        conn.close()
        raise StateError(f"{path}: state file format {meta['format']} is not {FORMAT}")
    return Identity(
        tenant=str(meta.get("tenant")),
        source=str(meta.get("source")),
        gateway=str(meta.get("gateway")),
    )
