"""`sipgw sync` end to end: every source kind, against a recording stand-in of the gateway.

The stand-in (`RecordingGateway`) is a stdlib HTTP server on 127.0.0.1 that records each
request and answers per the contact API contract, or with the status a test scripts for
the n-th request (401, 403, 422, 500, 503). PostgreSQL is a real server
(`tests/integration/postgres.py`).
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.sync import plan as plan_module
from gateway.cli.sync.client import SyncClient
from gateway.cli.sync.mapping import load_mapping
from gateway.cli.sync.run import SyncError, SyncSummary, sync
from gateway.cli.sync.state import Identity, State, default_state_path
from tests.integration import postgres
from tests.peers import ports

REPO = Path(__file__).resolve().parents[2]
TOKEN = "sgw_sync_0123456789abcdef"
FIELDS = {"name": "full_name", "company": "company", "crm_id": "id"}

# The session-scoped PostgreSQL server (a fixture defined in tests/integration/postgres.py).
postgres_server = postgres.postgres_server

ANSWERS: dict[int, dict[str, str]] = {
    401: {"detail": "token expired"},
    403: {"detail": "the token's tenant is not acme"},
    422: {"detail": "upserts[3].fields.ssn: not a configured contact field (configured: name)"},
    500: {"detail": "internal error"},
    503: {"detail": "Redis unavailable"},
}


# --- the stand-in gateway -----------------------------------------------------------------


@dataclass
class Recorded:
    path: str
    authorization: str | None
    raw: bytes
    status: int  # what the stand-in answered

    @property
    def body(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.raw)
        return data


class RecordingGateway:
    """Records every request; answers 200 per the contract unless ``script`` says else."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.script: dict[int, int] = {}  # request number (1-based, all requests) -> status
        self.always: int | None = None  # answer every request with this status
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real gateway

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, answer = outer._answer(self.path, raw)
                with outer._lock:
                    outer.requests.append(
                        Recorded(self.path, self.headers.get("Authorization"), raw, status)
                    )
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet

        self.server = ThreadingHTTPServer(("127.0.0.1", ports.free_tcp_port()), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def _answer(self, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        with self._lock:
            number = len(self.requests) + 1
        status = self.always or self.script.get(number, 200)
        if status != 200:
            return status, ANSWERS.get(status, {"detail": f"status {status}"})
        body = json.loads(raw)
        if path.endswith(":commit"):
            return 200, {"deleted": 0}
        return 200, {"upserted": len(body["upserts"]), "deleted": len(body["deletes"])}

    def accepted(self) -> list[Recorded]:
        """The batches answered 200 (commits excluded)."""
        return [r for r in self.requests if r.status == 200 and r.path == "/v1/contacts:batch"]

    def upserted(self) -> dict[str, dict[str, Any]]:
        """Number -> fields of every accepted upsert (a number sent once per sync)."""
        return {u["number"]: u["fields"] for r in self.accepted() for u in r.body["upserts"]}

    def deleted(self) -> set[str]:
        return {number for r in self.accepted() for number in r.body["deletes"]}

    def forget(self) -> None:
        with self._lock:
            self.requests.clear()
            self.script.clear()
            self.always = None


@pytest.fixture
def gateway() -> Iterator[RecordingGateway]:
    stand_in = RecordingGateway()
    stand_in.thread.start()
    try:
        yield stand_in
    finally:
        stand_in.server.shutdown()
        stand_in.server.server_close()
        stand_in.thread.join(10)


# --- helpers ------------------------------------------------------------------------------


def phone(i: int) -> str:
    """A national Amsterdam number as a CRM holds it."""
    return f"020 {1_000_000 + i}"


def e164(i: int) -> str:
    return f"+3120{1_000_000 + i}"


def mobile(i: int) -> str:
    return f"06-{20_000_000 + i}"


def mobile_e164(i: int) -> str:
    return f"+316{20_000_000 + i}"


def write_mapping(
    directory: Path,
    url: str,
    source: str,
    *,
    numbers: Sequence[str] = ("phone", "mobile"),
    fields: dict[str, str] | None = None,
    tenant: str = "acme",
) -> Path:
    columns = ", ".join(f'"{c}"' for c in numbers)
    lines = "".join(f'{name} = "{column}"\n' for name, column in (fields or FIELDS).items())
    path = directory / "crm.toml"
    path.write_text(
        f'tenant = "{tenant}"\nsource = "crm"\nregion = "NL"\n'
        f'[gateway]\nurl = "{url}"\n'
        f"[input]\n{source}\n"
        f"[numbers]\ncolumns = [{columns}]\n"
        f"[fields]\n{lines}"
    )
    return path


def write_csv(path: Path, rows: Sequence[dict[str, object]], header: Sequence[str] = ()) -> None:
    names = list(header) or ["id", "full_name", "company", "phone", "mobile", "ssn"]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, names)
        writer.writeheader()
        writer.writerows(rows)


def person(i: int, name: str | None = None, *, with_mobile: bool = False) -> dict[str, object]:
    return {
        "id": i,
        "full_name": name or f"Person {i}",
        "company": "ACME",
        "phone": phone(i),
        "mobile": mobile(i) if with_mobile else "",
        "ssn": f"SSN-{i:09d}",  # in the source, never in the mapping
    }


def csv_mapping(directory: Path, url: str, rows: Sequence[dict[str, object]]) -> Path:
    write_csv(directory / "contacts.csv", rows)
    return write_mapping(directory, url, 'kind = "csv"\npath = "contacts.csv"')


def run(
    mapping_path: Path, gateway: RecordingGateway, lines: list[str] | None = None, **options: Any
) -> SyncSummary:
    """One sync through run.sync, the way the command runs it (quick retries)."""
    mapping = load_mapping(mapping_path)
    with SyncClient(mapping.gateway.url, TOKEN, backoff=0.01) as client:
        return sync(
            mapping,
            default_state_path(mapping_path),
            client,
            report=(lines if lines is not None else []).append,
            workers=options.pop("workers", 1),
            **options,
        )


def state_of(mapping_path: Path) -> dict[str, bytes]:
    identity = Identity("acme", "crm", "")  # only read: the identity is not checked here
    with State.open(default_state_path(mapping_path), identity, read_only=True) as state:
        return state.digests()


# --- every source kind --------------------------------------------------------------------


def test_csv_sends_only_the_mapped_fields(tmp_path: Path, gateway: RecordingGateway) -> None:
    rows = [person(i, with_mobile=i % 2 == 0) for i in range(20)]
    mapping = csv_mapping(tmp_path, gateway.url, rows)
    summary = run(mapping, gateway)
    assert gateway.upserted()[e164(0)] == {"name": "Person 0", "company": "ACME", "crm_id": "0"}
    assert gateway.upserted()[mobile_e164(0)] == gateway.upserted()[e164(0)]
    assert len(gateway.upserted()) == 30 and gateway.deleted() == set()
    request = gateway.requests[0]
    assert request.authorization == f"Bearer {TOKEN}"
    assert (request.body["tenant"], request.body["source"]) == ("acme", "crm")
    assert "generation" not in request.body
    assert all(b"SSN-" not in r.raw for r in gateway.requests)  # unmapped: never sent
    assert (summary.rows_read, summary.numbers, summary.upserts_sent) == (20, 30, 30)
    assert summary.problems == [] and summary.batches == 1
    assert len(state_of(mapping)) == 30
    assert os.stat(default_state_path(mapping)).st_mode & 0o077 == 0  # numbers: owner only


def test_csv_row_problems_are_reported_and_skipped(
    tmp_path: Path, gateway: RecordingGateway
) -> None:
    rows = [person(0), {**person(1), "phone": "12ab"}, {**person(2), "phone": phone(0)}]
    rows.append({**person(3), "phone": "", "mobile": ""})
    mapping = csv_mapping(tmp_path, gateway.url, rows)
    lines: list[str] = []
    summary = run(mapping, gateway, lines)
    assert set(gateway.upserted()) == {e164(0)}
    assert lines == [
        'contacts.csv:3: phone: "12ab" is not a phone number (contains letters, not a phone '
        "number)",
        f"contacts.csv:4: phone: {e164(0)} duplicate of line 2",
        "contacts.csv:5: phone, mobile: no phone number; row skipped",
    ]
    assert (summary.rows_read, summary.rows_skipped, len(summary.problems)) == (4, 3, 3)
    assert "Person" not in "\n".join(lines)  # never a field value


def test_jsonl(tmp_path: Path, gateway: RecordingGateway) -> None:
    lines = [
        json.dumps({"id": 1, "full_name": "Ann", "phone": phone(1), "extra": {"x": 1}}),
        "{not json",
        "",
        json.dumps({"id": 2, "full_name": " Bob ", "company": "B", "mobile": mobile(2)}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"id": 3, "full_name": "Cy", "phone": 31201000003}),
    ]
    (tmp_path / "contacts.jsonl").write_text("\n".join(lines) + "\n")
    mapping = write_mapping(tmp_path, gateway.url, 'kind = "jsonl"\npath = "contacts.jsonl"')
    report: list[str] = []
    summary = run(mapping, gateway, report)
    assert gateway.upserted() == {
        e164(1): {"name": "Ann", "company": None, "crm_id": 1},
        mobile_e164(2): {"name": "Bob", "company": "B", "crm_id": 2},
        e164(3): {"name": "Cy", "company": None, "crm_id": 3},
    }
    assert report == [
        "contacts.jsonl:2: not JSON: Expecting property name enclosed in double quotes (column 2)",
        "contacts.jsonl:5: not a JSON object but an array",
    ]
    assert (summary.rows_read, summary.rows_skipped) == (5, 2)


def test_sqlite(tmp_path: Path, gateway: RecordingGateway) -> None:
    database = tmp_path / "crm.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE contacts (id INTEGER, name TEXT, tel TEXT, gsm TEXT, ssn TEXT)")
        conn.executemany(
            "INSERT INTO contacts VALUES (?, ?, ?, ?, ?)",
            [(i, f"Person {i}", phone(i), mobile(i) if i == 2 else None, "x") for i in range(5)],
        )
    conn.close()
    before = database.read_bytes()
    mapping = write_mapping(
        tmp_path,
        gateway.url,
        'kind = "sqlite"\npath = "crm.db"\n'
        'query = "SELECT id, name AS full_name, tel, gsm FROM contacts ORDER BY id"',
        numbers=("tel", "gsm"),
        fields={"name": "full_name", "crm_id": "id"},
    )
    summary = run(mapping, gateway)
    assert gateway.upserted()[e164(2)] == {"name": "Person 2", "crm_id": 2}
    assert set(gateway.upserted()) == {e164(i) for i in range(5)} | {mobile_e164(2)}
    assert summary.rows_read == 5 and summary.problems == []
    assert database.read_bytes() == before  # opened read-only


def test_postgresql(
    tmp_path: Path, gateway: RecordingGateway, postgres_server: postgres.PostgresServer
) -> None:
    import psycopg

    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS contacts")
        conn.execute(
            "CREATE TABLE contacts (id int, name text, phone text, mobile text, "
            "balance numeric(10, 2), born date, ssn text)"
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO contacts VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [
                    (i, f"Person {i}", phone(i), mobile(i) if i % 3 == 0 else None, "12.50",
                     f"1980-01-{i % 28 + 1:02d}", "secret")
                    for i in range(2500)
                ]
                + [(9999, "Bad", "12ab", None, None, None, "secret")],
            )  # fmt: skip
    mapping = write_mapping(
        tmp_path,
        gateway.url,
        f'kind = "postgresql"\ndsn = "{postgres_server.dsn}"\n'
        'query = "SELECT id, name, phone, mobile, balance, born FROM contacts ORDER BY id"',
        fields={"name": "name", "crm_id": "id", "balance": "balance", "born": "born"},
    )
    lines: list[str] = []
    summary = run(mapping, gateway, lines)
    assert gateway.upserted()[e164(3)] == {
        "name": "Person 3", "crm_id": 3, "balance": "12.50", "born": "1980-01-04",
    }  # fmt: skip
    assert len(gateway.upserted()) == 2500 + 834
    assert lines == [
        'postgresql row 2501: phone: "12ab" is not a phone number (contains letters, not a '
        "phone number)"
    ]
    assert all(b"secret" not in r.raw for r in gateway.requests)
    assert (summary.rows_read, summary.batches) == (2501, 4)


def test_postgresql_query_error_fails_before_sending(
    tmp_path: Path, gateway: RecordingGateway, postgres_server: postgres.PostgresServer
) -> None:
    mapping = write_mapping(
        tmp_path,
        gateway.url,
        f'kind = "postgresql"\ndsn = "{postgres_server.dsn}"\nquery = "SELECT * FROM nope"',
    )
    with pytest.raises(SyncError) as info:
        run(mapping, gateway)
    assert info.value.exit_status == 1
    assert 'postgresql: query failed: relation "nope" does not exist' in str(info.value)
    assert gateway.requests == []


# --- columns are checked before anything is sent ------------------------------------------


@pytest.mark.parametrize("kind", ["csv", "jsonl", "sqlite"])
def test_a_missing_column_fails_before_any_request(
    tmp_path: Path, gateway: RecordingGateway, kind: str
) -> None:
    rows = [person(i) for i in range(3)]
    if kind == "csv":
        write_csv(tmp_path / "c.csv", rows)
        source = 'kind = "csv"\npath = "c.csv"'
    elif kind == "jsonl":
        (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        source = 'kind = "jsonl"\npath = "c.jsonl"'
    else:
        with sqlite3.connect(tmp_path / "c.db") as conn:
            conn.execute("CREATE TABLE t (id, full_name, company, phone, mobile)")
        conn.close()
        source = 'kind = "sqlite"\npath = "c.db"\nquery = "SELECT * FROM t"'
    fields = {**FIELDS, "name": "fullname"}
    mapping = write_mapping(tmp_path, gateway.url, source, fields=fields)
    with pytest.raises(SyncError) as info:
        run(mapping, gateway)
    message = str(info.value)
    label = {"csv": "c.csv", "jsonl": "c.jsonl", "sqlite": "c.db"}[kind]
    assert message.startswith(
        f'fields.name: no column "fullname" in {label}; did you mean "full_name"?; available: '
    )
    assert '"company"' in message
    assert info.value.exit_status == 2
    assert gateway.requests == []
    assert state_of(mapping) == {}


def test_a_source_broken_half_way_sends_nothing(tmp_path: Path, gateway: RecordingGateway) -> None:
    mapping = csv_mapping(tmp_path, gateway.url, [person(i) for i in range(100)])
    run(mapping, gateway)
    gateway.forget()
    text = (tmp_path / "contacts.csv").read_text().splitlines()
    text[50] = 'x,"broken quote,ACME,020 1,'  # and the file ends inside the quotes
    (tmp_path / "contacts.csv").write_text("\n".join(text[:51]) + "\n")
    with pytest.raises(SyncError) as info:
        run(mapping, gateway)
    assert info.value.exit_status == 1
    assert str(info.value).startswith("contacts.csv:51: broken CSV")
    assert gateway.requests == []  # above all: no deletes of the 50 rows it never read
    assert len(state_of(mapping)) == 100


# --- incremental syncs --------------------------------------------------------------------


def test_one_percent_changed_sends_exactly_that(tmp_path: Path, gateway: RecordingGateway) -> None:
    rows = [person(i) for i in range(10_000)]
    mapping = csv_mapping(tmp_path, gateway.url, rows)
    first = run(mapping, gateway)
    assert (first.upserts_sent, first.batches) == (10_000, 10)
    assert len(gateway.upserted()) == 10_000
    gateway.forget()

    edited = set(range(0, 10_000, 200))  # 50 rows
    removed = set(range(9_975, 10_000))  # 25 rows
    added = set(range(10_000, 10_025))  # 25 rows
    changed = [
        person(i, f"Renamed {i}" if i in edited else None)
        for i in sorted(set(range(10_025)) - removed)
    ]
    write_csv(tmp_path / "contacts.csv", changed)
    second = run(mapping, gateway)
    assert set(gateway.upserted()) == {e164(i) for i in edited | added}
    assert gateway.upserted()[e164(200)]["name"] == "Renamed 200"
    assert gateway.deleted() == {e164(i) for i in removed}
    assert (second.upserts_sent, second.deletes_sent, second.unchanged) == (75, 25, 9_925)
    assert second.batches == 2  # upserts, then deletes
    assert len(state_of(mapping)) == 10_000
    gateway.forget()

    third = run(mapping, gateway)
    assert gateway.requests == [] and third.batches == 0


@pytest.mark.parametrize("status", [401, 403, 422])
def test_a_refusal_stops_the_run_and_leaves_the_state(
    tmp_path: Path, gateway: RecordingGateway, status: int
) -> None:
    mapping = csv_mapping(tmp_path, gateway.url, [person(i) for i in range(10)])
    run(mapping, gateway)
    before = state_of(mapping)
    gateway.forget()
    write_csv(tmp_path / "contacts.csv", [person(i, "New name") for i in range(12)])
    gateway.always = status
    with pytest.raises(SyncError) as info:
        run(mapping, gateway)
    assert info.value.exit_status == 1
    assert ANSWERS[status]["detail"] in str(info.value)
    assert f"HTTP {status}" in str(info.value)
    assert len(gateway.requests) == 1  # not retried
    assert state_of(mapping) == before
    gateway.forget()
    run(mapping, gateway)  # the state was not touched: everything is sent now
    assert set(gateway.upserted()) == {e164(i) for i in range(12)}


def test_503_is_retried(tmp_path: Path, gateway: RecordingGateway) -> None:
    mapping = csv_mapping(tmp_path, gateway.url, [person(i) for i in range(30)])
    gateway.script = {1: 503, 2: 503, 4: 503}
    lines: list[str] = []
    mapping_ = load_mapping(mapping)
    with SyncClient(mapping_.gateway.url, TOKEN, backoff=0.01, notice=lines.append) as client:
        summary = sync(mapping_, default_state_path(mapping), client, batch_size=20, workers=1)
    assert [r.status for r in gateway.requests] == [503, 503, 200, 503, 200]
    assert set(gateway.upserted()) == {e164(i) for i in range(30)}
    assert summary.batches == 2
    assert lines[0].startswith("the gateway is busy (HTTP 503: Redis unavailable); retry 1 of 3")


def test_503_without_end_gives_up(tmp_path: Path, gateway: RecordingGateway) -> None:
    mapping = csv_mapping(tmp_path, gateway.url, [person(i) for i in range(3)])
    gateway.always = 503
    with pytest.raises(SyncError) as info:
        run(mapping, gateway)
    assert info.value.exit_status == 1
    assert "gave up after 4 attempts" in str(info.value)
    assert len(gateway.requests) == 4
    assert state_of(mapping) == {}


def test_an_interrupted_sync_resumes(tmp_path: Path, gateway: RecordingGateway) -> None:
    mapping = csv_mapping(tmp_path, gateway.url, [person(i) for i in range(100)])
    run(mapping, gateway)
    gateway.forget()
    # 80 changed, 10 unchanged, 10 removed, 350 new: 5 upsert batches of 100, 1 of deletes.
    rows = [person(i, "Changed") for i in range(80)] + [person(i) for i in range(80, 90)]
    rows += [person(i) for i in range(100, 450)]
    write_csv(tmp_path / "contacts.csv", rows)
    gateway.script = {3: 500}  # the third batch fails
    with pytest.raises(SyncError) as info:
        run(mapping, gateway, batch_size=100)
    assert info.value.exit_status == 1 and "HTTP 500: internal error" in str(info.value)
    acknowledged = set(gateway.upserted())
    assert len(acknowledged) == 200 and gateway.deleted() == set()
    assert info.value.summary.upserts_sent == 200
    gateway.forget()

    summary = run(mapping, gateway, batch_size=100)
    changed = {e164(i) for i in range(80)} | {e164(i) for i in range(100, 450)}
    assert set(gateway.upserted()) == changed - acknowledged
    assert gateway.deleted() == {e164(i) for i in range(90, 100)}
    assert (summary.upserts_sent, summary.deletes_sent) == (230, 10)
    assert set(state_of(mapping)) == {e164(i) for i in range(90)} | {
        e164(i) for i in range(100, 450)
    }


def test_full_sends_everything_then_commits(tmp_path: Path, gateway: RecordingGateway) -> None:
    mapping = csv_mapping(tmp_path, gateway.url, [person(i) for i in range(100)])
    run(mapping, gateway)
    gateway.forget()
    write_csv(tmp_path / "contacts.csv", [person(i) for i in range(90)])
    summary = run(mapping, gateway, full=True, batch_size=40)
    batches = gateway.accepted()
    assert [len(r.body["upserts"]) for r in batches] == [40, 40, 10]
    assert all(r.body["deletes"] == [] for r in batches)
    generation = batches[0].body["generation"]
    assert len(generation) == 32 and all(r.body["generation"] == generation for r in batches)
    commit = gateway.requests[-1]
    assert commit.path == "/v1/sources/crm:commit"
    assert commit.body == {"tenant": "acme", "generation": generation}
    assert commit.authorization == f"Bearer {TOKEN}"
    assert summary.generation == generation and summary.removed_by_commit == 0
    assert set(state_of(mapping)) == {e164(i) for i in range(90)}
    gateway.forget()
    run(mapping, gateway)
    assert gateway.requests == []


def test_a_full_sync_that_did_not_commit_is_repeated(
    tmp_path: Path, gateway: RecordingGateway
) -> None:
    mapping = csv_mapping(tmp_path, gateway.url, [person(i) for i in range(10)])
    gateway.script = {2: 500}  # the commit fails
    with pytest.raises(SyncError):
        run(mapping, gateway, full=True)
    gateway.forget()
    lines: list[str] = []
    summary = run(mapping, gateway, lines)
    assert summary.full and len(gateway.upserted()) == 10
    assert gateway.requests[-1].path == "/v1/sources/crm:commit"
    assert lines == ["the last --full sync did not finish: this one is a full sync too"]


def test_dry_run_sends_and_writes_nothing(tmp_path: Path, gateway: RecordingGateway) -> None:
    mapping = csv_mapping(tmp_path, gateway.url, [person(i, with_mobile=True) for i in range(50)])
    summary = run(mapping, gateway, dry_run=True)
    assert gateway.requests == []
    assert not default_state_path(mapping).exists()
    assert (summary.upserts_planned, summary.upserts_sent, summary.numbers) == (100, 0, 100)
    assert summary.line().startswith("dry run: 50 rows read")


def test_a_state_file_of_another_tenant_is_refused(
    tmp_path: Path, gateway: RecordingGateway
) -> None:
    mapping = csv_mapping(tmp_path, gateway.url, [person(i) for i in range(5)])
    run(mapping, gateway)
    gateway.forget()
    other = write_mapping(
        tmp_path, gateway.url, 'kind = "csv"\npath = "contacts.csv"', tenant="other"
    )
    with pytest.raises(SyncError) as info:
        run(other, gateway)
    assert info.value.exit_status == 2
    assert "is for tenant acme, source crm" in str(info.value) and "--full" in str(info.value)
    assert gateway.requests == []
    run(other, gateway, full=True)  # starts it over
    assert len(gateway.upserted()) == 5 and gateway.requests[0].body["tenant"] == "other"


def test_an_empty_source_does_not_wipe_the_gateway(
    tmp_path: Path, gateway: RecordingGateway
) -> None:
    mapping = csv_mapping(tmp_path, gateway.url, [person(i) for i in range(5)])
    run(mapping, gateway)
    gateway.forget()
    write_csv(tmp_path / "contacts.csv", [])
    with pytest.raises(SyncError) as info:
        run(mapping, gateway)
    assert info.value.exit_status == 1 and "--allow-empty" in str(info.value)
    assert gateway.requests == []
    run(mapping, gateway, allow_empty=True)
    assert gateway.deleted() == {e164(i) for i in range(5)}


def test_the_state_remembers_normalized_numbers(tmp_path: Path, gateway: RecordingGateway) -> None:
    mapping = csv_mapping(tmp_path, gateway.url, [person(i) for i in range(10)])
    run(mapping, gateway)

    def remembered() -> dict[str, str]:
        with sqlite3.connect(default_state_path(mapping)) as conn:
            found = dict(conn.execute("SELECT raw, e164 FROM normalized").fetchall())
        conn.close()
        return found

    assert remembered() == {phone(i): e164(i) for i in range(10)}
    write_csv(tmp_path / "contacts.csv", [person(i) for i in range(5)])
    run(mapping, gateway)
    assert remembered() == {phone(i): e164(i) for i in range(5)}  # pruned with the deletes
    # Another normalizer (phonenumbers or numbers.py upgraded): the memo is not trusted.
    with sqlite3.connect(default_state_path(mapping)) as conn:
        conn.execute("UPDATE normalized SET e164 = '+31209999999'")
        conn.execute("UPDATE meta SET value = 'older' WHERE key = 'normalizer'")
    conn.close()
    gateway.forget()
    run(mapping, gateway)
    assert gateway.requests == []
    assert remembered() == {phone(i): e164(i) for i in range(5)}


def test_worker_processes_give_the_same_plan(
    tmp_path: Path, gateway: RecordingGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [person(i, with_mobile=i % 2 == 0) for i in range(6_000)]
    rows[4_321]["phone"] = "12ab"
    rows[5_000]["phone"] = phone(7)
    mapping = csv_mapping(tmp_path, gateway.url, rows)
    inline = run(mapping, gateway, dry_run=True, workers=1)

    submitted: list[int] = []

    class CountingPool(ProcessPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            submitted.append(len(args[0]))
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(plan_module, "ProcessPoolExecutor", CountingPool)
    monkeypatch.setattr(plan_module, "_INLINE_ROWS", 1_000)  # workers from the 2nd chunk on
    parallel = run(mapping, gateway, workers=2)
    assert submitted == [1_000] * 5  # the first chunk inline, the other five in workers
    assert parallel.problems == inline.problems
    assert (parallel.numbers, parallel.upserts_sent) == (inline.numbers, 9_000 - 2)
    assert len(gateway.upserted()) == 8_998

    # The next run finds every number in the memo: nothing is worth a worker.
    submitted.clear()
    write_csv(tmp_path / "contacts.csv", [{**row, "company": "Renamed"} for row in rows])
    again = run(mapping, gateway, workers=2)
    assert submitted == [] and again.upserts_sent == 8_998


# --- the command --------------------------------------------------------------------------


def sipgw_sync(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``sipgw sync …`` as an operator runs it (its console script, else cli.sync.command)."""
    exe = Path(sys.executable).parent / "sipgw"
    probe = subprocess.run(
        [str(exe), "sync", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    if probe.returncode == 0:
        command = [str(exe), "sync", *args]
    else:
        command = [
            sys.executable, "-c",
            "import argparse, sys\n"
            "from gateway.cli.sync import command as cli_sync\n"
            "parser = argparse.ArgumentParser(prog='sipgw')\n"
            "cli_sync.register(parser.add_subparsers(dest='command', required=True))\n"
            "args = parser.parse_args(sys.argv[1:])\n"
            "sys.exit(args.func(args))\n",
            "sync", *args,
        ]  # fmt: skip
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})},
    )  # fmt: skip


def test_the_command(tmp_path: Path, gateway: RecordingGateway) -> None:
    rows = [person(i) for i in range(30)] + [{**person(99), "phone": "12ab"}]
    mapping = csv_mapping(tmp_path, gateway.url, rows)
    report = tmp_path / "report.json"
    result = sipgw_sync(str(mapping), "--report", str(report), env={"SIPGW_SYNC_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    assert len(gateway.upserted()) == 30
    assert 'contacts.csv:32: phone: "12ab" is not a phone number' in result.stderr
    last = result.stderr.rstrip().splitlines()[-1]
    assert last.startswith(
        "sipgw sync: 31 rows read, 1 skipped, 30 numbers (0 unchanged), 1 row problems; "
        "30 upserts and 0 deletes sent in 1 batches, "
    )
    data = json.loads(report.read_text())
    assert data["upserts_sent"] == 30 and data["error"] is None
    assert data["problems"] == [
        {
            "line": 32,
            "column": "phone",
            "reason": '"12ab" is not a phone number (contains letters, not a phone number)',
            "message": 'contacts.csv:32: phone: "12ab" is not a phone number (contains '
            "letters, not a phone number)",
        }
    ]
    assert os.stat(report).st_mode & 0o077 == 0
    assert TOKEN not in result.stderr + result.stdout


def test_the_command_exit_statuses(tmp_path: Path, gateway: RecordingGateway) -> None:
    mapping = csv_mapping(tmp_path, gateway.url, [person(i) for i in range(3)])
    token = {"SIPGW_SYNC_TOKEN": TOKEN}

    no_token = sipgw_sync(str(mapping))
    assert no_token.returncode == 2 and "SIPGW_SYNC_TOKEN: not set" in no_token.stderr

    gateway.always = 401
    refused = sipgw_sync(str(mapping), env=token)
    assert refused.returncode == 1
    assert "the gateway refused the token (HTTP 401: token expired)" in refused.stderr
    assert TOKEN not in refused.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text(mapping.read_text().replace('region = "NL"', 'region = "XX"'))
    config = sipgw_sync(str(bad), env=token)
    assert config.returncode == 2
    assert 'sipgw sync: mapping error: region: "XX" is not a region' in config.stderr

    usage = sipgw_sync(str(mapping), "--batch-size", "9999", env=token)
    assert usage.returncode == 2 and "must be 1 to 5000" in usage.stderr

    gateway.forget()
    dry = sipgw_sync(str(mapping), "--dry-run")  # no token needed: nothing is sent
    assert dry.returncode == 0, dry.stderr
    assert "dry run: 3 rows read" in dry.stderr and gateway.requests == []
