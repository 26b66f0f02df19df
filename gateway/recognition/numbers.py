"""Phone number normalization: what a caller signals or a contact database holds → E.164.

Pure functions, no I/O. `normalize(text, region)` reads what a person typed or a database
holds; `from_uri(uri, region)` reads a SIP or tel URI as signalled. Both return a `Number`
whose `kind` says what the text is, and never raise on any input text (an unknown region
is a programming error and raises `ValueError`; the configuration has validated it).

Rules, in the order they are applied:

1. **Cleaning.** Control and invisible format characters (C0/C1 controls, bidi marks,
   zero-width spaces, soft hyphens, line separators, lone surrogates) are removed; they
   come with copy-paste from mail and spreadsheets. `raw` is the cleaned input without
   surrounding whitespace, cut to 64 characters. Longer text is not a phone number
   (`invalid`); beyond 256 characters it is not even looked at.
2. **Anonymous.** Empty text and the words anonymous, unknown, restricted, private,
   withheld, unavailable (any case), and any SIP URI on the host `anonymous.invalid`
   (RFC 3323) → `anonymous`. Never a number.
3. **Letters.** A SIP user with letters (`sip:alice@example.com`) → `sip_user`. Text for
   `normalize` with letters → `invalid`: vanity numbers (`1-800-FLOWERS`) and extension
   suffixes (`… ext. 12`) are refused rather than guessed at. Text starting with `sip:`,
   `sips:` or `tel:` is read as a URI.
4. **Service codes.** Digits with `*` or `#` (`*21#`) → `short`.
5. **Shape.** Otherwise the text must be digits with an optional leading `+` and visual
   separators only (spaces, `-`, `.`, `/`, `()`, `[]`, `~` and their Unicode and
   fullwidth forms). Any Unicode decimal digit counts: fullwidth and Arabic-Indic
   digits are read as the digits they are (phonenumbers does the same).
6. **Extensions.** Digits without `+` that are in `extensions` → `extension`, checked
   before any number parsing, so an internal 201 never matches a contact.
7. **Short numbers.** Digits without `+`: a known short code of the region (112, 911 in
   US, 999 in GB, 1233 in NL, 116000: phonenumbers' short number metadata) of at most 6
   digits → `short`. Any other text of 2-6 digits is `short` too unless phonenumbers finds
   it a *valid* full number of the region (NL 14020 is one): for such short input any
   length is "possible", so possibility proves nothing. A single digit is `invalid`.
8. **E.164.** Otherwise phonenumbers parses the text with the region (national, `+`,
   `00`/`011` international prefixes, `+31 (0)20 …`). The number is `e164` when its
   length is possible for its country and is a full number (not local-only, as a US
   number without area code). Validity (`is_valid_number`) is *not* required: a CRM may
   hold numbers of ranges newer than the metadata. Impossible numbers → `invalid`, with
   a reason such as "too short for a number in NL".

URIs: the user part of a SIP URI (without its own `;parameters`) and the number of a tel
URI go through rules 2 to 8, RFC 3966 visual separators included. A local number with a
global-number phone-context (`tel:1234567;phone-context=+3120`) is that prefix followed by
its digits; with a domain phone-context, or none, it is read in the region.

The E.164 form is a fixed point: `normalize(n.e164, any_region).e164 == n.e164`.
Results of the phonenumbers part are cached (LRU) because the same callers call again.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Container
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, ValidationResult, shortnumberinfo

from gateway.sip.uri import AbsoluteURI, SipURI, TelURI, parse_uri

__all__ = ["Number", "NumberKind", "from_uri", "is_e164", "normalize"]

NumberKind = Literal["e164", "anonymous", "short", "extension", "sip_user", "invalid"]


@dataclass(frozen=True, slots=True)
class Number:
    """What a caller's or contact's number turned out to be."""

    kind: NumberKind
    e164: str | None  # "+31612345678", set only when kind == "e164"
    raw: str  # the input text (cut to 64 characters, control characters removed)
    reason: str | None  # why it is not e164 (shown in sync reports); None for e164


MAX_RAW = 64
# Short input that is not a known short code counts as a short number up to this length.
MAX_SHORT = 6
# Beyond this many characters a text is refused without looking at it all (bounded work).
_SCAN = 4 * MAX_RAW

_REGIONS = frozenset(phonenumbers.SUPPORTED_REGIONS)
_ANONYMOUS = frozenset(
    {"", "anonymous", "unknown", "restricted", "private", "withheld", "unavailable"}
)
_ANONYMOUS_HOST = "anonymous.invalid"  # RFC 3323 §4.1.1.3
# Removed by cleaning: controls, format characters, surrogates, line/paragraph separators.
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

_E164 = re.compile(r"\+[1-9][0-9]{5,14}")
_URI_PREFIX = re.compile(r"(?:sips?|tel):", re.IGNORECASE)
_LETTER = re.compile(r"[^\W\d_]")  # any Unicode letter
_SERVICE_CODE = re.compile(r"(?=.*[0-9])[0-9*#]*[*#][0-9*#]*")
_PLUS = "+\uff0b"  # ASCII and fullwidth plus
_OPEN = "(\uff08[\uff3b"
_CLOSE = ")\uff09]\uff3d"
# Visual separators (phonenumbers' punctuation, without its 'x' for extensions).
_OTHER_SEPARATORS = (
    "-./~\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u30fc\uff0d\uff0f\u2053\u223c\uff5e"
)
_SEP = f"\\s{re.escape(_OPEN + _CLOSE + _OTHER_SEPARATORS)}"
_DIALLED = re.compile(f"[{_SEP}]*[{_PLUS}]?[{_SEP}\\d]*")
_DIGIT = re.compile(r"\d")
_SPACE = re.compile(r"\s")
_NOT_DIGIT = re.compile(r"[^0-9]")
# phonenumbers gets plain ASCII: digits, '+', '(' / ')' (it strips "(0)" after a country
# code) and spaces for every other separator.
_TO_ASCII = {ord(c): "+" for c in _PLUS}
_TO_ASCII.update({ord(c): "(" for c in _OPEN})
_TO_ASCII.update({ord(c): ")" for c in _CLOSE})
_TO_ASCII.update({ord(c): " " for c in _OTHER_SEPARATORS})

_PARSE_REASONS = {
    NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
    NumberParseException.NOT_A_NUMBER: "not a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too short after the international prefix",
    NumberParseException.TOO_SHORT_NSN: "too short to be a phone number",
    NumberParseException.TOO_LONG: "too long to be a phone number",
}
_LENGTH_REASONS = {
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "a local number without its area code ({where})",
    ValidationResult.TOO_SHORT: "too short for a number in {where}",
    ValidationResult.TOO_LONG: "too long for a number in {where}",
    ValidationResult.INVALID_LENGTH: "not a possible length for a number in {where}",
}

# What the phonenumbers part decides: (kind, e164, reason).
_Result = tuple[NumberKind, str | None, str | None]


def is_e164(text: str) -> bool:
    """Strict syntax check: '+', a non-zero digit, then 5 to 14 ASCII digits."""
    return _E164.fullmatch(text) is not None


def normalize(text: str, region: str, *, extensions: Container[str] = frozenset()) -> Number:
    """What a person typed or a database holds, read with the tenant's region.

    '0612345678', '+31 6 1234 5678', '0031612345678' (NL), '(020) 123-4567',
    '+31 (0)20 123 4567', 'tel:+31-20-123-4567', '011 31 20 1234567' (US) ... See the
    module docstring for the rules.
    """
    _check_region(region)
    if _E164.fullmatch(text):  # fast path: the form the index and most trunks use
        return _number(text, _resolve(text, region, ""))
    cleaned = _clean(text).strip()
    raw = cleaned[:MAX_RAW]
    if len(cleaned) > MAX_RAW:
        return Number("invalid", None, raw, "too long to be a phone number")
    if _URI_PREFIX.match(cleaned):
        found = from_uri(cleaned, region, extensions=extensions)
        return Number(found.kind, found.e164, raw, found.reason)
    return _number(raw, _classify(cleaned, region, extensions, letters="invalid"))


def from_uri(
    uri: str | SipURI | TelURI | AbsoluteURI,
    region: str,
    *,
    extensions: Container[str] = frozenset(),
) -> Number:
    """A SIP or tel URI as signalled (From, P-Asserted-Identity, Request-URI ...).

    `sip:+31201234567@host;user=phone`, `sip:0201234567@trunk` (a digits user without
    user=phone is still a number: trunks commonly send that), `tel:+31201234567`,
    `tel:1234567;phone-context=+3120`; `sip:alice@example.com` → sip_user;
    `sip:anonymous@anonymous.invalid` → anonymous; `sip:201@pbx` with 201 in
    `extensions` → extension. `raw` is the URI's text.
    """
    _check_region(region)
    if isinstance(uri, str):
        raw = _clean(uri).strip()[:MAX_RAW]
        try:
            parsed = parse_uri(uri.strip())
        except ValueError:  # SIPParseError
            return Number("invalid", None, raw, "not a SIP or tel URI")
    else:
        parsed = uri
        raw = _clean(str(uri))[:MAX_RAW]
    if isinstance(parsed, SipURI):
        return _number(raw, _from_sip(parsed, region, extensions))
    if isinstance(parsed, TelURI):
        return _number(raw, _from_tel(parsed, region, extensions))
    return Number("invalid", None, raw, f"a {parsed.scheme}: URI, not a SIP or tel URI")


# --- the steps ------------------------------------------------------------------------


def _check_region(region: str) -> None:
    if region not in _REGIONS:
        raise ValueError(f"unknown region {region!r} (an ISO 3166 code phonenumbers knows)")


def _clean(text: str) -> str:
    """The text without invisible characters (rule 1); at most _SCAN characters looked at."""
    text = text[:_SCAN]
    if text.isprintable():  # C speed; also false for no-break spaces, which are kept below
        return text
    return "".join(ch for ch in text if unicodedata.category(ch) not in _INVISIBLE)


def _number(raw: str, result: _Result) -> Number:
    kind, e164, reason = result
    return Number(kind, e164, raw, reason)


def _from_sip(uri: SipURI, region: str, extensions: Container[str]) -> _Result:
    if uri.host == _ANONYMOUS_HOST:
        return "anonymous", None, "the caller withheld the number"
    if uri.user is None:
        return "invalid", None, "no user part in the URI"
    # RFC 3261 §19.1.6: a telephone-subscriber user part may carry its own parameters
    # (";isub=", ";phone-context=", ";npdi"); only phone-context matters here.
    user, _, user_params = uri.user.partition(";")
    context = _global_context(_user_params(user_params).get("phone-context"))
    return _classify(_clean(user).strip(), region, extensions, letters="sip_user", context=context)


def _from_tel(uri: TelURI, region: str, extensions: Container[str]) -> _Result:
    # A local number (no '+') with a domain phone-context, or none, is read in the region.
    context = "" if uri.global_ else _global_context(uri.params.get("phone-context"))
    return _classify(uri.digits, region, extensions, letters="invalid", context=context)


def _user_params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in text.split(";"):
        name, _, value = item.partition("=")
        params.setdefault(name.strip().lower(), value.strip())
    return params


def _global_context(context: str | None) -> str:
    """The digits prefix of a global-number phone-context (RFC 3966 §5.1.5), or ''."""
    if not context or not context.startswith("+"):
        return ""  # absent, or a domain name: the number is read in the region
    digits = re.sub(r"[\-.()]", "", context)
    return digits if digits[1:].isascii() and digits[1:].isdigit() else ""


def _classify(
    text: str,
    region: str,
    extensions: Container[str],
    *,
    letters: Literal["invalid", "sip_user"],
    context: str = "",
) -> _Result:
    """Rules 2 to 8 for cleaned, stripped text (a typed number or a URI's user part)."""
    if text.casefold() in _ANONYMOUS:
        return "anonymous", None, "the caller withheld the number"
    if _E164.fullmatch(text):
        return _resolve(text, region, "")
    if _LETTER.search(text):
        if letters == "sip_user":
            return "sip_user", None, "a SIP user name, not a phone number"
        return "invalid", None, "contains letters, not a phone number"
    if _SERVICE_CODE.fullmatch(text):
        return "short", None, "a service code, not a phone number"
    if not _DIALLED.fullmatch(text):
        return "invalid", None, "not a phone number"
    dialled = _ascii(text)
    digits = _NOT_DIGIT.sub("", dialled)
    if not digits:
        return "invalid", None, "not a phone number"
    if "+" not in dialled:
        if digits in extensions:
            return "extension", None, "an internal extension"
        if len(digits) == 1:
            return "invalid", None, "too short to be a phone number"
    return _resolve(dialled, region, context)


def _ascii(text: str) -> str:
    """Dialled text as phonenumbers (and the cache) gets it: ASCII digits, '+', '()', ' '."""
    text = text.translate(_TO_ASCII)
    if text.isascii():
        return text
    text = _DIGIT.sub(lambda m: str(unicodedata.decimal(m.group())), text)
    return _SPACE.sub(" ", text)


@lru_cache(maxsize=8192)
def _resolve(dialled: str, region: str, context: str) -> _Result:
    """Rules 7 and 8 for ASCII dialled text: digits, separators, maybe a leading '+'.

    `context` is a global phone-context prefix ('+3120') a local number is dialled in.
    """
    national = not dialled.lstrip(" (").startswith("+")
    digits = _NOT_DIGIT.sub("", dialled)
    if national and len(digits) <= MAX_SHORT:
        return _short_input(dialled, digits, region, context)
    if national and context:
        dialled = context + digits
    number = _parse(dialled, region)
    if isinstance(number, str):
        return "invalid", None, number
    return _canonical(number, dialled)


def _short_input(dialled: str, digits: str, region: str, context: str) -> _Result:
    """Rule 7: 2-6 digits without '+' are a short number unless they make a full one."""
    number = _parse(dialled, region)
    if not isinstance(number, str):
        if shortnumberinfo.is_valid_short_number_for_region(number, region):
            if shortnumberinfo.connects_to_emergency_number(digits, region):
                return "short", None, "an emergency number, not a full phone number"
            return "short", None, "a service number, not a full phone number"
        # Every short string has a "possible" length somewhere: ask for a valid one.
        if not context and phonenumbers.is_valid_number(number):
            return _canonical(number)
    if context:  # the signalling says which number this is local to
        in_context = _parse(context + digits, region)
        if isinstance(in_context, str):
            return "invalid", None, in_context
        return _canonical(in_context)
    return "short", None, "a short number, not a full phone number"


def _parse(dialled: str, region: str) -> PhoneNumber | str:
    """The parsed number, or why phonenumbers could not read it."""
    try:
        return phonenumbers.parse(dialled, region)
    except NumberParseException as exc:
        return _PARSE_REASONS.get(exc.error_type, "not a phone number")


def _canonical(number: PhoneNumber, dialled: str = "") -> _Result:
    """The E.164 form of a parsed number if its length is possible, as a fixed point.

    Parsing '+<cc>0…' strips a national prefix once; the E.164 form of a number with a
    doubled prefix would be read differently again, so read it until it is stable
    (`dialled`, the text just parsed, needs no second reading when it is that form).
    """
    for _ in range(3):
        outcome = phonenumbers.is_possible_number_with_reason(number)
        if outcome != ValidationResult.IS_POSSIBLE:
            return "invalid", None, _length_reason(number, outcome)
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        if not _E164.fullmatch(e164):
            return "invalid", None, "not a possible length for a phone number"
        if e164 == dialled:
            return "e164", e164, None
        again = _parse_e164(e164)
        if again is None:
            return "invalid", None, "not a phone number"
        if _same_e164(again, e164):
            return "e164", e164, None
        number = again
    return "invalid", None, "not a phone number"


@lru_cache(maxsize=8192)
def _parse_e164(e164: str) -> PhoneNumber | None:
    try:
        return phonenumbers.parse(e164, None)
    except NumberParseException:
        return None


def _same_e164(number: PhoneNumber, e164: str) -> bool:
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) == e164


def _length_reason(number: PhoneNumber, outcome: int) -> str:
    code = number.country_code or 0
    if outcome == ValidationResult.INVALID_COUNTRY_CODE:
        return f"unknown country code +{code}"
    where = phonenumbers.region_code_for_country_code(code)
    if where in ("001", "ZZ"):  # non-geographic (+800, +882 …): name the code
        where = f"+{code}"
    template = _LENGTH_REASONS.get(outcome, "not a possible length for a number in {where}")
    return template.format(where=where)
