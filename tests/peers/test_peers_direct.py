"""Validate every peer driver against another real peer, directly (no proxy in between).

These tests pin down the harness the gateway tests are built on: if one fails, the driver
or the peer is broken, not the gateway.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.peers.baresip import Baresip
from tests.peers.linphone import Linphone
from tests.peers.pjsua import PjsuaAgent
from tests.peers.process import PeerError
from tests.peers.sipp import run_pair, run_sipp, scenario, start_sipp
from tests.peers.tls import make_self_signed

pytestmark = [pytest.mark.peers, pytest.mark.timeout(90)]

T = 5.0  # generous bound for one step on loopback


# -- sipp ↔ sipp ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
async def test_sipp_uac_uas_50_calls(transport: str) -> None:
    pair = await run_pair("uac", "uas", calls=50, transport=transport, rate=100,
                          uac_args=["-d", "20"])
    pair.uac.check(calls=50)
    pair.uas.check(calls=50)
    assert pair.uac.created == 50
    assert pair.uac.unexpected == 0


@pytest.mark.parametrize(
    ("uac", "uas"),
    [
        ("uac_cancel", "uas_ring_no_answer"),
        ("uac_busy", "uas_busy"),
        ("uac_expect_bye", "uas_bye"),
        ("options_uac", "options_uas"),
    ],
)
@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
async def test_sipp_scenario_pairs(uac: str, uas: str, transport: str) -> None:
    pair = await run_pair(uac, uas, calls=5, transport=transport, uac_args=["-d", "50"],
                          uas_args=["-d", "50"])
    pair.uac.check(calls=5)
    pair.uas.check(calls=5)


async def test_sipp_ipv6_loopback() -> None:
    pair = await run_pair("uac", "uas", calls=5, host="::1", uac_args=["-d", "20"])
    pair.uac.check(calls=5)
    pair.uas.check(calls=5)


async def test_sipp_options_503() -> None:
    async with await start_sipp(["-sf", scenario("options_uas_503"), "-m", "3"]) as uas:
        ok = await run_sipp(["-sf", scenario("options_uac_503"), uas.uri_host, "-m", "3"],
                            timeout=15)
        ok.check(calls=3)
        (await uas.wait(10)).check(calls=3)


async def test_sipp_register_digest() -> None:
    keys = {"auth_user": "201", "auth_password": "Secr3t!x", "realm": "acme.test"}
    async with await start_sipp(["-sf", scenario("register_uas"), "-m", "3"], keys=keys) as uas:
        result = await run_sipp(
            ["-sf", scenario("register_uac"), uas.uri_host, "-s", "201", "-m", "3",
             "-au", "201", "-ap", "Secr3t!x"],
            timeout=15, keys={"domain": "acme.test"},
        )
        result.check(calls=3)
        (await uas.wait(10)).check(calls=3)


async def test_sipp_register_wrong_password_fails() -> None:
    async with await start_sipp(["-sf", scenario("register_uas"), "-m", "1"],
                                keys={"auth_password": "right"}) as uas:
        result = await run_sipp(
            ["-sf", scenario("register_uac"), uas.uri_host, "-m", "1", "-au", "sipp",
             "-ap", "wrong"], timeout=15)
        assert result.returncode == 1 and result.failed == 1, result.describe()
        assert (await uas.wait(10)).failed == 1


# -- pjsua ↔ pjsua -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pair = make_self_signed(tmp_path_factory.mktemp("tls"))
    return pair.cert, pair.key


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_pjsua_calls_pjsua(transport: str, tls_cert: tuple[Path, Path]) -> None:
    cert, key = tls_cert
    tls = {"tls_cert": cert, "tls_key": key} if transport == "tls" else {}
    async with (
        await PjsuaAgent.start("alice", transport=transport, **tls) as alice,
        await PjsuaAgent.start("bob", transport=transport, **tls) as bob,
    ):
        call = await alice.call(bob.contact_for("bob"))
        incoming = await bob.wait_incoming(T)
        assert "alice" in incoming["from"]
        assert incoming["headers"]["call-id"] == [incoming["sip_call_id"]]
        await alice.wait_call_state(call, "EARLY", T)  # B rings (180) until told to answer
        await bob.answer(incoming["call"])
        confirmed = await alice.wait_call_state(call, "CONFIRMED", T)
        assert confirmed["code"] == 200
        await bob.wait_call_state(incoming["call"], "CONFIRMED", T)
        assert f"transport={transport}" in confirmed["remote_contact"].lower() or (
            transport == "udp")

        await alice.hold(call)
        await bob.wait_media(incoming["call"], "remote_hold", T)
        mark = len(bob.events)
        await alice.unhold(call)
        await bob.wait_event(
            lambda e: e["event"] == "media_state" and e["call"] == incoming["call"]
            and e["media"][0]["status_name"] == "active", T, start=mark, what="unhold")

        await alice.hangup(call)
        await alice.wait_call_state(call, "DISCONNECTED", T)
        ended = await bob.wait_call_state(incoming["call"], "DISCONNECTED", T)
        assert ended["rx_start_line"].startswith("BYE ")


async def test_pjsua_tls_verifies_server_with_ca(tls_cert: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    """With tls_ca the client verifies the server certificate (made by tls.py, valid for
    127.0.0.1): the right CA connects, a wrong one is refused."""
    cert, key = tls_cert
    other = make_self_signed(tmp_path / "other", name="other")
    async with (
        await PjsuaAgent.start("srv", transport="tls", tls_cert=cert, tls_key=key,
                               auto_answer=200) as srv,
        await PjsuaAgent.start("good", transport="tls", tls_ca=cert) as good,
        await PjsuaAgent.start("bad", transport="tls", tls_ca=other.cert) as bad,
    ):
        call = await good.call(srv.contact_for("srv"))
        await good.wait_call_state(call, "CONFIRMED", T)
        await good.hangup(call)
        call = await bad.call(srv.contact_for("srv"))
        ended = await bad.wait_call_state(call, "DISCONNECTED", T)
        assert ended["code"] >= 500, ended


async def test_pjsua_auto_answer_and_reject() -> None:
    async with (
        await PjsuaAgent.start("alice") as alice,
        await PjsuaAgent.start("bob", auto_answer=200) as bob,
    ):
        call = await alice.call(bob.contact_for("bob"))
        await alice.wait_call_state(call, "CONFIRMED", T)
        await bob.hangup((await bob.wait_incoming(T))["call"])  # callee hangs up
        await alice.wait_call_state(call, "DISCONNECTED", T)

        bob.auto_answer = 486
        call = await alice.call(bob.contact_for("bob"))
        with pytest.raises(PeerError, match="486"):
            await alice.wait_call_state(call, "CONFIRMED", T)
        assert alice.call_states(call)[-1]["code"] == 486


async def test_pjsua_honors_auto_answer_headers() -> None:
    """The received INVITE's headers reach the test, and a phone configured to honor
    Call-Info answer-after answers by itself (as the click-to-dial profile expects)."""
    async with (
        await PjsuaAgent.start("alice") as alice,
        await PjsuaAgent.start("bob", honor_auto_answer_headers=True) as bob,
    ):
        call = await alice.call(bob.contact_for("bob"), headers={
            "Call-Info": "<sip:127.0.0.1>;answer-after=0",
            "Alert-Info": "<http://127.0.0.1/>;info=alert-autoanswer",
        })
        incoming = await bob.wait_incoming(T)
        assert incoming["headers"]["call-info"] == ["<sip:127.0.0.1>;answer-after=0"]
        assert "alert-autoanswer" in incoming["headers"]["alert-info"][0]
        await alice.wait_call_state(call, "CONFIRMED", T)
        await alice.hangup(call)
        await bob.wait_call_state(incoming["call"], "DISCONNECTED", T)


async def test_pjsua_blind_transfer() -> None:
    """alice calls bob; bob REFERs alice to carol; alice calls carol."""
    async with (
        await PjsuaAgent.start("alice") as alice,
        await PjsuaAgent.start("bob", auto_answer=200) as bob,
        await PjsuaAgent.start("carol", auto_answer=200) as carol,
    ):
        call = await alice.call(bob.contact_for("bob"))
        await alice.wait_call_state(call, "CONFIRMED", T)
        at_bob = (await bob.wait_incoming(T))["call"]
        await bob.wait_call_state(at_bob, "CONFIRMED", T)
        await bob.transfer(at_bob, carol.contact_for("carol"))
        refer = await alice.wait_transfer_request(T)
        assert refer["uri"].startswith(carol.contact_for("carol").split(";")[0].rstrip(">"))
        await alice.wait_call_state(refer["new_call"], "CONFIRMED", T)
        status = await bob.wait_transfer_status(at_bob, final=True, timeout=T)
        assert status["code"] == 200
        at_carol = await carol.wait_incoming(T)
        assert "referred-by" in at_carol["headers"]
        await bob.hangup(at_bob)
        await alice.wait_call_state(call, "DISCONNECTED", T)
        await alice.hangup(refer["new_call"])
        await carol.wait_call_state(at_carol["call"], "DISCONNECTED", T)


async def test_pjsua_register_with_digest() -> None:
    keys = {"auth_user": "201", "auth_password": "Secr3t!x", "realm": "acme.test"}
    async with (
        await start_sipp(["-sf", scenario("register_uas"), "-m", "1"], keys=keys) as registrar,
        await PjsuaAgent.start("phone") as phone,
    ):
        code = await phone.register(f"sip:{registrar.uri_host}", "201", "acme.test",
                                    "Secr3t!x", expires=120)
        assert code == 200
        (await registrar.wait(T)).check(calls=1)


async def test_pjsua_register_wrong_password() -> None:
    async with (
        await start_sipp(["-sf", scenario("register_uas"), "-m", "1"],
                         keys={"auth_user": "201", "auth_password": "right"}) as registrar,
        await PjsuaAgent.start("phone") as phone,
    ):
        code = await phone.register(f"sip:{registrar.uri_host}", "201", "acme.test", "wrong")
        assert code == 403
        await registrar.stop(grace=1)


@pytest.mark.parametrize(("code", "uas_scenario"), [(200, "options_uas"),
                                                   (503, "options_uas_503")])
async def test_pjsua_options_to_sipp(code: int, uas_scenario: str) -> None:
    async with (
        await start_sipp(["-sf", scenario(uas_scenario), "-m", "1"]) as uas,
        await PjsuaAgent.start("prober") as prober,
    ):
        assert await prober.options(f"sip:ping@{uas.uri_host}", timeout=T) == code
        (await uas.wait(T)).check(calls=1)


async def test_pjsua_options_to_pjsua_tcp() -> None:
    async with (
        await PjsuaAgent.start("a", transport="tcp") as a,
        await PjsuaAgent.start("b", transport="tcp") as b,
    ):
        reply = await a.options_full(b.contact_for("b"), timeout=T)
        assert reply["code"] == 200
        assert "INVITE" in reply["headers"]["allow"][0]


async def test_pjsua_options_ipv6() -> None:
    async with (
        await PjsuaAgent.start("a6", host="::1") as a,
        await PjsuaAgent.start("b6", host="::1") as b,
    ):
        assert b.contact_for("b6").startswith("sip:b6@[::1]:")
        assert await a.options(b.contact_for("b6"), timeout=T) == 200


# -- linphonec ↔ pjsua ---------------------------------------------------------------------


async def test_linphone_calls_pjsua() -> None:
    async with (
        await PjsuaAgent.start("bob") as bob,
        await Linphone.start("carol") as carol,
    ):
        call = await carol.call(bob.contact_for("bob"))
        incoming = await bob.wait_incoming(T)
        assert "carol" in incoming["from"]
        await carol.wait_call_state(call, "EARLY", T)
        await bob.answer(incoming["call"])
        await carol.wait_call_state(call, "CONFIRMED", T)
        await bob.wait_call_state(incoming["call"], "CONFIRMED", T)
        await carol.terminate(call)
        ended = await carol.wait_call_state(call, "DISCONNECTED", T)
        assert ended.reason == "No error"
        await bob.wait_call_state(incoming["call"], "DISCONNECTED", T)


async def test_pjsua_calls_linphone() -> None:
    async with (
        await PjsuaAgent.start("bob") as bob,
        await Linphone.start("carol", auto_answer=True) as carol,
    ):
        call = await bob.call(carol.contact_for())
        incoming = await carol.wait_incoming(T)
        await carol.wait_call_state(incoming["call"], "CONFIRMED", T)
        await bob.wait_call_state(call, "CONFIRMED", T)
        await bob.hangup(call)
        await carol.wait_call_state(incoming["call"], "DISCONNECTED", T)
        await bob.wait_call_state(call, "DISCONNECTED", T)

        # manual answer after switching auto-answer off
        await carol.set_auto_answer(False)
        call = await bob.call(carol.contact_for())
        incoming = await carol.wait_incoming(T)
        await bob.wait_call_state(call, "EARLY", T)
        await carol.answer(incoming["call"])
        await bob.wait_call_state(call, "CONFIRMED", T)
        await carol.terminate(incoming["call"])
        await bob.wait_call_state(call, "DISCONNECTED", T)


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_linphone_calls_pjsua_over(transport: str) -> None:
    async with (
        await PjsuaAgent.start("bob", transport=transport, auto_answer=200) as bob,
        await Linphone.start("carol", tls=transport == "tls") as carol,
    ):
        call = await carol.call(bob.contact_for("bob"))
        await carol.wait_call_state(call, "CONFIRMED", T)
        incoming = await bob.wait_incoming(T)
        assert f"SIP/2.0/{transport.upper()}" in incoming["headers"]["via"][0]
        await carol.terminate(call)
        await bob.wait_call_state(incoming["call"], "DISCONNECTED", T)


async def test_linphone_register_with_digest() -> None:
    keys = {"auth_user": "203", "auth_password": "Secr3t!x"}
    async with (
        await start_sipp(["-sf", scenario("register_uas"), "-m", "1"], keys=keys) as registrar,
        await Linphone.start("carol") as carol,
    ):
        assert await carol.register(f"sip:{registrar.uri_host}", "203", "acme.test",
                                    "Secr3t!x") == 200
        assert (await carol.registration_status()).split("linphonec>")[-1].strip().startswith(
            "registered, identity=")
        (await registrar.wait(T)).check(calls=1)


# -- baresip ↔ pjsua -----------------------------------------------------------------------


async def test_baresip_calls_pjsua() -> None:
    async with (
        await PjsuaAgent.start("bob") as bob,
        await Baresip.start("dave") as dave,
    ):
        call = await dave.call(bob.contact_for("bob"))
        incoming = await bob.wait_incoming(T)
        assert "dave" in incoming["from"]
        await dave.wait_call_state(call, "EARLY", T)
        assert dave.call_id(call) == incoming["sip_call_id"]
        await bob.answer(incoming["call"])
        await dave.wait_call_state(call, "CONFIRMED", T)
        await bob.wait_call_state(incoming["call"], "CONFIRMED", T)
        await dave.hangup(call)
        closed = await dave.wait_call_state(call, "DISCONNECTED", T)
        assert closed["param"] == "Connection reset by user"
        await bob.wait_call_state(incoming["call"], "DISCONNECTED", T)


async def test_pjsua_calls_baresip() -> None:
    async with (
        await PjsuaAgent.start("bob") as bob,
        await Baresip.start("dave") as dave,
    ):
        call = await bob.call(dave.contact_for())
        incoming = await dave.wait_incoming(T)
        assert incoming["call"] == (await bob.call_info(call))["sip_call_id"]
        await bob.wait_call_state(call, "EARLY", T)
        await dave.answer(incoming["call"])
        await bob.wait_call_state(call, "CONFIRMED", T)
        await dave.wait_call_state(incoming["call"], "CONFIRMED", T)
        await bob.hangup(call)
        closed = await dave.wait_call_state(incoming["call"], "DISCONNECTED", T)
        assert closed["param"] == "Connection reset by peer"

        # auto answer, and a call the callee rejects
        await dave.set_auto_answer(True)
        call = await bob.call(dave.contact_for())
        await bob.wait_call_state(call, "CONFIRMED", T)
        await bob.hangup(call)
        await bob.wait_call_state(call, "DISCONNECTED", T)


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_baresip_calls_pjsua_over(transport: str) -> None:
    async with (
        await PjsuaAgent.start("bob", transport=transport, auto_answer=200) as bob,
        await Baresip.start("dave") as dave,
    ):
        call = await dave.call(bob.contact_for("bob"))
        await dave.wait_call_state(call, "CONFIRMED", T)
        incoming = await bob.wait_incoming(T)
        assert f"SIP/2.0/{transport.upper()}" in incoming["headers"]["via"][0]
        await dave.hangup(call)
        await bob.wait_call_state(incoming["call"], "DISCONNECTED", T)


async def test_baresip_register_and_options() -> None:
    keys = {"auth_user": "204", "auth_password": "Secr3t!x"}
    async with (
        await start_sipp(["-sf", scenario("options_uas"), "-m", "1"]) as pong,
        await Baresip.start("dave") as dave,
    ):
        assert await dave.options(f"sip:ping@{pong.uri_host}", timeout=T) == 200
        (await pong.wait(T)).check(calls=1)
        async with await start_sipp(["-sf", scenario("register_uas"), "-m", "1"],
                                    keys=keys) as registrar:
            assert await dave.register(f"sip:{registrar.uri_host}", "204", "acme.test",
                                       "Secr3t!x") == 200
            (await registrar.wait(T)).check(calls=1)
