"""Phone profiles chosen by User-Agent (issue #15 part 5): which profile, in which order
of precedence, and that a claimed User-Agent changes the challenge offered but never what
a credential must prove."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.config import Profile, Tenant, User, load_profiles
from gateway.config.loader import DEFAULT_PROFILES_DIR
from gateway.config.model import MAX_USER_AGENT
from gateway.proxy.location import Binding
from gateway.proxy.ua_profiles import PhoneProfiles
from gateway.sip.digest import DigestClient
from gateway.sip.message import Response, parse_message
from gateway.transport.addresses import Source

from .proxy_harness import CONFIG, PASSWORDS, Harness, request, settings_from

SHIPPED = load_profiles(DEFAULT_PROFILES_DIR, "profiles_dir")
PHONE = ("127.0.0.1", 5201)
OTHER_PHONE = ("127.0.0.1", 5299)


@pytest.mark.parametrize(
    ("user_agent", "profile"),
    [
        ("baresip v1.0.0 (x86_64/linux)", "baresip"),
        ("sipp", "sipp"),
        ("Linphonec/5.1.65 (belle-sip/5.1.0)", "linphone"),
        ("LinphoneAndroid/5.2.5 (Pixel 7) LinphoneSDK/5.3.0", "linphone"),
        ("PJSUA v2.15.1 Linux-6.1/x86_64/glibc-2.36", "pjsua"),
        ("acme-dialer PJSIP/2.14", "pjsua"),
        ("MicroSIP/3.21.3", "microsip"),
        ("Z 5.6.1 v2.10.19.6", "zoiper"),
        ("Zoiper rv2.8.124", "zoiper"),
        ("Yealink SIP-T46S 66.86.0.15", "yealink"),
        ("Grandstream GXP2170 1.0.11.3", "grandstream"),
        ("snom D785/10.1.73.16", "snom"),
        ("snom370/8.7.5.35", "snom"),
        ("PolycomVVX-VVX_411-UA/6.4.3.5018", "polycom"),
        ("PolyEdge-E450-UA/8.0.1.0000", "polycom"),
        ("Cisco/SPA504G-7.6.2b", "cisco-spa"),
        ("Cisco-SPA112/1.4.1", "cisco-spa"),
        ("Linksys/SPA942-6.1.5(a)", "cisco-spa"),
        ("Asterisk PBX 20.5.0", None),
        ("NOTPJSIP/1.0", None),  # a pattern matches where a word starts, not inside one
        ("my sipp clone", None),  # "^sipp": only at the start
    ],
)
def test_shipped_patterns_recognize_their_phones(user_agent: str, profile: str | None) -> None:
    chosen = PhoneProfiles(SHIPPED).by_user_agent(user_agent)
    assert (chosen.name if chosen else None) == profile


def test_every_shipped_phone_profile_says_where_its_behaviour_comes_from() -> None:
    for name in ("microsip", "zoiper", "yealink", "grandstream", "snom", "polycom", "cisco-spa"):
        text = (DEFAULT_PROFILES_DIR / f"{name}.toml").read_text()
        assert "digest_algorithms" in text and "auto_answer" in text
        assert text.count("#") >= 5, f"{name}.toml documents its sources in comments"


def test_only_the_first_characters_of_a_header_are_looked_at() -> None:
    profiles = PhoneProfiles(SHIPPED)
    assert profiles.by_user_agent("x" * (MAX_USER_AGENT - 7) + " PJSIP") is not None
    assert profiles.by_user_agent("x" * MAX_USER_AGENT + " PJSIP") is None


def test_a_hostile_header_costs_no_more_than_a_short_one() -> None:
    # Literal patterns over a bounded prefix: no input makes matching backtrack.
    profiles = PhoneProfiles(SHIPPED, memo_size=1)
    hostile = [("Poly" * 300_000), ("a " * 500_000), ("Z " + "5" * 10**6), "\x00" * 10**6]
    start = time.perf_counter()
    for i in range(200):
        for text in hostile:
            profiles.by_user_agent(f"{i}{text}")
    assert time.perf_counter() - start < 2.0


def test_the_memo_of_user_agents_is_bounded() -> None:
    profiles = PhoneProfiles(SHIPPED, memo_size=8)
    for i in range(1000):
        profiles.by_user_agent(f"Yealink SIP-T46S 66.86.0.{i}")
    assert profiles._matched.cache_info().currsize == 8  # type: ignore[attr-defined]


# -- precedence ------------------------------------------------------------------------
TENANT = Tenant(id="acme", name="Acme", domains=("acme.test",))
NAMELESS = User.from_password("201", "201", "acme.test", "Secret-201-pw!")
NAMED = User.from_password("202", "202", "acme.test", "Secret-202-pw!", profile="linphone")


def binding(source: tuple[str, int], user_agent: str) -> Binding:
    return Binding(
        contact_uri=f"sip:201@{source[0]}:{source[1]}", q=1.0, expires_at=9e9, call_id="c",
        cseq=1, source=Source("udp", source, ("127.0.0.1", 5060)), behind_nat=False,
        user_agent=user_agent,
    )  # fmt: skip


def choose(user: User, user_agent: str | None, *bindings: Binding, tenant: Tenant = TENANT) -> str:
    source = Source("udp", PHONE, ("127.0.0.1", 5060))
    req = request("OPTIONS", "sip:acme.test", src=PHONE, extra=f"User-Agent: {user_agent}")
    if user_agent is None:
        req = req.replace("User-Agent: None\r\n", "")
    msg = parse_message(req.encode())
    return PhoneProfiles(SHIPPED).for_message(tenant, user, msg, source, lambda: bindings).name


def test_a_named_profile_always_wins() -> None:
    assert choose(NAMED, "baresip v1.0.0 (x86_64/linux)") == "linphone"
    assert choose(NAMED, None, binding(PHONE, "sipp")) == "linphone"


def test_a_user_without_one_gets_what_the_user_agent_says() -> None:
    assert choose(NAMELESS, "baresip v1.0.0 (x86_64/linux)") == "baresip"
    assert choose(NAMELESS, "Yealink SIP-T46S 66.86.0.15") == "yealink"


def test_without_a_header_the_registration_from_that_source_decides() -> None:
    mine, other = binding(PHONE, "sipp"), binding(OTHER_PHONE, "Yealink SIP-T46S 66.86.0.15")
    assert choose(NAMELESS, None, other, mine) == "sipp"
    # Another device of the same user is not the one asking.
    assert choose(NAMELESS, None, other) == "generic-phone"


def test_an_unknown_user_agent_gets_the_tenants_default() -> None:
    assert choose(NAMELESS, "Asterisk PBX 20.5.0") == "generic-phone"
    legacy = Tenant(
        id="old", name="Old", domains=("old.test",), default_phone_profile="md5-first-phone"
    )
    assert choose(NAMELESS, "Asterisk PBX 20.5.0", tenant=legacy) == "md5-first-phone"
    assert choose(NAMELESS, "baresip v1.0.0", tenant=legacy) == "baresip"


def test_towards_a_phone_the_first_bindings_user_agent_decides() -> None:
    profiles = PhoneProfiles(SHIPPED)
    desk = binding(PHONE, "snom D785/10.1.73.16")
    assert profiles.for_bindings(TENANT, NAMELESS, [desk]).name == "snom"
    assert profiles.for_bindings(TENANT, NAMED, [desk]).name == "linphone"
    assert profiles.for_bindings(TENANT, NAMELESS, []).name == "generic-phone"


def test_the_default_profile_offers_sha256_first_and_md5_first_is_shipped() -> None:
    assert SHIPPED["generic-phone"].digest_algorithms == ("SHA-256", "MD5")
    assert SHIPPED["md5-first-phone"].digest_algorithms == ("MD5", "SHA-256")
    assert not SHIPPED["md5-first-phone"].user_agent_patterns


# -- through the proxy: the challenge changes, what is enforced does not ------------------
NO_PROFILES = CONFIG.replace('profile = "legacy-md5"\n', "")


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(settings_from(NO_PROFILES, tmp_path))


def register_request(user_agent: str | None, *, cseq: int = 1, extra: str = "") -> str:
    headers = (f"User-Agent: {user_agent}\n" if user_agent else "") + extra
    return request(
        "REGISTER", "sip:acme.test", src=PHONE, from_="<sip:201@acme.test>;tag=r1",
        to="<sip:201@acme.test>", call_id="reg-ua", cseq=cseq,
        extra=headers + "\nSupported: path, gruu, outbound\nAllow: INVITE, ACK, CANCEL, BYE",
    )  # fmt: skip


def challenge_algorithms(h: Harness, user_agent: str | None) -> list[str]:
    sent = h.feed(register_request(user_agent), PHONE)
    (resp,) = [s.msg for s in sent]
    assert isinstance(resp, Response) and resp.status == 401
    return [c.split("algorithm=")[1].split(",")[0] for c in resp.get_all("WWW-Authenticate")]


def test_the_challenge_follows_the_user_agent(h: Harness) -> None:
    assert challenge_algorithms(h, "baresip v1.0.0 (x86_64/linux)") == ["MD5"]
    assert challenge_algorithms(h, "Linphonec/5.1.65") == ["SHA-256", "MD5"]
    assert challenge_algorithms(h, "Asterisk PBX 20.5.0") == ["SHA-256", "MD5"]


def registered_with(h: Harness, user_agent: str, password: str, algorithm: str) -> int:
    sent = h.feed(register_request(user_agent), PHONE)
    challenges = sent[0].msg.get_all("WWW-Authenticate")
    assert challenges, "a claimed User-Agent never skips the challenge"
    # A client may answer any challenge the verifier accepts: build one for `algorithm`.
    challenge = challenges[0].replace(challenges[0].split("algorithm=")[1].split(",")[0], algorithm)
    auth = DigestClient("201", password).authorization(challenge, "REGISTER", "sip:acme.test")
    retry = register_request(user_agent, cseq=2, extra=f"Authorization: {auth}\n")
    (resp,) = [s.msg for s in h.feed(retry, PHONE)]
    assert isinstance(resp, Response)
    return resp.status


def test_claiming_an_md5_phone_gains_nothing(h: Harness) -> None:
    weak = "baresip v1.0.0 (x86_64/linux)"
    assert registered_with(h, weak, "not-the-password", "MD5") == 401
    assert h.proxy.location.bindings("acme", "201", h.clock.now) == []
    assert h.counters.auth_failures["bad_credentials"] == 1
    assert registered_with(h, weak, PASSWORDS["201"], "MD5") == 200


def test_a_profile_never_narrows_what_the_verifier_accepts(h: Harness) -> None:
    # Offered MD5 alone, a phone answering SHA-256 with the right password is still in:
    # the profile changes interop, not the rules.
    assert registered_with(h, "sipp", PASSWORDS["201"], "SHA-256") == 200


def test_the_registration_keeps_the_user_agent_that_chose(h: Harness) -> None:
    assert registered_with(h, "sipp", PASSWORDS["201"], "MD5") == 200
    (b,) = h.proxy.location.bindings("acme", "201", h.clock.now)
    assert b.user_agent == "sipp"
    # An INVITE without a User-Agent from that phone is challenged as sipp: MD5 alone.
    invite = request(
        "INVITE", "sip:202@acme.test", src=PHONE, from_="<sip:201@acme.test>;tag=i1",
        extra="Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, REFER, NOTIFY\nSupported: replaces",
    )  # fmt: skip
    (resp,) = [s.msg for s in h.feed(invite, PHONE)]
    assert isinstance(resp, Response) and resp.status == 407
    assert [c.split("algorithm=")[1][:3] for c in resp.get_all("Proxy-Authenticate")] == ["MD5"]


def test_profiles_are_a_choice_among_loaded_ones() -> None:
    # Every profile the chooser can return is one of the loaded ones, or the stand-in.
    profiles = PhoneProfiles(SHIPPED)
    assert isinstance(profiles.default(TENANT), Profile)
    gone = Tenant(id="x", name="X", domains=("x.test",), default_phone_profile="removed")
    assert profiles.default(gone) == Profile(name="removed", kind="phone")
