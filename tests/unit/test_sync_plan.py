"""The sync plan: the diff against the state, the duplicate rule, row problems, digests."""

from __future__ import annotations

import datetime
import decimal
import json
from collections.abc import Collection, Sequence
from pathlib import Path

import pytest

from gateway.cli.sync.plan import (
    MAX_VALUE,
    Layout,
    Plan,
    Problem,
    Spool,
    build_plan,
    canonical_fields,
    digest_of,
)
from gateway.cli.sync.sources import Row, Unreadable

# Rows as read_rows yields them for columns (phone, mobile, name, company).
LAYOUT = Layout(
    region="NL",
    numbers=(("phone", 0), ("mobile", 1)),
    fields=(("name", "full_name", 2), ("company", "company", 3)),
)


def digest(**fields: object) -> bytes:
    return digest_of(canonical_fields(fields))  # type: ignore[arg-type]


def plan_of(
    rows: Sequence[Row], previous: dict[str, bytes] | None = None, *, full: bool = False
) -> tuple[Plan, dict[str, dict[str, object]]]:
    """The plan, and the upserts (number -> fields) as they would be sent."""
    spool = Spool()
    try:
        plan = build_plan(rows, LAYOUT, previous or {}, spool.add, full=full)
        sent = {
            upsert.number: json.loads(upsert.item)["fields"]
            for batch in spool.batches(1000, 1 << 20)
            for upsert in batch
        }
    finally:
        spool.close()
    assert plan.upserts == len(sent)
    return plan, sent


def reasons(plan: Plan) -> list[str]:
    return [problem.render(f"c.csv:{problem.line}") for problem in plan.problems]


# --- the diff -----------------------------------------------------------------------------


def test_new_changed_unchanged_and_deleted_numbers() -> None:
    previous = {
        "+31201000001": digest(name="Ann", company="A"),  # unchanged
        "+31201000002": digest(name="Bob", company="B"),  # changed below
        "+31201000009": digest(name="Gone", company="G"),  # no longer in the source
    }
    rows: list[Row] = [
        (2, ("020 100 0001", "", "Ann", "A")),
        (3, ("020 100 0002", None, "Bob", "B2")),
        (4, ("+31 20 100 0003", "", "New", None)),
    ]
    plan, sent = plan_of(rows, previous)
    assert sent == {
        "+31201000002": {"name": "Bob", "company": "B2"},
        "+31201000003": {"name": "New", "company": None},
    }
    assert plan.deletes == ["+31201000009"]
    assert (plan.rows_read, plan.rows_skipped, plan.numbers, plan.unchanged) == (3, 0, 3, 1)
    assert plan.problems == []


def test_every_number_of_a_row_carries_the_same_fields() -> None:
    plan, sent = plan_of([(2, ("020 100 0001", "06 1234 5678", "Ann", "A"))])
    assert sent == {
        "+31201000001": {"name": "Ann", "company": "A"},
        "+31612345678": {"name": "Ann", "company": "A"},
    }
    assert plan.numbers == 2


def test_the_same_number_twice_in_one_row_is_one_key_and_no_problem() -> None:
    plan, sent = plan_of([(2, ("06 1234 5678", "+31612345678", "Ann", "A"))])
    assert list(sent) == ["+31612345678"]
    assert plan.problems == []


def test_full_sends_unchanged_numbers_too() -> None:
    previous = {"+31201000001": digest(name="Ann", company="A"), "+31201000009": b"x" * 16}
    plan, sent = plan_of([(2, ("020 100 0001", "", "Ann", "A"))], previous, full=True)
    assert list(sent) == ["+31201000001"]
    assert plan.deletes == ["+31201000009"]  # what the commit removes from the state


def test_a_source_without_rows_deletes_everything_of_the_state() -> None:
    plan, sent = plan_of([], {"+31201000001": b"x" * 16})
    assert sent == {} and plan.deletes == ["+31201000001"]


# --- the duplicate rule -------------------------------------------------------------------


def test_the_first_row_holding_a_number_wins() -> None:
    rows: list[Row] = [
        (2, ("020 100 0001", "", "First", "A")),
        (3, ("+31201000001", "06 1234 5678", "Second", "B")),
        (4, ("0201000001", "", "Third", "C")),
    ]
    plan, sent = plan_of(rows)
    assert sent == {
        "+31201000001": {"name": "First", "company": "A"},
        "+31612345678": {"name": "Second", "company": "B"},  # its other number is kept
    }
    assert reasons(plan) == [
        "c.csv:3: phone: +31201000001 duplicate of line 2",
        "c.csv:4: phone: +31201000001 duplicate of line 2",
    ]
    assert plan.rows_skipped == 1  # line 4 had nothing else


def test_duplicates_name_rows_for_a_query() -> None:
    spool = Spool()
    rows: list[Row] = [(1, ("0201000001", "", "A", "")), (2, ("0201000001", "", "B", ""))]
    plan = build_plan(rows, LAYOUT, {}, spool.add, line_word="row")
    spool.close()
    assert plan.problems == [Problem(2, "phone", "+31201000001 duplicate of row 1")]


# --- row problems -------------------------------------------------------------------------


def test_row_problems_are_reported_and_the_sync_goes_on() -> None:
    rows: list[Row] = [
        (2, ("12ab", "06 1234 5678", "Ann", "A")),  # a bad number: the other is kept
        (3, ("", "", "Nobody", "N")),  # no number at all: skipped, reported once
        (4, ("", None, "Nobody", "N")),
        (5, Unreadable("not JSON: Expecting value (column 1)")),
        (6, ("112", "x" * 100, "Short", "S")),  # a short number, a long bad text
        (7, ("020 100 0001", "", "Ok", "O")),
    ]
    plan, sent = plan_of(rows)
    assert list(sent) == ["+31612345678", "+31201000001"]
    assert reasons(plan) == [
        'c.csv:2: phone: "12ab" is not a phone number (contains letters, not a phone number)',
        "c.csv:3: phone, mobile: no phone number; row skipped",
        "c.csv:4: phone, mobile: no phone number; row skipped",
        "c.csv:5: not JSON: Expecting value (column 1)",
        'c.csv:6: phone: "112" is not a phone number (an emergency number, not a full '
        "phone number)",
        f'c.csv:6: mobile: "{"x" * 32}…" is not a phone number (too long to be a phone number)',
    ]
    assert (plan.rows_read, plan.rows_skipped) == (6, 4)


def test_problems_never_show_field_values() -> None:
    secret = "Jane Secret-Name " * 40
    rows: list[Row] = [(2, ("020 100 0001", "", secret, b"\x00binary"))]
    plan, sent = plan_of(rows)
    text = "\n".join(reasons(plan))
    assert "Secret" not in text and "binary" in text
    assert reasons(plan) == [
        f"c.csv:2: full_name: {len(secret.strip())} characters cut to {MAX_VALUE}",
        "c.csv:2: company: binary data cannot be sent; sent as null",
    ]
    assert sent["+31201000001"] == {"name": secret.strip()[:MAX_VALUE], "company": None}


def test_field_values_are_json_scalars() -> None:
    values = [
        (" padded ", "padded"),
        ("   ", None),
        (None, None),
        (7, 7),
        (True, True),
        (1.5, 1.5),
        (2**70, str(2**70)),
        (decimal.Decimal("12.50"), "12.50"),
        (datetime.date(2024, 2, 29), "2024-02-29"),
        (datetime.datetime(2024, 2, 29, 12, 30), "2024-02-29T12:30:00"),
    ]
    rows: list[Row] = [
        (i + 2, (f"020 100 {i:04d}", "", value, "c")) for i, (value, _) in enumerate(values)
    ]
    plan, sent = plan_of(rows)
    assert plan.problems == []
    got = [sent[f"+3120100{i:04d}"]["name"] for i in range(len(values))]
    assert got == [expected for _, expected in values]


def test_a_number_that_is_not_text_or_an_integer_is_a_problem() -> None:
    rows: list[Row] = [(2, (31201000001, 6.5, "Ann", "A"))]
    plan, sent = plan_of(rows)
    assert list(sent) == ["+31201000001"]  # an integer: its digits are the number
    assert reasons(plan) == ["c.csv:2: mobile: a decimal number is not a phone number"]


def test_a_float_that_is_not_finite_is_sent_as_null() -> None:
    plan, sent = plan_of([(2, ("020 100 0001", "", float("nan"), "A"))])
    assert sent["+31201000001"]["name"] is None
    assert reasons(plan) == ["c.csv:2: full_name: not a finite number; sent as null"]


# --- digests ------------------------------------------------------------------------------


def test_the_digest_does_not_depend_on_field_order() -> None:
    one = digest_of(canonical_fields({"name": "Ann", "company": "A", "crm_id": "1"}))
    two = digest_of(canonical_fields({"crm_id": "1", "company": "A", "name": "Ann"}))
    assert one == two and len(one) == 16


def test_the_digest_is_stable_across_releases() -> None:
    # Changing the canonical form would resend every contact of every customer once.
    expected = '{"a":null,"b":1,"n":"Zoë"}'.encode()
    assert canonical_fields({"n": "Zoë", "a": None, "b": 1}) == expected
    assert digest_of(b'{"a":null}').hex() == "12bd28d7bb1e75b8ff8c03cf62f0ca9b"


def test_the_digest_sees_every_change() -> None:
    base = {"name": "Ann", "company": "A"}
    assert digest_of(canonical_fields(base)) != digest_of(canonical_fields({**base, "x": None}))
    assert digest_of(canonical_fields({"v": 1})) != digest_of(canonical_fields({"v": "1"}))
    assert digest_of(canonical_fields({"v": 1})) != digest_of(canonical_fields({"v": True}))


def test_an_unchanged_row_has_the_digest_of_its_fields() -> None:
    previous = {"+31201000001": digest(name="Ann", company=None)}
    plan, sent = plan_of([(2, ("020 100 0001", "", " Ann ", "  "))], previous)
    assert sent == {} and plan.unchanged == 1


# --- the spool ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "max_bytes", "expected"), [(2, 1 << 20, [2, 2, 1]), (10, 120, None)]
)
def test_the_spool_cuts_batches_by_count_and_size(
    tmp_path: Path, size: int, max_bytes: int, expected: list[int] | None
) -> None:
    spool = Spool(tmp_path)
    assert list(tmp_path.iterdir()) == []  # unlinked at once: nothing left behind, ever
    for i in range(5):
        spool.add(f"+3120100000{i}", bytes([i]) * 16, b'{"name":"%d"}' % i)
    batches = list(spool.batches(size, max_bytes))
    spool.close()
    if expected is not None:
        assert [len(b) for b in batches] == expected
    else:
        assert all(sum(len(u.item) + 1 for u in b) <= max_bytes for b in batches)
        assert len(batches) > 1
    first = batches[0][0]
    assert first.number == "+31201000000" and first.digest == bytes(16)
    assert json.loads(first.item) == {"number": "+31201000000", "fields": {"name": "0"}}


# --- the normalization memo ---------------------------------------------------------------


class FakeMemo:
    def __init__(self, known: dict[str, str]) -> None:
        self.known = known
        self.asked: list[set[str]] = []
        self.learned: list[tuple[str, str]] = []

    def lookup(self, texts: Collection[str]) -> dict[str, str]:
        self.asked.append(set(texts))
        return {text: self.known[text] for text in texts if text in self.known}

    def learn(self, pairs: Sequence[tuple[str, str]]) -> None:
        self.learned.extend(pairs)


def test_the_memo_answers_first_and_learns_the_numbers_it_did_not_know() -> None:
    # "remembered" is no phone number: only the memo can make it one, which shows that
    # a remembered text never goes through normalize again.
    memo = FakeMemo({"020 100 0001": "+31201000001", "remembered": "+31201000077"})
    rows: list[Row] = [
        (2, ("020 100 0001", "", "A", "a")),
        (3, ("remembered", "06 1234 5678", "B", "b")),
        (4, ("12ab", " ", "C", "c")),
    ]
    plan = build_plan(rows, LAYOUT, {}, None, memo=memo)
    assert plan.numbers == 3 and plan.upserts == 3
    assert memo.asked == [{"020 100 0001", "remembered", "06 1234 5678", "12ab"}]
    assert memo.learned == [("06 1234 5678", "+31612345678")]  # never a problem text
    assert [p.column for p in plan.problems] == ["phone"]
