"""One ``sipgw sync`` run: read the whole source, plan, then send and remember.

Order, and why:

1. Open the state file (locked) and check it is this tenant's, source's and gateway's.
2. Read every row into the plan (upserts spooled, deletes listed). A source that fails
   half-way raises here, before a single request: a truncated export must never turn
   into deletes. A mapping naming a missing column fails here too.
3. Send the upserts, then the deletes, in batches; after each acknowledged batch the
   state records it (one transaction). A refusal or a network failure stops the run;
   the next run sends exactly what was not acknowledged.
   ``full``: every number is sent with a fresh generation id, then the commit asks the
   gateway to drop what this generation did not send; the state is then exactly the
   source.

``sync`` raises ``SyncError`` (with the summary so far and the exit status the command
uses) for every expected failure; row problems are not failures, they are counted,
reported through ``report`` (the first few) and kept in the summary (all).
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gateway.cli.sync.client import BatchAck, GatewayError
from gateway.cli.sync.mapping import Mapping
from gateway.cli.sync.plan import (
    Layout,
    Memo,
    Plan,
    Problem,
    Spool,
    build_plan,
    default_workers,
    normalizer_tag,
)
from gateway.cli.sync.sources import (
    MissingColumns,
    SourceError,
    line_word,
    position,
    read_rows,
)
from gateway.cli.sync.state import Identity, State, StateError, StateMismatch
from gateway.config.errors import ConfigError

DEFAULT_BATCH = 1000
MAX_BATCH = 5000
MAX_BODY = 4 * 1024 * 1024  # bytes of JSON per request, whatever the batch size
PROBLEM_LINES = 20  # row problems shown through ``report``; all are in the summary

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Gateway(Protocol):
    """What ``sync`` needs of the gateway (``client.SyncClient``, or a test double)."""

    def send_batch(
        self,
        tenant: str,
        source: str,
        upserts: Sequence[bytes],
        deletes: Sequence[str],
        generation: str | None = None,
    ) -> BatchAck: ...

    def commit(self, tenant: str, source: str, generation: str) -> int: ...


@dataclass(slots=True)
class SyncSummary:
    mapping: Mapping
    state_path: Path
    full: bool
    dry_run: bool
    generation: str | None = None
    rows_read: int = 0
    rows_skipped: int = 0
    numbers: int = 0
    unchanged: int = 0
    upserts_planned: int = 0
    deletes_planned: int = 0
    upserts_sent: int = 0
    deletes_sent: int = 0
    batches: int = 0
    removed_by_commit: int | None = None
    seconds: float = 0.0
    error: str | None = None
    problems: list[Problem] = field(default_factory=list)

    def line(self) -> str:
        """The one-line summary for stderr."""
        read = (
            f"{self.rows_read} rows read, {self.rows_skipped} skipped, {self.numbers} numbers "
            f"({self.unchanged} unchanged), {len(self.problems)} row problems"
        )
        if self.dry_run:
            return (
                f"dry run: {read}; would send {self.upserts_planned} upserts and "
                f"{self.deletes_planned} deletes{' (full sync)' if self.full else ''}; "
                f"nothing sent, {self.seconds:.1f} s"
            )
        sent = (
            f"{self.upserts_sent} upserts and {self.deletes_sent} deletes sent in "
            f"{self.batches} batches"
        )
        if self.removed_by_commit is not None:
            sent += f", full sync committed ({self.removed_by_commit} removed by the gateway)"
        return f"{read}; {sent}, {self.seconds:.1f} s"

    def where(self, problem: Problem) -> str:
        return position(self.mapping.input, problem.line)

    def to_json(self) -> dict[str, object]:
        """The ``--report`` document: the counts and every row problem."""
        return {
            "mapping": str(self.mapping.path),
            "state": str(self.state_path),
            "tenant": self.mapping.tenant,
            "source": self.mapping.source,
            "full": self.full,
            "dry_run": self.dry_run,
            "generation": self.generation,
            "rows_read": self.rows_read,
            "rows_skipped": self.rows_skipped,
            "numbers": self.numbers,
            "unchanged": self.unchanged,
            "upserts_planned": self.upserts_planned,
            "deletes_planned": self.deletes_planned,
            "upserts_sent": self.upserts_sent,
            "deletes_sent": self.deletes_sent,
            "batches": self.batches,
            "removed_by_commit": self.removed_by_commit,
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "problems": [
                {
                    "line": p.line,
                    "column": p.column,
                    "reason": p.reason,
                    "message": p.render(self.where(p)),
                }
                for p in self.problems
            ],
        }


class SyncError(Exception):
    """The sync stopped; ``exit_status`` is 1 (gateway, network, source, state) or 2
    (the mapping does not fit the source, the state file is another source's)."""

    def __init__(self, message: str, exit_status: int, summary: SyncSummary) -> None:
        super().__init__(message)
        self.exit_status = exit_status
        self.summary = summary


def _stderr(line: str) -> None:
    print(f"sipgw sync: {line}", file=sys.stderr, flush=True)


def sync(
    mapping: Mapping,
    state_path: Path,
    client: Gateway | None,
    *,
    full: bool = False,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH,
    allow_empty: bool = False,
    report: Callable[[str], None] = _stderr,
    workers: int | None = None,
) -> SyncSummary:
    """Run one sync (see the module doc). ``client`` may be None only for a dry run."""
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch_size must be 1 to {MAX_BATCH}")
    if client is None and not dry_run:
        raise ValueError("a client is needed unless dry_run")
    started = time.monotonic()
    summary = SyncSummary(mapping, state_path, full=full, dry_run=dry_run)
    try:
        _run(summary, client, batch_size, allow_empty, report, workers)
    except (ConfigError, StateMismatch) as exc:
        summary.error = str(exc)
        raise SyncError(str(exc), EXIT_USAGE, summary) from None
    except (SourceError, StateError, GatewayError, EmptySource) as exc:
        summary.error = str(exc)
        raise SyncError(str(exc), EXIT_FAILED, summary) from None
    finally:
        summary.seconds = time.monotonic() - started
    return summary


class EmptySource(Exception):
    """The source gave no number at all, which would remove everything it held."""


def _run(
    summary: SyncSummary,
    client: Gateway | None,
    batch_size: int,
    allow_empty: bool,
    report: Callable[[str], None],
    workers: int | None,
) -> None:
    mapping = summary.mapping
    identity = Identity(mapping.tenant, mapping.source, mapping.gateway.url)
    with State.open(summary.state_path, identity, read_only=summary.dry_run) as state:
        mismatch = state.mismatch(identity)
        if mismatch is not None and not summary.full:
            raise StateMismatch(mismatch)
        if state.full_pending and not summary.full:
            report("the last --full sync did not finish: this one is a full sync too")
            summary.full = True
        previous = {} if mismatch is not None else state.digests()
        held = len(previous)  # the plan consumes ``previous``
        state.use_normalizer(normalizer_tag(mapping.region))
        spool = None if summary.dry_run else _spool(summary.state_path.parent)
        try:
            plan = _plan(summary, previous, spool, state, report, workers)
            state.commit_learned()
            _refuse_emptying(plan, held, summary, allow_empty, report)
            if spool is None or client is None:
                return  # a dry run: the counts are the result
            if summary.full:
                _send_full(summary, plan, spool, state, identity, client, batch_size)
            else:
                _send_changes(summary, plan, spool, state, client, batch_size)
            state.prune_learned()
        finally:
            if spool is not None:
                spool.close()


def _spool(directory: Path) -> Spool:
    try:
        return Spool(directory)
    except OSError as exc:
        raise StateError(f"cannot create a temporary file in {directory}: {exc.strerror}") from None


def _plan(
    summary: SyncSummary,
    previous: dict[str, bytes],
    spool: Spool | None,
    memo: Memo,
    report: Callable[[str], None],
    workers: int | None,
) -> Plan:
    """Read the whole source into a plan; only then may anything be sent."""
    mapping = summary.mapping
    shown = 0

    def on_problem(problem: Problem) -> None:
        nonlocal shown
        if shown < PROBLEM_LINES:
            shown += 1
            report(problem.render(summary.where(problem)))

    try:
        plan = build_plan(
            read_rows(mapping.input, mapping.columns),
            Layout.of(mapping),
            previous,
            spool.add if spool is not None else None,
            full=summary.full,
            line_word=line_word(mapping.input),
            on_problem=on_problem,
            workers=default_workers() if workers is None else workers,
            memo=memo,
        )
    except MissingColumns as exc:
        raise _column_error(mapping, exc) from None
    if len(plan.problems) > shown:
        hidden = len(plan.problems) - shown
        report(f"… and {hidden} more row problems (all of them in the --report file)")
    summary.problems = plan.problems
    summary.rows_read, summary.rows_skipped = plan.rows_read, plan.rows_skipped
    summary.numbers, summary.unchanged = plan.numbers, plan.unchanged
    summary.upserts_planned, summary.deletes_planned = plan.upserts, len(plan.deletes)
    return plan


def _column_error(mapping: Mapping, exc: MissingColumns) -> ConfigError:
    """Name the mapping key of the first missing column and list what there is."""
    column = exc.missing[0]
    key = mapping.column_keys()[column]
    available = ", ".join(f'"{name}"' for name in exc.available) or "none"
    more = f" (and {len(exc.missing) - 1} more missing)" if len(exc.missing) > 1 else ""
    return ConfigError(
        key,
        f'no column "{column}" in {mapping.input.label}{exc.hint(column)}{more}; '
        f"available: {available}",
    )


def _refuse_emptying(
    plan: Plan,
    held: int,
    summary: SyncSummary,
    allow_empty: bool,
    report: Callable[[str], None],
) -> None:
    """A source with no number at all is far more often a failed export than an empty
    customer: refuse to wipe the gateway's contacts unless told so."""
    if plan.numbers or allow_empty or not (held or summary.full):
        return
    source = summary.mapping.source
    what = (
        f"remove all {held} numbers of source {source} from the gateway"
        if not summary.full
        else f"make the gateway remove everything it holds for source {source}"
    )
    message = (
        f"the source has no usable phone number: refusing to {what} (an empty export?); "
        "run with --allow-empty if the source is meant to be empty"
    )
    if summary.dry_run:
        report(f"a real run would stop here: {message}")
        return
    raise EmptySource(message)


def _send_changes(
    summary: SyncSummary,
    plan: Plan,
    spool: Spool,
    state: State,
    client: Gateway,
    batch_size: int,
) -> None:
    """Upserts, then deletes; each batch recorded in the state once acknowledged."""
    tenant, source = summary.mapping.tenant, summary.mapping.source
    for batch in spool.batches(batch_size, MAX_BODY):
        client.send_batch(tenant, source, [u.item for u in batch], ())
        state.record(upserts=[(u.number, u.digest) for u in batch])
        summary.upserts_sent += len(batch)
        summary.batches += 1
    for deletes in _chunks(plan.deletes, batch_size):
        client.send_batch(tenant, source, (), deletes)
        state.record(deletes=deletes)
        summary.deletes_sent += len(deletes)
        summary.batches += 1


def _send_full(
    summary: SyncSummary,
    plan: Plan,
    spool: Spool,
    state: State,
    identity: Identity,
    client: Gateway,
    batch_size: int,
) -> None:
    """Every number under one new generation, then the commit that drops the rest."""
    tenant, source = summary.mapping.tenant, summary.mapping.source
    generation = summary.generation = uuid.uuid4().hex
    state.start_full(identity)
    for batch in spool.batches(batch_size, MAX_BODY):
        client.send_batch(tenant, source, [u.item for u in batch], (), generation)
        state.record(upserts=[(u.number, u.digest) for u in batch])
        summary.upserts_sent += len(batch)
        summary.batches += 1
    summary.removed_by_commit = client.commit(tenant, source, generation)
    state.finish_full(plan.deletes)


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
