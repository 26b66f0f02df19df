"""gateway.sip.uri: SIP/SIPS/tel/absolute URIs (RFC 3261 §19.1, §25.1; RFC 3966)."""

from __future__ import annotations

import pytest

from gateway.sip.errors import SIPParseError
from gateway.sip.uri import AbsoluteURI, SipURI, TelURI, parse_host, parse_uri


def sip(text: str) -> SipURI:
    uri = parse_uri(text)
    assert isinstance(uri, SipURI)
    return uri


class TestSipURIParsing:
    def test_all_parts(self) -> None:
        uri = sip(
            "SIP:alice:secret@Atlanta.Example.COM:5070;Transport=TCP;lr?Subject=hi&Priority=urgent"
        )
        assert uri.scheme == "sip"
        assert uri.user == "alice"
        assert uri.password == "secret"
        assert uri.host == "atlanta.example.com"
        assert uri.port == 5070
        assert uri.params == {"transport": "TCP", "lr": None}
        assert uri.headers == {"Subject": "hi", "Priority": "urgent"}
        assert uri.transport == "tcp"
        assert uri.lr is True
        assert uri.host_port == "atlanta.example.com:5070"

    def test_host_only(self) -> None:
        uri = sip("sip:example.com")
        assert (uri.user, uri.password, uri.port, uri.params, uri.headers) == (
            None,
            None,
            None,
            {},
            {},
        )
        assert uri.host_port == "example.com"
        assert uri.aor == "sip:example.com"

    def test_default_transport_depends_on_scheme(self) -> None:
        assert sip("sip:a@example.com").transport == "udp"
        assert sip("sips:a@example.com").transport == "tls"
        assert sip("sips:a@example.com;transport=tcp").transport == "tcp"

    def test_ipv6_reference_kept_in_brackets(self) -> None:
        uri = sip("sip:bob@[2001:DB8::10]:5062;maddr=[2001:db8::1]")
        assert uri.host == "[2001:db8::10]"
        assert uri.port == 5062
        assert uri.maddr == "[2001:db8::1]"
        assert sip("sip:[::1]").host == "[::1]"
        assert str(uri) == "sip:bob@[2001:db8::10]:5062;maddr=[2001:db8::1]"

    def test_ipv4_host(self) -> None:
        uri = sip("sip:192.0.2.4:5060")
        assert (uri.host, uri.port) == ("192.0.2.4", 5060)

    def test_aor_drops_port_params_and_password(self) -> None:
        uri = sip("sips:Bob:pw@Biloxi.com:5061;transport=tcp?x=y")
        assert uri.aor == "sips:Bob@biloxi.com"

    def test_user_part_may_hold_user_unreserved_characters(self) -> None:
        # RFC 4475 §3.1.1.2 (intmeth): ';', '?', '/', ',' belong to the user part.
        uri = sip(
            "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,"
            "weird!*pas$wo~d_too.(doesn't-it)@example.com"
        )
        assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
        assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
        assert uri.host == "example.com"
        assert uri.params == {}

    def test_semicolon_parameters_in_user_part(self) -> None:
        # RFC 4475 §3.1.1.9 (semiuri)
        uri = sip("sip:user;par=u%40example.net@example.com")
        assert uri.user == "user;par=u@example.net"
        assert uri.host == "example.com"
        assert uri.params == {}
        assert str(uri) == "sip:user;par=u%40example.net@example.com"

    def test_keypad_hash_is_accepted_in_user_and_escaped_on_output(self) -> None:
        uri = sip("sip:*21#@pbx.example.com")
        assert uri.user == "*21#"
        assert str(uri) == "sip:*21%23@pbx.example.com"


class TestEscaping:
    def test_unescape_exactly_once(self) -> None:
        # RFC 4475 §3.1.1.3 (esc01): n%61me=v%61lue%25%34%31 is name=value%41
        uri = sip("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31")
        assert uri.user == "caller"
        assert uri.params == {"lr": None, "name": "value%41"}
        assert uri.lr

    def test_escaped_reserved_characters_stay_in_user(self) -> None:
        uri = sip("sip:sips%3Auser%40example.com@example.net")
        assert uri.user == "sips:user@example.com"
        assert uri.host == "example.net"
        assert str(uri) == "sip:sips%3Auser%40example.com@example.net"

    def test_escaped_nulls_are_not_truncated(self) -> None:
        # RFC 4475 §3.1.1.4 (escnull)
        one, two = sip("sip:%00@host5.example.com"), sip("sip:%00%00@host5.example.com")
        assert one.user == "\x00"
        assert two.user == "\x00\x00"
        assert not one.equivalent(two)
        assert str(two) == "sip:%00%00@host5.example.com"

    def test_escaped_header_in_uri(self) -> None:
        # RFC 4475 §3.3.14 (regescrt)
        uri = sip("sip:user@example.com?Route=%3Csip:sip.example.com%3E")
        assert uri.headers == {"Route": "<sip:sip.example.com>"}
        assert str(uri) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"

    def test_str_escapes_what_the_part_does_not_allow(self) -> None:
        uri = SipURI("sip", "I have spaces", None, "example.net", None, {"x": "a b"}, {})
        assert str(uri) == "sip:I%20have%20spaces@example.net;x=a%20b"
        assert sip(str(uri)) == uri

    def test_str_of_unescaped_value_round_trips(self) -> None:
        text = "sip:%75se%72@example.com;n%61me=v%61lue%25%34%31"
        uri = sip(text)
        assert str(uri) == "sip:user@example.com;name=value%2541"
        assert sip(str(uri)) == uri
        assert sip(str(uri)).equivalent(uri)

    def test_utf8_escapes_decode_to_text(self) -> None:
        assert sip("sip:%C3%A9mile@example.com").user == "\u00e9mile"
        assert str(sip("sip:%C3%A9mile@example.com")) == "sip:%C3%A9mile@example.com"

    @pytest.mark.parametrize(
        "text",
        [
            "sip:us%er@example.com",  # '%' not followed by two hex digits in user
            "sip:user%4@example.com",
            "sip:user:pa%zzword@example.com",
            "sip:user@example.com;na%me=v",
            "sip:user@example.com;name=v%G1",
            "sip:user@example.com?Route=%3",
        ],
    )
    def test_percent_that_is_not_an_escape_is_an_error_in_escapable_parts(self, text: str) -> None:
        with pytest.raises(SIPParseError) as info:
            parse_uri(text)
        assert info.value.status == 400
        assert str(info.value).startswith("Bad URI: ")


class TestEquivalence:
    """The examples of RFC 3261 §19.1.4."""

    @pytest.mark.parametrize(
        ("a", "b"),
        [
            ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
            ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
            ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
            ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
            (
                "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
                "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
            ),
            (
                "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
                "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
            ),
        ],
    )
    def test_equivalent(self, a: str, b: str) -> None:
        assert sip(a).equivalent(sip(b))
        assert sip(b).equivalent(sip(a))

    @pytest.mark.parametrize(
        ("a", "b"),
        [
            ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
            ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
            ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
            ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
            ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
            ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
            ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
            ("sip:alice@atlanta.com", "sips:alice@atlanta.com"),
        ],
    )
    def test_not_equivalent(self, a: str, b: str) -> None:
        assert not sip(a).equivalent(sip(b))
        assert not sip(b).equivalent(sip(a))

    def test_other_kinds_are_never_equivalent_to_sip(self) -> None:
        assert not sip("sip:a@b.example").equivalent(parse_uri("tel:+1234"))
        assert not sip("sip:a@b.example").equivalent("sip:a@b.example")


class TestOtherSchemes:
    def test_tel_uri(self) -> None:
        uri = parse_uri("tel:+1-201-555-0123;Ext=42;phone-context=example.com")
        assert isinstance(uri, TelURI)
        assert uri.number == "+1-201-555-0123"
        assert uri.global_ is True
        assert uri.digits == "+12015550123"
        assert uri.params == {"ext": "42", "phone-context": "example.com"}
        assert str(uri) == "tel:+1-201-555-0123;ext=42;phone-context=example.com"

    def test_local_tel_uri(self) -> None:
        uri = parse_uri("tel:7042;phone-context=example.com")
        assert isinstance(uri, TelURI)
        assert uri.global_ is False
        assert uri.equivalent(parse_uri("tel:70-42;phone-context=EXAMPLE.com"))

    @pytest.mark.parametrize(
        ("text", "scheme"),
        [
            ("nobodyKnowsThisScheme:totallyopaquecontent", "nobodyknowsthisscheme"),
            ("soap.beep://192.0.2.103:3002", "soap.beep"),
            ("isbn:2983792873", "isbn"),
            ("http://www.example.com", "http"),
            ("urn:service:sos", "urn"),
        ],
    )
    def test_absolute_uri_kept_raw(self, text: str, scheme: str) -> None:
        uri = parse_uri(text)
        assert isinstance(uri, AbsoluteURI)
        assert uri.scheme == scheme
        assert uri.raw == text
        assert str(uri) == text

    @pytest.mark.parametrize("text", ["tel:", "tel:+", "tel:12 34", "tel:+1-abc"])
    def test_bad_tel(self, text: str) -> None:
        with pytest.raises(SIPParseError):
            parse_uri(text)


class TestErrors:
    @pytest.mark.parametrize(
        ("text", "detail"),
        [
            ("", "missing or invalid scheme"),
            ("example.com", "missing or invalid scheme"),
            ("<sip:user@example.com>", "missing or invalid scheme"),
            ("1sip:user@example.com", "missing or invalid scheme"),
            ("sip:", "invalid host"),
            ("sip:user@", "invalid host"),
            ("sip:@example.com", "empty or invalid user part"),
            ("sip:user@exa mple.com", "URI contains whitespace"),
            (" sip:user@example.com", "URI contains whitespace"),
            ("sip:user@example.com ", "URI contains whitespace"),
            ("sip:user@example.com:", "invalid port"),
            ("sip:user@example.com:70000", "port out of range"),
            ("sip:user@example.com:5060x", "invalid port"),
            ("sip:user@[2001:db8::1", "invalid IPv6 reference"),
            ("sip:user@[2001:db8::zz]", "invalid IPv6 reference"),
            ("sip:user@[1:2:3:4:5:6:7:8:9]", "invalid IPv6 reference"),
            ("sip:user@example.com;;lr", "empty parameter"),
            ("sip:user@example.com;lr;", "empty parameter"),
            ("sip:user@example.com;a=", "invalid parameter value"),
            ("sip:user@example.com;a=<b>", "invalid parameter value"),
            ("sip:user@example.com?Route", "invalid header in URI"),
            ('sip:us"er@example.com', "empty or invalid user part"),
            ("sip:user@exam\x00ple.com", "invalid host"),
            ("http:<x>", "invalid http URI"),
            ("urn:", "invalid urn URI"),
        ],
    )
    def test_rejected(self, text: str, detail: str) -> None:
        with pytest.raises(SIPParseError) as info:
            parse_uri(text)
        assert info.value.status == 400
        assert info.value.detail == detail
        assert str(info.value) == f"Bad URI: {detail}"

    def test_parse_host(self) -> None:
        assert parse_host("Example.COM:5060") == ("example.com", 5060)
        assert parse_host("[::1]") == ("[::1]", None)
        with pytest.raises(SIPParseError):
            parse_host("exa$mple.com")


class TestValueSemantics:
    def test_frozen_and_replace(self) -> None:
        uri = sip("sip:alice@example.com:5060;transport=tcp")
        moved = uri.replace(host="192.0.2.1", port=None)
        assert str(moved) == "sip:alice@192.0.2.1;transport=tcp"
        assert str(uri) == "sip:alice@example.com:5060;transport=tcp"
        with pytest.raises(AttributeError):
            uri.host = "x"  # type: ignore[misc]

    def test_hashable_and_equal_by_value(self) -> None:
        a, b = sip("sip:alice@example.com;lr"), sip("sip:alice@EXAMPLE.com;LR")
        assert a == b
        assert len({a, b}) == 1

    def test_constructed_uri(self) -> None:
        uri = SipURI(scheme="sips", user="bob", host="biloxi.example.com", port=5061)
        assert str(uri) == "sips:bob@biloxi.example.com:5061"
        assert uri.transport == "tls"
