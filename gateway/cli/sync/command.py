"""``sipgw sync``: send a customer's contacts to the gateway (docs/sync.md).

    sipgw sync MAPPING [--state FILE] [--full] [--dry-run] [--batch-size N]
                       [--report FILE] [--allow-empty]

The token comes from ``gateway.token_file`` in the mapping file or ``$SIPGW_SYNC_TOKEN``,
never from the command line (it would show in ``ps`` and in shell history).

Exit status: 0 done (row problems included), 1 refused by the gateway, network error,
source error or state file in use, 2 bad mapping file or usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from gateway.cli.sync.client import SyncClient
from gateway.cli.sync.mapping import Mapping, load_mapping, read_token
from gateway.cli.sync.run import (
    DEFAULT_BATCH,
    EXIT_OK,
    EXIT_USAGE,
    MAX_BATCH,
    SyncError,
    SyncSummary,
    sync,
)
from gateway.cli.sync.state import default_state_path
from gateway.config import ConfigError


def _say(line: str) -> None:
    print(f"sipgw sync: {line}", file=sys.stderr, flush=True)


def cmd_sync(args: argparse.Namespace) -> int:
    try:
        mapping = load_mapping(args.mapping)
    except ConfigError as err:
        _say(f"mapping error: {err}")
        return EXIT_USAGE
    client = None
    if not args.dry_run:  # a dry run sends nothing: it needs no token
        try:
            token = read_token(mapping.gateway)
        except ConfigError as err:
            _say(f"no sync token: {err}")
            return EXIT_USAGE
        client = SyncClient(mapping.gateway.url, token, cafile=mapping.gateway.cafile, notice=_say)
    try:
        # Opened before the sync, so a report that cannot be written stops it before it sends.
        report = None if args.report is None else _open_private(Path(args.report))
    except OSError as err:
        _say(f"cannot write the report {args.report}: {err.strerror}")
        return EXIT_USAGE
    try:
        return _sync(args, mapping, client, report)
    finally:
        if client is not None:
            client.close()
        if report is not None:
            report.close()


def _sync(
    args: argparse.Namespace, mapping: Mapping, client: SyncClient | None, report: TextIO | None
) -> int:
    state = Path(args.state) if args.state else default_state_path(mapping.path)
    try:
        summary = sync(
            mapping,
            state,
            client,
            full=args.full,
            dry_run=args.dry_run,
            batch_size=args.batch_size,
            allow_empty=args.allow_empty,
            report=_say,
        )
        status = EXIT_OK
    except SyncError as err:
        _say(str(err))
        summary, status = err.summary, err.exit_status
    except KeyboardInterrupt:
        # The state holds every acknowledged batch: the next run resumes from there.
        _say("interrupted; the next run sends what was not acknowledged")
        return 130
    _say(summary.line())
    if report is not None:
        _write_report(report, summary)
    return status


def _open_private(path: Path) -> TextIO:
    """The report lists line numbers and the start of bad numbers: owner-only (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "w", encoding="utf-8")


def _write_report(report: TextIO, summary: SyncSummary) -> None:
    json.dump(summary.to_json(), report, ensure_ascii=False, indent=1)
    report.write("\n")


def _batch_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_BATCH:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_BATCH}")
    return value


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``sync`` to the ``sipgw`` parser."""
    parser = subparsers.add_parser(
        "sync",
        help="send contacts from a CSV, JSON lines, SQLite or PostgreSQL source",
        description=(
            "Read contacts from the source of a mapping file, keep only the mapped fields, "
            "and send what changed since the last run to the gateway. The token comes from "
            "gateway.token_file or $SIPGW_SYNC_TOKEN. Exit status: 0 done (even with row "
            "problems), 1 refused by the gateway, network or source error, 2 bad mapping "
            "file or usage. See docs/sync.md."
        ),
    )
    parser.add_argument("mapping", metavar="MAPPING", help="the mapping file (TOML)")
    parser.add_argument(
        "--state",
        metavar="FILE",
        help="the local state file (default: <mapping stem>.state.db next to the mapping)",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="send every number, then have the gateway drop what this run did not send",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="read and plan, print the counts; send nothing"
    )
    parser.add_argument(
        "--batch-size",
        type=_batch_size,
        default=DEFAULT_BATCH,
        metavar="N",
        help=f"upserts or deletes per request (default {DEFAULT_BATCH}, at most {MAX_BATCH})",
    )
    parser.add_argument(
        "--report", metavar="FILE", help="write the summary and every row problem as JSON"
    )
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="accept a source without any number (it removes everything the source held)",
    )
    parser.set_defaults(func=cmd_sync)
