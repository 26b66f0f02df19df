"""Phone number normalization (gateway/recognition/numbers.py).

One table per entry point: each row gives the text, the region and the expected kind and
E.164 form. Property tests check that no text makes the functions raise and that the
E.164 form is a fixed point of `normalize`.
"""

from __future__ import annotations

import unicodedata

import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.recognition.numbers import Number, from_uri, is_e164, normalize
from gateway.sip.errors import SIPParseError
from gateway.sip.uri import parse_uri

EXTENSIONS = frozenset({"201", "2001", "42"})
REGIONS = sorted(phonenumbers.SUPPORTED_REGIONS)


def fullwidth(text: str) -> str:
    """The text with its ASCII digits and '+' in fullwidth form (U+FF10…, U+FF0B)."""
    return text.translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789+"})


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# (text, region, kind, e164)
NORMALIZE_TABLE: list[tuple[str, str, str, str | None]] = [
    # --- NL: mobile and fixed, every common way of writing them
    ("0612345678", "NL", "e164", "+31612345678"),
    ("06-12345678", "NL", "e164", "+31612345678"),
    ("06 12 34 56 78", "NL", "e164", "+31612345678"),
    ("+31 6 1234 5678", "NL", "e164", "+31612345678"),
    ("+31612345678", "NL", "e164", "+31612345678"),
    ("0031612345678", "NL", "e164", "+31612345678"),
    ("00 31 6 12345678", "NL", "e164", "+31612345678"),
    ("(020) 123-4567", "NL", "e164", "+31201234567"),
    ("020-1234567", "NL", "e164", "+31201234567"),
    ("020.123.45.67", "NL", "e164", "+31201234567"),
    ("020/1234567", "NL", "e164", "+31201234567"),
    ("+31 (0)20 123 4567", "NL", "e164", "+31201234567"),
    ("+31(0)201234567", "NL", "e164", "+31201234567"),
    ("0031 (0)20 1234567", "NL", "e164", "+31201234567"),
    ("(+31) 20 123 4567", "NL", "e164", "+31201234567"),
    ("+31 020 1234567", "NL", "e164", "+31201234567"),
    ("tel:+31-20-123-4567", "NL", "e164", "+31201234567"),
    ("TEL:+31201234567", "NL", "e164", "+31201234567"),
    ("sip:+31201234567@trunk.example.net", "NL", "e164", "+31201234567"),
    ("  0612345678  ", "NL", "e164", "+31612345678"),
    ("0800 1234", "NL", "e164", "+318001234"),
    ("14020", "NL", "e164", "+3114020"),  # municipal number: a valid 5-digit NL number
    # --- BE
    ("02 123 45 67", "BE", "e164", "+3221234567"),
    ("0471 12 34 56", "BE", "e164", "+32471123456"),
    ("+32 471 12 34 56", "NL", "e164", "+32471123456"),
    ("0032 2 123 45 67", "NL", "e164", "+3221234567"),
    ("+32 (0)2 123 45 67", "BE", "e164", "+3221234567"),
    # --- DE
    ("030 1234567", "DE", "e164", "+49301234567"),
    ("030/123 456 7", "DE", "e164", "+49301234567"),
    ("0151 12345678", "DE", "e164", "+4915112345678"),
    ("+49 (0)30 1234567", "NL", "e164", "+49301234567"),
    ("0049 30 1234567", "DE", "e164", "+49301234567"),
    ("0049 30 1234567", "NL", "e164", "+49301234567"),
    # --- GB
    ("020 7946 0958", "GB", "e164", "+442079460958"),
    ("07911 123456", "GB", "e164", "+447911123456"),
    ("+44 (0)20 7946 0958", "NL", "e164", "+442079460958"),
    ("+44 7911 123456", "DE", "e164", "+447911123456"),
    ("0044 20 7946 0958", "FR", "e164", "+442079460958"),
    # --- US
    ("+1 (202) 555-0143", "NL", "e164", "+12025550143"),
    ("(202) 555-0143", "US", "e164", "+12025550143"),
    ("202-555-0143", "US", "e164", "+12025550143"),
    ("202.555.0143", "US", "e164", "+12025550143"),
    ("1 202 555 0143", "US", "e164", "+12025550143"),
    ("011 31 20 1234567", "US", "e164", "+31201234567"),
    ("011 44 20 7946 0958", "US", "e164", "+442079460958"),
    ("001 202 555 0143", "NL", "e164", "+12025550143"),
    ("555-0143", "US", "invalid", None),  # local only: no area code
    # --- FR
    ("01 23 45 67 89", "FR", "e164", "+33123456789"),
    ("06 12 34 56 78", "FR", "e164", "+33612345678"),
    ("+33 (0)1 23 45 67 89", "NL", "e164", "+33123456789"),
    ("0033 6 12 34 56 78", "NL", "e164", "+33612345678"),
    ("01.23.45.67.89", "FR", "e164", "+33123456789"),
    # --- non-ASCII forms: fullwidth and Arabic-Indic digits, Unicode separators
    (fullwidth("0612345678"), "NL", "e164", "+31612345678"),
    (fullwidth("+31 20 123 4567"), "NL", "e164", "+31201234567"),
    ("+٣١٦١٢٣٤٥٦٧٨", "NL", "e164", "+31612345678"),
    ("0612\u00a0345\u00a0678", "NL", "e164", "+31612345678"),  # no-break spaces
    ("020\u2013123\u20134567", "NL", "e164", "+31201234567"),  # en dashes
    ("\u202a+31 20 123 4567\u202c", "NL", "e164", "+31201234567"),  # bidi marks
    ("06\u200b12345678", "NL", "e164", "+31612345678"),  # zero-width space
    ("0612345678\n", "NL", "e164", "+31612345678"),
    # --- anonymous, every form
    ("", "NL", "anonymous", None),
    ("   ", "NL", "anonymous", None),
    ("anonymous", "NL", "anonymous", None),
    ("Anonymous", "NL", "anonymous", None),
    ("ANONYMOUS", "NL", "anonymous", None),
    ("unknown", "NL", "anonymous", None),
    ("Unknown", "NL", "anonymous", None),
    ("restricted", "NL", "anonymous", None),
    ("private", "NL", "anonymous", None),
    ("Private", "NL", "anonymous", None),
    ("withheld", "NL", "anonymous", None),
    ("unavailable", "NL", "anonymous", None),
    (" anonymous ", "NL", "anonymous", None),
    ("sip:anonymous@anonymous.invalid", "NL", "anonymous", None),
    # --- short codes: emergency, service, and too short to be a full number
    ("112", "NL", "short", None),
    ("112", "DE", "short", None),
    ("110", "DE", "short", None),
    ("112", "FR", "short", None),
    ("17", "FR", "short", None),
    ("101", "BE", "short", None),
    ("911", "US", "short", None),
    ("411", "US", "short", None),
    ("999", "GB", "short", None),
    ("111", "GB", "short", None),
    ("118118", "GB", "short", None),
    ("1233", "NL", "short", None),
    ("116000", "NL", "short", None),
    ("116116", "DE", "short", None),
    ("0800", "NL", "short", None),
    ("0900", "NL", "short", None),
    ("20123", "NL", "short", None),  # a "possible" length, but no valid number
    ("12345", "DE", "short", None),
    ("99", "NL", "short", None),
    ("*21#", "NL", "short", None),
    ("#31#0612345678", "NL", "short", None),
    # --- extensions (checked before number parsing)
    ("201", "NL", "extension", None),
    ("2001", "NL", "extension", None),
    ("42", "US", "extension", None),
    (fullwidth("201"), "NL", "extension", None),
    # --- letters: never guessed at
    ("abc", "NL", "invalid", None),
    ("1-800-FLOWERS", "US", "invalid", None),
    ("020 1234567 ext. 12", "NL", "invalid", None),
    ("0612345678x12", "NL", "invalid", None),
    ("sip:alice@example.com", "NL", "sip_user", None),
    # --- garbage
    ("+", "NL", "invalid", None),
    ("++31", "NL", "invalid", None),
    ("++31612345678", "NL", "invalid", None),
    ("0", "NL", "invalid", None),
    ("-", "NL", "invalid", None),
    ("()", "NL", "invalid", None),
    ("06+12345678", "NL", "invalid", None),
    ("0612345678, 0201234567", "NL", "invalid", None),
    ("0612345678 / 0201234567", "NL", "invalid", None),
    ("12345678901234567890", "NL", "invalid", None),
    ("+3161234567890123456", "NL", "invalid", None),
    ("9" * 70, "NL", "invalid", None),
    ("0" * 20, "NL", "invalid", None),
    ("+31 20", "NL", "invalid", None),
    ("+1 202", "NL", "invalid", None),
    ("+999 123456", "NL", "invalid", None),  # no such country code
    ("+0612345678", "NL", "invalid", None),
    ("tel:", "NL", "invalid", None),
    ("sip:", "NL", "invalid", None),
    ("06@12345678", "NL", "invalid", None),
    ("\x00\x01", "NL", "anonymous", None),  # nothing left once controls are removed
]


@pytest.mark.parametrize(("text", "region", "kind", "e164"), NORMALIZE_TABLE)
def test_normalize_table(text: str, region: str, kind: str, e164: str | None) -> None:
    number = normalize(text, region, extensions=EXTENSIONS)
    assert (number.kind, number.e164) == (kind, e164), number
    assert (number.reason is None) == (kind == "e164")


# (uri, region, kind, e164)
URI_TABLE: list[tuple[str, str, str, str | None]] = [
    ("sip:+31201234567@gw.example.com;user=phone", "NL", "e164", "+31201234567"),
    ("sip:+31201234567@gw.example.com", "US", "e164", "+31201234567"),
    ("sips:+31201234567@gw.example.com:5061;user=phone", "NL", "e164", "+31201234567"),
    ("sip:0201234567@trunk.example.net", "NL", "e164", "+31201234567"),  # no user=phone
    ("sip:0031201234567@trunk.example.net", "NL", "e164", "+31201234567"),
    ("sip:2025550143@trunk.example.net", "US", "e164", "+12025550143"),
    ("sip:+31-20-1234567@gw.example.com;user=phone", "NL", "e164", "+31201234567"),
    ("sip:+31.20.123.4567@gw.example.com;user=phone", "NL", "e164", "+31201234567"),
    ("sip:+31(0)201234567@gw.example.com;user=phone", "NL", "e164", "+31201234567"),
    (
        "sip:+31201234567;npdi;rn=+31201234000@gw.example.com;user=phone",
        "NL",
        "e164",
        "+31201234567",
    ),
    ("sip:+31201234567;isub=12@gw.example.com;user=phone", "NL", "e164", "+31201234567"),
    ("sip:1234567;phone-context=+3120@gw.example.com;user=phone", "NL", "e164", "+31201234567"),
    ("sip:%2B31201234567@gw.example.com", "NL", "e164", "+31201234567"),
    ("tel:+31201234567", "NL", "e164", "+31201234567"),
    ("tel:+31-20-123-4567", "NL", "e164", "+31201234567"),
    ("tel:+1-202-555-0143;ext=12", "NL", "e164", "+12025550143"),
    ("tel:1234567;phone-context=+3120", "NL", "e164", "+31201234567"),
    ("tel:1234567;phone-context=+31-20", "DE", "e164", "+31201234567"),
    ("tel:020-1234567;phone-context=example.com", "NL", "e164", "+31201234567"),
    ("tel:0201234567", "NL", "e164", "+31201234567"),
    ("tel:112;phone-context=+31", "NL", "short", None),
    ("sip:112@gw.example.com", "NL", "short", None),
    ("sip:911@gw.example.com;user=phone", "US", "short", None),
    ("sip:*21#@gw.example.com", "NL", "short", None),
    ("sip:201@pbx.example.com", "NL", "extension", None),
    ("sip:201@pbx.example.com;transport=tcp", "NL", "extension", None),
    ("sip:2001@10.0.0.1:5060", "NL", "extension", None),
    ("sip:alice@example.com", "NL", "sip_user", None),
    ("sips:Bob.Smith@example.com", "NL", "sip_user", None),
    ("sip:alice+home@example.com", "NL", "sip_user", None),
    ("sip:anonymous@anonymous.invalid", "NL", "anonymous", None),
    ("sip:+31201234567@anonymous.invalid", "NL", "anonymous", None),
    ("sip:anonymous@gw.example.com", "NL", "anonymous", None),
    ("sip:Anonymous@trunk.example.net;user=phone", "NL", "anonymous", None),
    ("sip:restricted@trunk.example.net", "NL", "anonymous", None),
    ("sip:unavailable@trunk.example.net", "NL", "anonymous", None),
    ("sip:gw.example.com", "NL", "invalid", None),  # no user part
    ("sip:12@gw.example.com", "NL", "short", None),
    ("sip:0@gw.example.com", "NL", "invalid", None),
    ("sip:+31@gw.example.com", "NL", "invalid", None),
    ("sip:12345678901234567890@gw.example.com", "NL", "invalid", None),
    ("tel:+99912345", "NL", "invalid", None),
    ("tel:ABCD", "NL", "invalid", None),
    ("mailto:alice@example.com", "NL", "invalid", None),
    ("urn:service:sos", "NL", "invalid", None),
    ("not a uri", "NL", "invalid", None),
    ("", "NL", "invalid", None),
    ("sip:", "NL", "invalid", None),
]


@pytest.mark.parametrize(("uri", "region", "kind", "e164"), URI_TABLE)
def test_from_uri_table(uri: str, region: str, kind: str, e164: str | None) -> None:
    number = from_uri(uri, region, extensions=EXTENSIONS)
    assert (number.kind, number.e164) == (kind, e164), number
    assert number.raw == uri


def _parses(uri: str) -> bool:
    try:
        parse_uri(uri)
    except SIPParseError:
        return False
    return True


@pytest.mark.parametrize(("uri", "region", "kind", "e164"), [r for r in URI_TABLE if _parses(r[0])])
def test_from_uri_accepts_parsed_uris(uri: str, region: str, kind: str, e164: str | None) -> None:
    number = from_uri(parse_uri(uri), region, extensions=EXTENSIONS)
    assert (number.kind, number.e164) == (kind, e164), number


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("+31 20", "too short for a number in NL"),
        ("+1 202", "too short for a number in US"),
        ("+3161234567890123", "too long for a number in NL"),
        ("555-0143", "a local number without its area code (US)"),
        ("abc", "contains letters, not a phone number"),
        ("12345678901234567890", "too long to be a phone number"),
        ("+999 123456", "unknown country code"),
        ("0", "too short to be a phone number"),
        ("++31", "not a phone number"),
        ("9" * 70, "too long to be a phone number"),
        ("112", "an emergency number, not a full phone number"),
        ("1233", "a service number, not a full phone number"),
        ("0800", "a short number, not a full phone number"),
        ("201", "an internal extension"),
        ("anonymous", "the caller withheld the number"),
    ],
)
def test_reasons(text: str, reason: str) -> None:
    region = "US" if text == "555-0143" else "NL"
    assert normalize(text, region, extensions=EXTENSIONS).reason == reason


def test_raw_is_the_cleaned_input_cut_to_64() -> None:
    assert normalize("\u202a020 123 4567\u202c", "NL").raw == "020 123 4567"
    assert normalize("  0612345678 ", "NL").raw == "0612345678"
    long = normalize("1" * 100, "NL")
    assert (long.kind, long.raw) == ("invalid", "1" * 64)
    uri = "sip:+31201234567@" + "h" * 80 + ".example.com"
    assert from_uri(uri, "NL").raw == uri[:64]


def test_extensions_are_checked_before_numbers() -> None:
    # 112 as an internal extension is an extension, not an emergency number.
    assert normalize("112", "NL", extensions={"112"}).kind == "extension"
    # A number with '+' is never an extension.
    assert normalize("+31201234567", "NL", extensions={"+31201234567"}).kind == "e164"
    # Without the extension list, 201 is merely short.
    assert normalize("201", "NL").kind == "short"
    assert from_uri("sip:201@pbx.example.com", "NL").kind == "short"


def test_validity_is_lenient() -> None:
    """A number of a possible length is accepted even if the metadata says not valid:
    a CRM may hold numbers of ranges newer than the metadata."""
    number = phonenumbers.parse("+32 2 123 45 67")
    assert not phonenumbers.is_valid_number(number)
    assert normalize("+32 2 123 45 67", "NL").e164 == "+3221234567"


def test_unknown_region_raises() -> None:
    with pytest.raises(ValueError, match="unknown region"):
        normalize("0612345678", "XX")
    with pytest.raises(ValueError, match="unknown region"):
        normalize("0612345678", "nl")
    with pytest.raises(ValueError, match="unknown region"):
        from_uri("sip:alice@example.com", "ZZ")


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("+31612345678", True),
        ("+12025550143", True),
        ("+123456", True),
        ("+123456789012345", True),
        ("+1234567890123456", False),
        ("+12345", False),
        ("+0612345678", False),
        ("31612345678", False),
        ("+31 612345678", False),
        ("+31612345678\n", False),
        ("+" + fullwidth("31") + "612345678", False),
        ("", False),
    ],
)
def test_is_e164(text: str, ok: bool) -> None:
    assert is_e164(text) is ok


def test_the_e164_fast_path_still_rejects_impossible_numbers() -> None:
    assert normalize("+3120", "NL").kind == "invalid"
    assert normalize("+999123456", "NL").kind == "invalid"
    # A doubled national prefix after the country code ends at the canonical form.
    assert normalize("+3100201234567", "NL").e164 == "+31201234567"


# --- properties -----------------------------------------------------------------------

PHONEY = st.text(alphabet="0123456789+ -()./#*\uff10\uff11\u0663\u00a0\u202a", max_size=24)


def _check(number: Number) -> None:
    assert isinstance(number, Number)
    assert len(number.raw) <= 64
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in number.raw)
    if number.kind == "e164":
        assert number.e164 is not None and is_e164(number.e164)
        assert number.reason is None
    else:
        assert number.e164 is None and number.reason


@FUZZ
@given(text=st.text(max_size=80) | PHONEY, region=st.sampled_from(REGIONS))
def test_normalize_never_raises(text: str, region: str) -> None:
    _check(normalize(text, region, extensions=EXTENSIONS))


@FUZZ
@given(
    text=st.text(max_size=80)
    | PHONEY.map(lambda t: "sip:" + t + "@h")
    | PHONEY.map("tel:".__add__),
    region=st.sampled_from(REGIONS),
)
def test_from_uri_never_raises(text: str, region: str) -> None:
    _check(from_uri(text, region, extensions=EXTENSIONS))


@FUZZ
@given(
    text=PHONEY | st.from_regex(r"\+?[0-9 ]{2,18}", fullmatch=True),
    region=st.sampled_from(REGIONS),
    other=st.sampled_from(REGIONS),
)
def test_e164_is_a_fixed_point(text: str, region: str, other: str) -> None:
    number = normalize(text, region)
    if number.e164 is not None:
        again = normalize(number.e164, other)
        assert (again.kind, again.e164) == ("e164", number.e164)
        assert from_uri(f"tel:{number.e164}", other).e164 == number.e164
