"""Screen-pop templates: parsing (gateway/config/templates.py) and rendering with URL
escaping (gateway/recognition/screenpop.py).

Rendered URLs are checked the way a browser would read them: `urlsplit` must find the
template's scheme, host, path segments and query keys, whatever the values, and decoding
each value must give back exactly what was substituted.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.templates import PLACEHOLDERS, Field, Template, parse_template
from gateway.recognition.screenpop import render, values_for

FIELDS = ("crm_id", "name", "url", "host")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CONTACT_URL = "https://crm.example.com/contacts/{contact.crm_id}?from={number}&call={call_id}"
NEW_URL = "https://crm.example.com/new?phone={number}&name={display}"
# Placeholders in a path segment, in query values and in the fragment.
EVERYWHERE = (
    "https://crm.example.com:8443/c/{contact.crm_id}/view"
    "?from={number}&name={display}&who={contact.name}&call={call_id}#{tenant}"
)

HOSTILE = [
    "a&b=c",
    "what?x=1",
    "#frag",
    "<script>alert(1)</script>",
    "/../admin",
    "../../etc/passwd",
    "100%",
    "%41%2F",
    "+31 20 123 4567",
    "  spaces  ",
    "\"double\" 'single'",
    "line\nbreak\r\n",
    "Zoë Ðoe 東京",
    "😀",
    "a=b;c=d",
    "https://evil.example.org/",
    "//evil.example.org",
    "@evil.example.org",
    "\\evil",
    "\x00",
    "",
]


# --- parsing --------------------------------------------------------------------------


def test_parse_splits_literals_and_placeholders() -> None:
    template = parse_template(CONTACT_URL, FIELDS)
    assert template == Template(
        CONTACT_URL,
        (
            "https://crm.example.com/contacts/",
            Field("contact.crm_id"),
            "?from=",
            Field("number"),
            "&call=",
            Field("call_id"),
        ),
    )


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        (
            NEW_URL,
            ("https://crm.example.com/new?phone=", Field("number"), "&name=", Field("display")),
        ),
        ("https://crm.example.com/", ("https://crm.example.com/",)),
        ("https://crm.example.com", ("https://crm.example.com",)),
        ("http://crm.example.com/?q={raw}", ("http://crm.example.com/?q=", Field("raw"))),
        ("HTTPS://CRM.example.com/{number}", ("HTTPS://CRM.example.com/", Field("number"))),
        ("https://crm.example.com?q={number}", ("https://crm.example.com?q=", Field("number"))),
        ("https://crm.example.com#{number}", ("https://crm.example.com#", Field("number"))),
        ("https://10.0.0.5:8080/{number}", ("https://10.0.0.5:8080/", Field("number"))),
        ("https://[2001:db8::1]/{number}", ("https://[2001:db8::1]/", Field("number"))),
        (
            "https://crm.example.com/{{literal}}/{number}",
            ("https://crm.example.com/{literal}/", Field("number")),
        ),
        (
            "https://crm.example.com/x?a={{{number}}}",
            ("https://crm.example.com/x?a={", Field("number"), "}"),
        ),
        (
            "https://crm.example.com/{number}{raw}",
            ("https://crm.example.com/", Field("number"), Field("raw")),
        ),
    ],
)
def test_parse_accepts(text: str, parts: tuple[str | Field, ...]) -> None:
    assert parse_template(text, FIELDS).parts == parts


def test_every_placeholder_and_contact_field_is_accepted() -> None:
    names = sorted(PLACEHOLDERS) + [f"contact.{f}" for f in FIELDS]
    text = "https://crm.example.com/?" + "&".join(f"{n}={{{n}}}" for n in names)
    fields = [p.name for p in parse_template(text, FIELDS).parts if isinstance(p, Field)]
    assert fields == names


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "https://crm.example.com/{foo}",
            "unknown placeholder {foo} (allowed: call_id, conversation_id, direction, "
            "display, extension, number, number_national, raw, tenant, contact.crm_id, "
            "contact.host, contact.name, contact.url)",
        ),
        ("https://crm.example.com/{contact.email}", "unknown placeholder {contact.email}"),
        ("https://crm.example.com/{contact.}", "unknown placeholder {contact.}"),
        ("https://crm.example.com/{crm_id}", "unknown placeholder {crm_id}"),
        ("https://crm.example.com/{ number }", "unknown placeholder { number }"),
        ("https://crm.example.com/{Number}", "unknown placeholder {Number}"),
        ("https://crm.example.com/{}", "empty placeholder {}"),
        ("https://crm.example.com/{number", "unclosed { (write {{ for a literal brace)"),
        ("https://crm.example.com/a{b", "unclosed { (write {{ for a literal brace)"),
        ("https://crm.example.com/}", "} without { (write }} for a literal brace)"),
        (
            "{contact.url}",
            "must start with http:// or https:// and a host before any placeholder",
        ),
        (
            "https://{contact.host}/x",
            "must start with http:// or https:// and a host before any placeholder",
        ),
        (
            "{number}https://crm.example.com/",
            "must start with http:// or https:// and a host before any placeholder",
        ),
        (
            "ftp://crm.example.com/{number}",
            "must start with http:// or https:// and a host before any placeholder",
        ),
        (
            "javascript:alert({number})",
            "must start with http:// or https:// and a host before any placeholder",
        ),
        (
            "//crm.example.com/{number}",
            "must start with http:// or https:// and a host before any placeholder",
        ),
        ("", "must start with http:// or https:// and a host before any placeholder"),
        (
            "https://crm.example.com{contact.crm_id}",
            "a placeholder must not be part of the host: put '/' after the host",
        ),
        (
            "https://crm.{contact.host}/x",
            "a placeholder must not be part of the host: put '/' after the host",
        ),
        (
            "https://crm.example.com:{contact.crm_id}/",
            "a placeholder must not be part of the host: put '/' after the host",
        ),
        (
            "https://user:secret@crm.example.com/{number}",
            "must not hold a user name or password before the host",
        ),
        ("https://crm example.com/", "must not contain spaces (write %20)"),
        ("https://crm.example.com/a b/{number}", "must not contain spaces (write %20)"),
        ("https://crm.example.com/?q={number}&x=\t", "must not contain control characters"),
        ("https://crm.example.com/\n{number}", "must not contain control characters"),
        ("https://crm.example.com/\u202e{number}", "must not contain control characters"),
        ("https://crm_example!.com/", "invalid host 'crm_example!.com'"),
        ("https://crm.example.com:99999/", "invalid host 'crm.example.com:99999'"),
        ("https://-crm.example.com/", "invalid host '-crm.example.com'"),
        ("https://crm.example.com/" + "a" * 2030, "longer than 2048 characters (2054)"),
    ],
)
def test_parse_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_template(text, FIELDS)
    assert str(refused.value).startswith(message)


def test_parse_accepts_exactly_the_maximum_length() -> None:
    text = "https://crm.example.com/?q={number}&x="
    text += "a" * (2048 - len(text))
    assert parse_template(text, FIELDS).text == text


# --- rendering ------------------------------------------------------------------------


def _values(value: str) -> dict[str, str]:
    return {
        "number": value,
        "display": value,
        "contact.crm_id": value,
        "contact.name": value,
        "call_id": value,
        "tenant": value,
    }


def _check_structure(url: str, value: str) -> None:
    """The URL has the template's structure and every value decodes to `value`."""
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("https", "crm.example.com:8443")
    assert parts.hostname == "crm.example.com"
    segments = parts.path.split("/")
    assert len(segments) == 4
    assert segments[:2] == ["", "c"] and segments[3] == "view"
    if value not in (".", ".."):
        assert unquote(segments[2], errors="strict") == value
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=True)
    assert sorted(query) == ["call", "from", "name", "who"]
    assert all(values == [value] for values in query.values())
    assert unquote(parts.fragment, errors="strict") == value


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_cannot_change_the_url(value: str) -> None:
    url = render(parse_template(EVERYWHERE, FIELDS), _values(value))
    _check_structure(url, value)
    assert not any(ch in url for ch in " \"'<>\n\r\\")
    assert url.isascii()


def test_rendering_encodes_each_value_with_utf8() -> None:
    template = parse_template(NEW_URL, FIELDS)
    url = render(template, {"number": "+31201234567", "display": "Zoë Ðoe 東京 & Co"})
    assert url == (
        "https://crm.example.com/new?phone=%2B31201234567"
        "&name=Zo%C3%AB%20%C3%90oe%20%E6%9D%B1%E4%BA%AC%20%26%20Co"
    )


def test_literal_text_is_copied_and_missing_values_render_empty() -> None:
    template = parse_template("https://crm.example.com/{{x}}/a;b,c?q={number}&r={raw}", FIELDS)
    assert render(template, {"raw": "1"}) == "https://crm.example.com/{x}/a;b,c?q=&r=1"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (42, "42"),
        (-7, "-7"),
        (1.5, "1.5"),
        ("x y", "x%20y"),
    ],
)
def test_scalars_are_converted_to_text(value: str | int | float | bool | None, text: str) -> None:
    template = parse_template("https://crm.example.com/?v={contact.crm_id}", FIELDS)
    assert render(template, {"contact.crm_id": value}) == f"https://crm.example.com/?v={text}"


@pytest.mark.parametrize("value", [".", ".."])
def test_dot_segments_render_empty_in_the_path_only(value: str) -> None:
    # A browser resolves /c/../view to /view, even when the dots are written %2E.
    template = parse_template("https://crm.example.com/c/{contact.crm_id}/view?q={number}", FIELDS)
    url = render(template, {"contact.crm_id": value, "number": value})
    assert url == f"https://crm.example.com/c//view?q={value}"


def test_undecodable_text_renders_as_replacement_characters() -> None:
    # A SIP header's invalid UTF-8 arrives as lone surrogates (surrogateescape).
    template = parse_template("https://crm.example.com/?name={display}", FIELDS)
    url = render(template, {"display": "a\udcffb"})
    assert url == "https://crm.example.com/?name=a%EF%BF%BDb"


# --- values_for -----------------------------------------------------------------------


def test_values_for_a_recognized_caller() -> None:
    values = values_for(
        "+31201234567",
        "0201234567",
        "NL",
        {"crm_id": "C-17", "name": "Zoë", "vip": True},
        call_id="abc@host",
        conversation_id="conv-1",
        extension="201",
        direction="inbound",
        tenant="acme",
        display="Reception",
    )
    assert values == {
        "number": "+31201234567",
        "number_national": "020 123 4567",
        "raw": "0201234567",
        "call_id": "abc@host",
        "conversation_id": "conv-1",
        "extension": "201",
        "direction": "inbound",
        "tenant": "acme",
        "display": "Reception",
        "contact.crm_id": "C-17",
        "contact.name": "Zoë",
        "contact.vip": True,
    }


def test_values_for_an_unknown_caller() -> None:
    values = values_for(None, "anonymous", "NL", None, call_id="c1")
    assert values["number"] == "anonymous"
    assert values["number_national"] == ""
    assert values["display"] == ""
    assert not any(key.startswith("contact.") for key in values)
    assert values_for(None, None, "NL", None)["number"] == ""


@pytest.mark.parametrize(
    ("e164", "region", "national"),
    [
        ("+31612345678", "NL", "06 12345678"),
        ("+12025550143", "US", "(202) 555-0143"),
        ("+12025550143", "NL", "00 1 202-555-0143"),  # as dialled from the tenant's region
        ("+31201234567", "ZZ", "020 123 4567"),  # no region: the number's own format
    ],
)
def test_number_national(e164: str, region: str, national: str) -> None:
    assert values_for(e164, None, region, None)["number_national"] == national


def test_values_for_refuses_unknown_call_values() -> None:
    with pytest.raises(TypeError, match="unknown placeholders: colour"):
        values_for(None, None, "NL", None, colour="red")


def test_values_for_renders() -> None:
    template = parse_template(CONTACT_URL, FIELDS)
    values = values_for("+31201234567", None, "NL", {"crm_id": "7/8"}, call_id="a&b")
    assert render(template, values) == (
        "https://crm.example.com/contacts/7%2F8?from=%2B31201234567&call=a%26b"
    )


# --- properties -----------------------------------------------------------------------


@FUZZ
@given(value=st.text(max_size=60))
def test_any_text_round_trips(value: str) -> None:
    url = render(parse_template(EVERYWHERE, FIELDS), _values(value))
    _check_structure(url, value)


@FUZZ
@given(values=st.lists(st.text(max_size=30), min_size=4, max_size=4))
def test_each_query_value_round_trips(values: list[str]) -> None:
    template = parse_template(
        "https://crm.example.com/new?a={number}&b={display}&c={contact.name}&d={raw}", FIELDS
    )
    given_values = dict(zip(["number", "display", "contact.name", "raw"], values, strict=True))
    parts = urlsplit(render(template, given_values))
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "crm.example.com", "/new")
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=True)
    assert query == {k: [v] for k, v in zip("abcd", values, strict=True)}
