"""gateway.sip.headers: names, lists, parameters, Via, name-addr, CSeq."""

from __future__ import annotations

import pytest

from gateway.sip.errors import SIPParseError
from gateway.sip.headers import (
    COMPACT_FORMS,
    CSeq,
    NameAddr,
    Via,
    canonical_name,
    header_key,
    parse_contact,
    parse_cseq,
    parse_name_addr,
    parse_params,
    parse_route,
    parse_uint,
    parse_via,
    split_first_value,
    split_values,
    unquote,
)
from gateway.sip.uri import AbsoluteURI, SipURI


def raises(func: object, *args: object, **kwargs: object) -> SIPParseError:
    with pytest.raises(SIPParseError) as info:
        func(*args, **kwargs)  # type: ignore[operator]
    return info.value


class TestNames:
    def test_compact_form_table_is_complete(self) -> None:
        # RFC 3261 §7.3.3 plus RFC 3265, 3515, 3841, 3892, 4028, 4474.
        assert COMPACT_FORMS == {
            "a": "Accept-Contact",
            "b": "Referred-By",
            "c": "Content-Type",
            "d": "Request-Disposition",
            "e": "Content-Encoding",
            "f": "From",
            "i": "Call-ID",
            "j": "Reject-Contact",
            "k": "Supported",
            "l": "Content-Length",
            "m": "Contact",
            "n": "Identity-Info",
            "o": "Event",
            "r": "Refer-To",
            "s": "Subject",
            "t": "To",
            "u": "Allow-Events",
            "v": "Via",
            "x": "Session-Expires",
            "y": "Identity",
        }

    @pytest.mark.parametrize(("letter", "name"), sorted(COMPACT_FORMS.items()))
    def test_compact_forms_expand_in_both_cases(self, letter: str, name: str) -> None:
        assert canonical_name(letter) == name
        assert canonical_name(letter.upper()) == name
        assert header_key(letter) == header_key(letter.upper()) == name.lower()

    @pytest.mark.parametrize(
        ("given", "canonical"),
        [
            ("call-id", "Call-ID"),
            ("CALL-ID", "Call-ID"),
            ("cseq", "CSeq"),
            ("MaX-fOrWaRdS", "Max-Forwards"),
            ("www-authenticate", "WWW-Authenticate"),
            ("via ", "Via"),
            ("X-Custom-Thing", "X-Custom-Thing"),
            ("C%6Fntact", "C%6Fntact"),  # RFC 4475 esc02: not an escape, an unknown header
        ],
    )
    def test_canonical_name(self, given: str, canonical: str) -> None:
        assert canonical_name(given) == canonical

    def test_header_key_is_case_insensitive(self) -> None:
        assert header_key("Via") == header_key("VIA") == header_key("vIa") == "via"
        assert header_key("X-Foo") == header_key("x-FOO") == "x-foo"


class TestSplitValues:
    def test_plain_list(self) -> None:
        assert split_values("INVITE, ACK ,BYE") == ["INVITE", "ACK", "BYE"]

    def test_empty_value_is_an_empty_list(self) -> None:
        assert split_values("") == []
        assert split_values("  ") == []

    def test_empty_items_are_kept_for_the_caller_to_judge(self) -> None:
        assert split_values(";;,,;;,;") == [";;", "", ";;", ";"]

    def test_commas_inside_quotes_and_brackets(self) -> None:
        value = '"Bell, Alexander" <sip:a@example.com;x=a,b>;tag=1, <sip:b@example.com>'
        assert split_values(value) == [
            '"Bell, Alexander" <sip:a@example.com;x=a,b>;tag=1',
            "<sip:b@example.com>",
        ]

    def test_quoted_pair_does_not_end_the_string(self) -> None:
        assert split_values(r'"a \", b" <sip:x@y>, <sip:z@y>') == [
            r'"a \", b" <sip:x@y>',
            "<sip:z@y>",
        ]

    def test_unterminated_quote_names_the_header(self) -> None:
        err = raises(split_values, '"abc, <sip:x@y>', header="Contact")
        assert str(err) == "Bad Contact header: unterminated quoted string"
        assert err.header == "Contact"

    def test_unterminated_bracket(self) -> None:
        assert str(raises(split_values, "<sip:x@y, z", header="Route")) == (
            "Bad Route header: missing '>'"
        )

    def test_split_first_value(self) -> None:
        assert split_first_value("<sip:a@x;lr>, <sip:b@x;lr>") == ("<sip:a@x;lr>", "<sip:b@x;lr>")
        assert split_first_value('"x,y" <sip:a@x>') == ('"x,y" <sip:a@x>', "")
        assert split_first_value("a,b,c") == ("a", "b,c")
        assert split_first_value("a") == ("a", "")


class TestParams:
    def test_values_flags_and_case(self) -> None:
        assert parse_params(";Branch=z9hG4bKabc;RPORT;received=192.0.2.1") == {
            "branch": "z9hG4bKabc",
            "rport": None,
            "received": "192.0.2.1",
        }

    def test_leading_semicolon_is_optional(self) -> None:
        assert parse_params("a=1;b") == parse_params(";a=1;b") == {"a": "1", "b": None}

    def test_whitespace_around_separators(self) -> None:
        # RFC 4475 wsinv: SEMI = SWS ";" SWS, EQUAL = SWS "=" SWS
        assert parse_params(" ;  tag    = 98asjd8 ; flag ") == {"tag": "98asjd8", "flag": None}

    def test_quoted_values_keep_their_quotes_and_may_hold_semicolons(self) -> None:
        params = parse_params(';+sip.instance="<urn:uuid:1;2>";q=0.5')
        assert params == {"+sip.instance": '"<urn:uuid:1;2>"', "q": "0.5"}
        assert unquote(params["+sip.instance"] or "") == "<urn:uuid:1;2>"

    def test_ipv6_host_value(self) -> None:
        assert parse_params(";received=2001:db8::1;maddr=[2001:db8::2]") == {
            "received": "2001:db8::1",
            "maddr": "[2001:db8::2]",
        }

    def test_first_duplicate_wins(self) -> None:
        assert parse_params(";tag=a;TAG=b") == {"tag": "a"}

    @pytest.mark.parametrize(
        ("text", "detail"),
        [
            (";;", "empty parameter"),
            (";a=1;;b", "empty parameter"),
            (";a=1;", "empty parameter"),
            (";=1", "empty parameter"),
            (";a=", "empty parameter value"),
            (";a b=1", "invalid parameter name"),
            (";a=b c", "invalid parameter value"),
            (';a="unterminated', "unterminated quoted string"),
            (';a="x"y', "invalid parameter value"),
        ],
    )
    def test_errors(self, text: str, detail: str) -> None:
        err = raises(parse_params, text, header="Contact")
        assert str(err) == f"Bad Contact header: {detail}"
        assert err.status == 400

    def test_unquote(self) -> None:
        assert unquote(r'"a \"b\" \\c"') == 'a "b" \\c'
        assert unquote("token") == "token"


class TestVia:
    def test_basic(self) -> None:
        (via,) = parse_via("SIP/2.0/UDP pc33.Atlanta.com:5066;branch=z9hG4bK776asdhds;rport")
        assert via == Via(
            "SIP/2.0",
            "UDP",
            "pc33.atlanta.com",
            5066,
            {"branch": "z9hG4bK776asdhds", "rport": None},
        )
        assert via.branch == "z9hG4bK776asdhds"
        assert via.rport == ""
        assert via.received is None
        assert via.sent_by == "pc33.atlanta.com:5066"

    def test_rport_with_value_and_received(self) -> None:
        (via,) = parse_via("SIP/2.0/TCP h.example.com;rport=5070;received=192.0.2.9")
        assert via.rport == "5070"
        assert via.received == "192.0.2.9"
        assert via.port is None
        (plain,) = parse_via("SIP/2.0/UDP h.example.com")
        assert plain.rport is None
        assert plain.branch is None  # RFC 2543 peers (RFC 4475 inv2543)

    def test_several_values_on_one_line_and_odd_whitespace(self) -> None:
        # RFC 4475 wsinv, after unfolding
        value = (
            "SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8  , "
            "SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239"
        )
        first, second = parse_via(value)
        assert (first.protocol, first.transport, first.host, first.branch) == (
            "SIP/2.0",
            "TCP",
            "spindle.example.com",
            "z9hG4bK9ikj8",
        )
        assert (second.transport, second.host, second.branch) == (
            "UDP",
            "192.168.255.111",
            "z9hG4bK30239",
        )

    def test_unknown_transport_and_case(self) -> None:
        (via,) = parse_via("sip/2.0/unknown t4.example.com;branch=z9hG4bKasd0f3en")
        assert via.protocol == "SIP/2.0"
        assert via.transport == "UNKNOWN"

    def test_ipv6_sent_by(self) -> None:
        (via,) = parse_via("SIP/2.0/UDP [2001:DB8::9]:5060;branch=z9hG4bK1")
        assert (via.host, via.port, via.sent_by) == ("[2001:db8::9]", 5060, "[2001:db8::9]:5060")

    def test_str(self) -> None:
        via = Via(
            "SIP/2.0", "TLS", "proxy.example.com", 5061, {"branch": "z9hG4bKx", "rport": None}
        )
        assert str(via) == "SIP/2.0/TLS proxy.example.com:5061;branch=z9hG4bKx;rport"
        assert parse_via(str(via)) == (via,)

    @pytest.mark.parametrize(
        ("value", "detail"),
        [
            ("", "empty value"),
            ("SIP/2.0/UDP 192.0.2.15;;,;,,", "empty parameter"),  # RFC 4475 badinv01
            ("SIP/2.0/UDP a.example.com, ", "empty value"),
            ("SIP/2.0/UDP", "malformed sent-protocol or sent-by"),
            ("SIP/2.0 a.example.com", "malformed sent-protocol or sent-by"),
            ("SIP/2.0/UDP a.example.com junk", "malformed sent-protocol or sent-by"),
            ("SIP/2.0/UDP a.example.com:99999", "value out of range"),
            ("SIP/2.0/UDP [1::2::3]", "invalid IPv6 reference"),
            ("SIP/2.0/UDP a.example.com;branch=", "empty parameter value"),
        ],
    )
    def test_errors(self, value: str, detail: str) -> None:
        err = raises(parse_via, value)
        assert str(err) == f"Bad Via header: {detail}"
        assert err.header == "Via"


class TestNameAddr:
    def test_quoted_display_name_with_quoted_pairs(self) -> None:
        # RFC 4475 wsinv: "J Rosenberg \\\""
        na = parse_name_addr(
            '"J Rosenberg \\\\\\""       <sip:jdrosen@example.com> ;  tag = 98asjd8'
        )
        assert na.display == 'J Rosenberg \\"'
        assert isinstance(na.uri, SipURI)
        assert na.uri.user == "jdrosen"
        assert na.params == {"tag": "98asjd8"}
        assert na.tag == "98asjd8"

    def test_token_display_name(self) -> None:
        na = parse_name_addr("A. Bell <sip:a.g.bell@example.com>;tag=x")
        assert na.display == "A. Bell"

    def test_display_without_space_before_bracket(self) -> None:
        # RFC 4475 §3.1.1.6 (lwsdisp)
        na = parse_name_addr("caller<sip:caller@example.com>;tag=323")
        assert (na.display, na.tag) == ("caller", "323")

    def test_no_display(self) -> None:
        na = parse_name_addr("<sip:user@example.com>")
        assert na.display is None
        assert na.params == {}
        assert parse_name_addr('"" <sip:u@example.com>').display == ""

    def test_addr_spec_parameters_belong_to_the_header(self) -> None:
        # RFC 4475 cparam01 vs cparam02
        spec = parse_name_addr("sip:+19725552222@gw1.example.net;unknownparam")
        assert isinstance(spec.uri, SipURI)
        assert spec.uri.params == {}
        assert spec.params == {"unknownparam": None}
        angle = parse_name_addr("<sip:+19725552222@gw1.example.net;unknownparam>")
        assert isinstance(angle.uri, SipURI)
        assert angle.uri.params == {"unknownparam": None}
        assert angle.params == {}

    def test_addr_spec_with_whitespace_before_params(self) -> None:
        na = parse_name_addr("sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n")
        assert isinstance(na.uri, SipURI)
        assert na.uri.host == "chair-dnrc.example.com"
        assert na.tag == "1918181833n"

    def test_other_schemes(self) -> None:
        na = parse_name_addr("isbn:2983792873")
        assert isinstance(na.uri, AbsoluteURI)
        assert na.uri.raw == "isbn:2983792873"

    def test_str_round_trip(self) -> None:
        na = parse_name_addr(
            '"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam = newvalue'
        )
        assert na.display == 'Quoted string ""'
        assert str(na) == '"Quoted string \\"\\"" <sip:jdrosen@example.com>;newparam=newvalue'
        assert parse_name_addr(str(na)) == na
        assert str(NameAddr(None, parse_name_addr("sip:a@b.example").uri, {"tag": "1"})) == (
            "<sip:a@b.example>;tag=1"
        )

    @pytest.mark.parametrize(
        ("value", "detail"),
        [
            ("", "empty value"),
            ('"Mr. J. User <sip:j.user@example.com>', "unterminated quoted string"),  # quotbal
            ('"Joe" sip:joe@example.com', "display name without <URI>"),
            ("<sip:user@example.com", "missing '>'"),
            ("Bell, Alexander <sip:a.g.bell@example.com>", "display name must be tokens or quoted"),
            ("Watson@Thomas <sip:t@example.org>", "display name must be tokens or quoted"),
            ("< sip:t.watson@example.org >", "URI contains whitespace"),  # badaspec
            ("<sip:user@example.com> junk", "unexpected text after '>'"),
            ('"Joe" <sip:joe@example.org>;;;;', "empty parameter"),  # badinv01
            (
                "sip:user@example.com?Route=%3Csip:sip.example.com%3E",  # regbadct
                "URI with '?' or ',' must be enclosed in <>",
            ),
            ("sip:a@example.com, sip:b@example.com", "URI with '?' or ',' must be enclosed in <>"),
            ("sip:user@exa mple.com", "URI contains whitespace"),
            ("<>", "missing or invalid scheme"),
        ],
    )
    def test_errors(self, value: str, detail: str) -> None:
        err = raises(parse_name_addr, value, header="To")
        assert str(err) == f"Bad To header: {detail}"
        assert err.status == 400


class TestContactAndRoute:
    def test_star(self) -> None:
        assert parse_contact("*") == "*"
        assert parse_contact("  * ") == "*"

    def test_list(self) -> None:
        contacts = parse_contact('"A" <sip:a@x.example>;q=0.7, sip:b@y.example;expires=60')
        assert isinstance(contacts, tuple)
        assert [c.display for c in contacts] == ["A", None]
        assert [c.params for c in contacts] == [{"q": "0.7"}, {"expires": "60"}]

    @pytest.mark.parametrize(
        ("value", "detail"),
        [
            ("", "empty value"),
            ("<sip:a@x.example>,", "empty value"),
            ("*, <sip:a@x.example>", "'*' mixed with addresses"),
        ],
    )
    def test_contact_errors(self, value: str, detail: str) -> None:
        assert str(raises(parse_contact, value)) == f"Bad Contact header: {detail}"

    def test_route(self) -> None:
        routes = parse_route("<sip:p1.example.com;lr>,<sip:p2.example.com;lr;transport=tcp>")
        hosts = [r.uri.host for r in routes if isinstance(r.uri, SipURI)]
        assert hosts == ["p1.example.com", "p2.example.com"]
        assert all(isinstance(r.uri, SipURI) and r.uri.lr for r in routes)

    def test_route_requires_brackets(self) -> None:
        err = raises(parse_route, "sip:p1.example.com;lr", header="Record-Route")
        assert str(err) == "Bad Record-Route header: URI must be enclosed in <>"


class TestCSeqAndIntegers:
    def test_cseq(self) -> None:
        assert parse_cseq("314159 INVITE") == CSeq(314159, "INVITE")
        assert parse_cseq(" 0009   INVITE ") == CSeq(9, "INVITE")
        assert str(CSeq(1, "ACK")) == "1 ACK"

    def test_cseq_limits(self) -> None:
        assert parse_cseq("4294967295 REGISTER").number == 2**32 - 1
        assert (
            str(raises(parse_cseq, "4294967296 REGISTER")) == "Bad CSeq header: value out of range"
        )
        assert str(raises(parse_cseq, "36893488147419103232 REGISTER")).endswith("out of range")

    @pytest.mark.parametrize("value", ["", "INVITE", "12", "-1 INVITE", "1 IN VITE", "1 INV<ITE"])
    def test_cseq_malformed(self, value: str) -> None:
        assert str(raises(parse_cseq, value)) == "Bad CSeq header: malformed"

    def test_parse_uint(self) -> None:
        assert parse_uint(" 0068 ", header="Max-Forwards", maximum=255) == 68
        assert parse_uint("0" * 50 + "7", header="Max-Forwards", maximum=255) == 7
        cases = [
            ("256", "value out of range"),
            ("-1", "negative value"),
            ("", "not a number"),
            ("7a", "not a number"),
            ("\u0661", "not a number"),  # a digit, but not an ASCII one
            ("9" * 5000, "value out of range"),
        ]
        for value, detail in cases:
            err = raises(parse_uint, value, header="Max-Forwards", maximum=255)
            assert str(err) == f"Bad Max-Forwards header: {detail}"
