"""Conformance vectors kept in the repository, and the one way tests read them.

`rfc4475/` holds the 49 torture messages of RFC 4475 (test data from the RFC, whose
distribution is unlimited; its README says where the bytes come from), byte-exact, with
their MANIFEST.tsv and SHA256SUMS. They live here, not in a folder beside the checkout,
so that every clone runs the same conformance tests.

Missing or altered data is a failure, never a skip: a conformance test that quietly
stops testing is worse than none. `rfc4475_manifest()` therefore checks every file
against SHA256SUMS before a test sees one byte of it (a checkout that rewrote line ends,
or a truncated copy, fails loudly with the file named).
"""

from __future__ import annotations

import csv
import hashlib
from functools import cache
from pathlib import Path

RFC4475 = Path(__file__).resolve().parent / "rfc4475"
MANIFEST_COLUMNS = ["file", "rfc_section", "title", "class", "expected"]


class MissingVectors(AssertionError):
    """The vectors are not where the repository keeps them, or not as committed."""


@cache
def rfc4475_manifest() -> tuple[dict[str, str], ...]:
    """The MANIFEST.tsv rows, after every listed file was checked against SHA256SUMS."""
    manifest, sums = RFC4475 / "MANIFEST.tsv", RFC4475 / "SHA256SUMS"
    for needed in (manifest, sums):
        if not needed.is_file():
            raise MissingVectors(f"RFC 4475 vectors incomplete: {needed} is missing")
    with manifest.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        if reader.fieldnames != MANIFEST_COLUMNS:
            raise MissingVectors(f"{manifest}: unexpected columns {reader.fieldnames}")
        rows = tuple(row for row in reader if row["file"])
    expected = dict(
        reversed(line.split(None, 1)) for line in sums.read_text("ascii").splitlines() if line
    )
    listed = {row["file"] for row in rows}
    if listed != set(expected):
        raise MissingVectors(f"MANIFEST.tsv and SHA256SUMS disagree: {listed ^ set(expected)}")
    for name, digest in sorted(expected.items()):
        path = RFC4475 / name
        if not path.is_file():
            raise MissingVectors(f"RFC 4475 vector missing: {path}")
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != digest:
            raise MissingVectors(f"RFC 4475 vector altered: {path} has sha256 {actual}")
    return rows


def rfc4475_bytes(name: str) -> bytes:
    """One vector, byte-exact (only names the checked manifest lists)."""
    if name not in {row["file"] for row in rfc4475_manifest()}:
        raise MissingVectors(f"{name} is not an RFC 4475 vector of the manifest")
    return (RFC4475 / name).read_bytes()
