"""What stored call events hold of a person, found for erasure (api/contacts.py).

Two questions, both asked of event dicts as the stream stores them:

- `NumberMentions.in_event`: does the event name this phone number anywhere? A GDPR
  erasure removes every such event. A number reaches an event through many fields:
  the parties (`number_raw`, `number_e164`, `uri`, `display`), `diversion.from/to`,
  `transfer.refer_to/referred_by/replaces`, `device.contact`, `originate.requested_by`,
  the screen-pop URLs (percent-encoded, often in the national form) and the contact
  fields. The schema grows, so no field list is kept: every string of the event is
  read, percent-decoded, and every run of digits and visual separators in it is
  compared with the number in all the forms it is written in (E.164 with or without
  `+`, with the `00` prefix, the national form with its trunk prefix, the form
  dialled from the tenant's region), and else normalized
  with the tenant's region as recognition reads a caller (numbers.normalize), which
  catches the rest (`+31 (0)20 …`, `011 31 …`). A string whose digits do not contain
  the national significant number cannot name the number and costs one regex.
- `without_source`: the event with the contact data of one contact source removed
  (`lookup.contact`, the `screen_pop` URLs rendered from that contact and the name the
  callee's phone was shown, `caller_display`), or None if it holds none. Events
  recorded before `lookup.source` existed do not say where their contact came from;
  any unlink clears them, since keeping data that may belong to an unlinked source is
  the worse mistake.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote

import phonenumbers

from gateway.recognition.numbers import normalize

# A number as written: digits with visual separators, maybe a leading +.
_TOKEN = re.compile(r"\+?\d(?:[\d\s\-./()\[\]~]*\d)?")
_NOT_DIGIT = re.compile(r"\D+")


def _digits(text: str) -> str:
    """The decimal digits of `text` as ASCII (fullwidth and other scripts included)."""
    found = _NOT_DIGIT.sub("", text)
    if found.isascii():
        return found
    return "".join(str(unicodedata.digit(ch)) for ch in found)


def strings_of(value: object) -> Iterator[str]:
    """Every string value in a nested event dict (keys are schema names, not data)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from strings_of(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings_of(item)


class NumberMentions:
    """Finds one E.164 number in event text, in whatever form it was written."""

    def __init__(self, e164: str, region: str) -> None:
        number = phonenumbers.parse(e164, None)
        international = f"{number.country_code}{phonenumbers.national_significant_number(number)}"
        self.e164 = e164
        self.region = region
        self.nsn = phonenumbers.national_significant_number(number)
        national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
        # Not the national significant number alone: short ones would match ports and
        # extensions. Written without its prefix, normalization still finds it.
        self.forms = {international, "00" + international, _digits(national)}
        if region in phonenumbers.SUPPORTED_REGIONS:
            dialled = phonenumbers.format_out_of_country_calling_number(number, region)
            self.forms.add(_digits(dialled))

    def in_event(self, event: Mapping[str, Any]) -> bool:
        return any(self.in_text(text) for text in strings_of(event))

    def in_text(self, text: str) -> bool:
        if "%" in text:
            text = unquote(text)  # screen-pop URLs: %2B31…, or digits split by %20
        if self.nsn not in _digits(text):
            return False
        for match in _TOKEN.finditer(text):
            token = match.group()
            if self.nsn not in _digits(token):
                continue
            # The token, and its parts in case separators joined two numbers.
            for candidate in (token, *token.split()):
                if _digits(candidate) in self.forms or self._normalizes(candidate):
                    return True
        return False

    def _normalizes(self, candidate: str) -> bool:
        return normalize(candidate, self.region).e164 == self.e164


def holds_source(event: Mapping[str, Any], source: str) -> bool:
    """Whether the event's contact data came from `source` (or may have: see above)."""
    shown = event.get("caller_display")
    if isinstance(shown, Mapping) and shown.get("source") in (source, None):
        return True
    lookup = event.get("lookup")
    if not isinstance(lookup, Mapping):
        return False
    origin = lookup.get("source")
    if origin is None:
        return lookup.get("contact") is not None  # stored before sources were recorded
    return bool(origin == source)


def without_source(event: dict[str, Any], source: str) -> dict[str, Any] | None:
    """The event without the contact data of `source`, or None if it holds none.

    `lookup` keeps its status, timing and `source` (a source id is not personal data,
    and it tells a consumer why a hit has no contact); `screen_pop` goes whole, since
    its URLs were rendered from the contact (a CRM id in the path, a name in the query).
    """
    if not holds_source(event, source):
        return None
    lookup = event.get("lookup")
    held = ("screen_pop", "caller_display")
    if not any(key in event for key in held) and not (
        isinstance(lookup, Mapping) and "contact" in lookup
    ):
        return None  # already redacted
    redacted = {key: value for key, value in event.items() if key not in held}
    if isinstance(lookup, Mapping):
        redacted["lookup"] = {key: value for key, value in lookup.items() if key != "contact"}
    return redacted
