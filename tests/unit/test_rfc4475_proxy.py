"""RFC 4475 torture messages fed, as they are, to the proxy: what goes back on the wire.

The parser-level test (test_rfc4475.py) checks what the parser makes of each file; this
one checks the behaviour the MANIFEST asks of a proxy/registrar: the answer code, or
silence for what must be dropped, and never an exception.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.proxy.location import Location
from gateway.proxy.registrar import Registrar
from gateway.sip.message import Request, Response, parse_message
from gateway.transport.addresses import Source
from tests.conformance import rfc4475_bytes, rfc4475_manifest

from .proxy_harness import Harness, settings_from

CONFIG = """
[node]
name = "torture"

[sip]
listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]

[[tenants]]
id = "example"
name = "Example"
domains = ["example.com"]

[[tenants.users]]
username = "watson"
extension = "100"
password = "Watson-pw-123!"

[[tenants.users]]
username = "user"
extension = "101"
password = "User-pw-1234!"
"""

# What the proxy answers, per file: a status code, None for "nothing is sent", or
# "processed" for valid requests (any answer a routing proxy gives, never a parse error).
EXPECTED: dict[str, int | str | None] = {
    # valid
    "wsinv.dat": "processed",
    "intmeth.dat": "processed",
    "esc01.dat": "processed",
    "escnull.dat": "processed",
    "esc02.dat": "processed",
    "lwsdisp.dat": "processed",
    "longreq.dat": "processed",
    "dblreq.dat": "processed",
    "semiuri.dat": "processed",
    "transports.dat": "processed",
    "mpart01.dat": "processed",
    "unreason.dat": None,
    "noreason.dat": None,  # responses matching no transaction
    # invalid
    "badinv01.dat": 400,
    "clerr.dat": 400,
    "ncl.dat": 400,
    "scalar02.dat": 400,
    "scalarlg.dat": None,
    "quotbal.dat": 400,
    "ltgtruri.dat": 400,
    "lwsruri.dat": 400,
    "lwsstart.dat": 400,
    "trws.dat": 400,
    "escruri.dat": 400,
    "baddate.dat": "processed",
    "regbadct.dat": 400,
    "badaspec.dat": 400,
    "baddn.dat": 400,
    "badvers.dat": 505,
    "mismatch01.dat": 400,
    "mismatch02.dat": 501,
    "bigcode.dat": None,
    # semantic / application layer
    "badbranch.dat": "processed",
    "insuf.dat": 400,
    "unkscm.dat": 416,
    "novelsc.dat": 416,
    "unksm2.dat": 400,
    "bext01.dat": 420,
    "invut.dat": "processed",
    "regaut01.dat": 401,
    "multi01.dat": 400,
    "mcl01.dat": 400,
    "bcast.dat": None,
    "zeromf.dat": 483,
    "cparam01.dat": 401,
    "cparam02.dat": 401,
    "regescrt.dat": 401,
    "sdp01.dat": "processed",
    # backward compatibility
    "inv2543.dat": "processed",
}
PARSE_ERRORS = {400, 413, 416, 420, 501, 505}


def manifest() -> tuple[dict[str, str], ...]:
    """The checked manifest of tests/conformance/rfc4475: missing data fails, never skips."""
    return rfc4475_manifest()


def test_every_manifest_row_has_an_expectation() -> None:
    assert sorted(row["file"] for row in manifest()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_proxy_answers_torture_message(name: str, tmp_path: Path) -> None:
    manifest()
    h = Harness(settings_from(CONFIG, tmp_path))
    data = rfc4475_bytes(name)
    sent = h.feed(data, ("192.0.2.10", 5060))
    answers = [s.msg.status for s in sent if isinstance(s.msg, Response) and s.msg.status >= 200]
    forwarded = [s for s in sent if isinstance(s.msg, Request)]
    expected = EXPECTED[name]
    if expected is None:
        assert sent == [], f"{name}: must be dropped, sent {[s.data[:60] for s in sent]}"
    elif expected == "processed":
        assert answers or forwarded, f"{name}: no answer at all"
        assert not set(answers) & PARSE_ERRORS, f"{name}: valid message refused with {answers}"
    else:
        assert answers == [expected], f"{name}: expected {expected}, got {answers}"


def test_bext01_lists_every_unsupported_proxy_require_tag(tmp_path: Path) -> None:
    h = Harness(settings_from(CONFIG, tmp_path))
    sent = h.feed(rfc4475_bytes("bext01.dat"), ("192.0.2.10", 5060))
    resp = sent[-1].msg
    assert isinstance(resp, Response) and resp.status == 420
    assert resp.get("Unsupported") == "noProxiesSupportThis, norDoAnyProxiesSupportThis"


def test_bcast_response_is_never_sent_to_broadcast(tmp_path: Path) -> None:
    h = Harness(settings_from(CONFIG, tmp_path))
    h.feed(rfc4475_bytes("bcast.dat"), ("192.0.2.198", 5060))
    assert all(s.target.host != "255.255.255.255" for s in h.transport.sent)


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        # unknownparam is a Contact header parameter: not part of the stored URI
        ("cparam01.dat", "sip:+19725552222@gw1.example.net"),
        # here it is inside <>: a URI parameter, kept
        ("cparam02.dat", "sip:+19725552222@gw1.example.net;unknownparam"),
        # the escaped Route header stays in the stored Contact URI
        ("regescrt.dat", "sip:user@example.com?Route=%3Csip:sip.example.com%3E"),
    ],
)
def test_registrar_stores_contacts_as_rfc4475_says(name: str, stored: str, tmp_path: Path) -> None:
    """The registrar step itself (authentication is the proxy's and tested elsewhere)."""
    manifest()
    settings = settings_from(CONFIG, tmp_path)
    tenant = settings.tenants[0]
    req = parse_message(rfc4475_bytes(name))
    assert isinstance(req, Request)
    req.validate()
    user = tenant.users[0] if "watson" in (req.get("To") or "") else tenant.users[1]
    location = Location()
    reply = Registrar(location, settings.sip).register(
        req, tenant, user, Source("udp", ("192.0.2.10", 5060), ("127.0.0.1", 5060)), 0.0
    )
    assert reply.status == 200
    assert [b.contact_uri for b in location.bindings(tenant.id, user.extension, 0.0)] == [stored]
