"""Screen-pop URLs: a parsed template (gateway/config/templates.py) filled in for one call.

Every substituted value is percent-encoded (UTF-8, `urllib.parse.quote(value, safe="")`),
in the path and the query alike: `&`, `?`, `#`, `/`, `=`, `+`, spaces, quotes, `<script>`
and non-ASCII text can never change the URL's structure, and decoding a query value
gives back exactly what was substituted. The template's literal text is copied as it is
(it was checked when the configuration was loaded, and holds the scheme and the host).

One thing escaping cannot stop: a path segment that is exactly `.` or `..` is a dot
segment to a browser even when written `%2E%2E` (WHATWG URL standard), and would climb
the path. So in the path a value that is only `.` or `..` renders as nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

import phonenumbers

from gateway.config.templates import CONTACT_PREFIX, Field, Template
from gateway.recognition.cache import Scalar

__all__ = ["Scalar", "render", "values_for"]


_CALL_KEYS = frozenset(
    {"call_id", "conversation_id", "extension", "direction", "tenant", "display"}
)
_DOT_SEGMENTS = frozenset({".", ".."})
_REGIONS = frozenset(phonenumbers.SUPPORTED_REGIONS)


def render(template: Template, values: Mapping[str, Scalar]) -> str:
    """The template with each placeholder replaced by its encoded value ('' if missing)."""
    pieces: list[str] = []
    in_path = True  # until the literal text opens the query or the fragment
    for part in template.parts:
        if isinstance(part, Field):
            text = _text(values.get(part.name))
            if in_path and text in _DOT_SEGMENTS:
                text = ""
            pieces.append(_encode(text))
        else:
            pieces.append(part)
            in_path = in_path and "?" not in part and "#" not in part
    return "".join(pieces)


def values_for(
    number_e164: str | None,
    raw: str | None,
    region: str,
    contact: Mapping[str, Scalar] | None,
    **call: str | None,
) -> dict[str, Scalar]:
    """The values of every placeholder for one call.

    `number` is the E.164 number, or the number as signalled when there is none;
    `number_national` is the number as dialled from `region`: the national format for a
    number of that country, with the international prefix for another (what the
    tenant's CRM holds); '' without an E.164 number. `contact` gives `contact.<field>`; `call`
    holds call_id, conversation_id, extension, direction, tenant and display.
    """
    unknown = call.keys() - _CALL_KEYS
    if unknown:
        raise TypeError(f"values_for() got unknown placeholders: {', '.join(sorted(unknown))}")
    values: dict[str, Scalar] = {
        "number": number_e164 or raw or "",
        "number_national": _national(number_e164, region),
        "raw": raw or "",
    }
    values.update({key: call.get(key) or "" for key in sorted(_CALL_KEYS)})
    if contact is not None:
        values.update({CONTACT_PREFIX + key: value for key, value in contact.items()})
    return values


def _text(value: Scalar) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _encode(text: str) -> str:
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (undecodable bytes of a SIP header) cannot be UTF-8: show U+FFFD.
        text = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
        data = text.encode("utf-8")
    return quote(data, safe="")


def _national(number_e164: str | None, region: str) -> str:
    if not number_e164:
        return ""
    try:
        number = phonenumbers.parse(number_e164, None)
    except phonenumbers.NumberParseException:
        return ""
    if region in _REGIONS and number.country_code != phonenumbers.country_code_for_region(region):
        # A foreign number: as the tenant dials it, with the international prefix.
        return str(phonenumbers.format_out_of_country_calling_number(number, region))
    # A number of the tenant's country, or no known region: the national format.
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL))
