"""Screen-pop URL templates: parsed once when the configuration is loaded.

A template is a URL with `{name}` placeholders, e.g.
`https://crm.example.com/contacts/{contact.crm_id}?from={number}&call={call_id}`.
`{{` and `}}` are literal braces. A name is one of `PLACEHOLDERS` or `contact.<field>`
for a configured contact field.

The literal text before the first placeholder must hold the scheme (http or https) and
the whole host, ended by '/', '?' or '#': a value is substituted by a caller, a contact
database or a SIP header, and must never choose where the browser goes. Rendering
(gateway/recognition/screenpop.py) percent-encodes every value, so values cannot change
the URL's structure after the host either.

`parse_template` raises `ValueError` whose message is the problem alone; the loader adds
the setting's key.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass

__all__ = ["MAX_TEMPLATE", "PLACEHOLDERS", "Field", "Template", "parse_template"]

PLACEHOLDERS = frozenset(
    {
        "number",
        "number_national",
        "raw",
        "display",
        "call_id",
        "conversation_id",
        "extension",
        "direction",
        "tenant",
    }
)
MAX_TEMPLATE = 2048  # longer URLs are cut or refused by browsers and proxies
CONTACT_PREFIX = "contact."

# `{{`, `}}`, a placeholder, or a brace that is neither (an error).
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
# scheme "://" authority; the authority ends at '/', '?', '#' or the end of the text.
_ORIGIN = re.compile(r"(https?)://([^/?#]*)", re.IGNORECASE)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_PORT = re.compile(
    rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{{1,5}}))?"
)
_SPACE = re.compile(r"\s")


@dataclass(frozen=True, slots=True)
class Field:
    """A placeholder: a name of PLACEHOLDERS or `contact.<field>`."""

    name: str


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: literal text and placeholders in order (never two literals in
    a row, never an empty literal)."""

    text: str  # the template as configured
    parts: tuple[str | Field, ...]


def parse_template(text: str, contact_fields: Collection[str]) -> Template:
    """Parse and check a screen-pop URL template; raises ValueError saying what is wrong."""
    if len(text) > MAX_TEMPLATE:
        raise ValueError(f"longer than {MAX_TEMPLATE} characters ({len(text)})")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in text):
        raise ValueError("must not contain control characters")
    parts = _split(text, contact_fields)
    _check_literals(parts)
    _check_origin(parts)
    return Template(text, tuple(parts))


def _split(text: str, contact_fields: Collection[str]) -> list[str | Field]:
    """Literal text (braces unescaped, adjacent pieces merged) and placeholders."""
    parts: list[str | Field] = []
    literal = ""
    end = 0
    for token in _TOKEN.finditer(text):
        literal += text[end : token.start()]
        end = token.end()
        match token.group():
            case "{{":
                literal += "{"
            case "}}":
                literal += "}"
            case "{":
                raise ValueError("unclosed { (write {{ for a literal brace)")
            case "}":
                raise ValueError("} without { (write }} for a literal brace)")
            case _:
                if literal:
                    parts.append(literal)
                    literal = ""
                parts.append(Field(_field_name(token.group(1), contact_fields)))
    literal += text[end:]
    if literal:
        parts.append(literal)
    return parts


def _field_name(name: str, contact_fields: Collection[str]) -> str:
    if name in PLACEHOLDERS:
        return name
    field = name.removeprefix(CONTACT_PREFIX)
    if field != name and field in contact_fields:
        return name
    if not name:
        raise ValueError("empty placeholder {}")
    allowed = sorted(PLACEHOLDERS) + [CONTACT_PREFIX + f for f in sorted(contact_fields)]
    raise ValueError(f"unknown placeholder {{{name}}} (allowed: {', '.join(allowed)})")


def _check_literals(parts: list[str | Field]) -> None:
    for part in parts:
        if isinstance(part, str) and _SPACE.search(part):
            raise ValueError("must not contain spaces (write %20)")


def _check_origin(parts: list[str | Field]) -> None:
    """Scheme and the whole host come from the literal text, never from a value."""
    prefix = parts[0] if parts and isinstance(parts[0], str) else ""
    origin = _ORIGIN.match(prefix)
    if origin is None or not origin.group(2):
        raise ValueError("must start with http:// or https:// and a host before any placeholder")
    authority = origin.group(2)
    if origin.end() == len(prefix) and len(parts) > 1:
        # 'https://crm.example.com{contact.x}' lets a value extend the host (.evil.com).
        raise ValueError("a placeholder must not be part of the host: put '/' after the host")
    if "@" in authority:
        # A browser would send it as credentials, or show a misleading host.
        raise ValueError("must not hold a user name or password before the host")
    host_port = _HOST_PORT.fullmatch(authority)
    if host_port is None or int(host_port.group("port") or 0) > 65535:
        raise ValueError(f"invalid host {authority!r} (a DNS name or IP address, optional port)")
