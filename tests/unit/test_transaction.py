"""RFC 3261 §17 / RFC 6026 transaction machines, driven with a fake clock."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip.transaction import (
    MAGIC_COOKIE,
    Action,
    ClientTransaction,
    Deliver,
    ServerTransaction,
    State,
    Terminated,
    TimedOut,
    Timers,
    TransactionError,
    Transmit,
    TransportFailed,
    branch,
    is_rfc3261_branch,
)

T = Timers()
INVITE = b"INVITE sip:bob@example.com SIP/2.0\r\n\r\n"
OPTIONS = b"OPTIONS sip:bob@example.com SIP/2.0\r\n\r\n"
Transaction = ClientTransaction | ServerTransaction


def response(status: int) -> bytes:
    return f"SIP/2.0 {status} Whatever\r\n\r\n".encode()


class AckMaker:
    """make_ack stand-in that records what it was asked to acknowledge."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def __call__(self, final: bytes) -> bytes:
        self.calls.append(final)
        return b"ACK for " + final


def client(
    *, invite: bool, reliable: bool = False, timers: Timers = T, now: float = 0.0
) -> ClientTransaction:
    request = INVITE if invite else OPTIONS
    return ClientTransaction(
        request, invite=invite, reliable=reliable, timers=timers, now=now, make_ack=AckMaker()
    )


def server(*, invite: bool, reliable: bool = False, now: float = 0.0) -> ServerTransaction:
    return ServerTransaction(invite=invite, reliable=reliable, timers=T, now=now)


def run_timers(tx: Transaction) -> list[tuple[float, list[Action]]]:
    """Expire every timer exactly at its deadline until none is left."""
    fired: list[tuple[float, list[Action]]] = []
    while tx.deadline is not None:
        at = tx.deadline
        fired.append((at, tx.expire(at)))
    return fired


def kinds(actions: list[Action]) -> tuple[str, ...]:
    return tuple(type(action).__name__ for action in actions)


# ----------------------------------------------------------------- timers and branch


def test_timer_defaults_are_rfc_3261_values() -> None:
    assert (T.t1, T.t2, T.t4) == (0.5, 4.0, 5.0)
    assert T.timeout == 32.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        T.t1 = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"t1": 0},
        {"t1": -1},
        {"t1": 2.0, "t2": 1.0},
        {"t4": 0},
        {"t1": float("nan")},
        {"t2": float("inf")},
    ],
)
def test_timer_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Timers(**kwargs)


def test_branch_is_rfc3261_and_unique() -> None:
    values = {branch() for _ in range(2000)}
    assert len(values) == 2000
    for value in values:
        assert re.fullmatch(r"z9hG4bK[A-Za-z0-9_-]{16}", value)  # 96 random bits
        assert is_rfc3261_branch(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("z9hG4bK776asdhds", True), (MAGIC_COOKIE, False), ("776asdhds", False), ("", False)],
)
def test_is_rfc3261_branch(value: str, expected: bool) -> None:
    assert is_rfc3261_branch(value) is expected


# ------------------------------------------------------------------- INVITE client


def test_invite_client_timer_a_doubles_until_timer_b() -> None:
    tx = client(invite=True)
    assert tx.state is State.CALLING
    assert tx.start() == [Transmit(INVITE)]
    assert tx.armed == {"A": 0.5, "B": 32.0}
    fired = run_timers(tx)
    sends = [at for at, actions in fired if actions == [Transmit(INVITE)]]
    # RFC 3261 §17.1.1.2: intervals T1, 2T1, 4T1 … (0.5, 1, 2, 4, 8, 16 s) until B.
    assert sends == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert fired[-1] == (32.0, [TimedOut(), Terminated()])
    assert tx.state is State.TERMINATED
    assert tx.deadline is None


def test_invite_client_schedule_follows_custom_t1() -> None:
    tx = client(invite=True, timers=Timers(t1=0.1, t2=0.4))
    tx.start()
    fired = run_timers(tx)
    sends = [round(at, 6) for at, actions in fired if Transmit(INVITE) in actions]
    assert sends == [0.1, 0.3, 0.7, 1.5, 3.1, 6.3]  # A is not capped by T2 for INVITE
    assert fired[-1] == (pytest.approx(6.4), [TimedOut(), Terminated()])


def test_invite_client_over_reliable_transport_never_retransmits() -> None:
    tx = client(invite=True, reliable=True)
    assert tx.start() == [Transmit(INVITE)]
    assert tx.armed == {"B": 32.0}
    assert run_timers(tx) == [(32.0, [TimedOut(), Terminated()])]


def test_invite_client_non_2xx_is_acked_once_per_final_and_delivered_once() -> None:
    tx = client(invite=True, now=10.0)
    tx.start()
    assert tx.on_response(180, response(180), 10.2) == [Deliver(response(180), 180)]
    assert tx.state is State.PROCEEDING
    assert tx.armed == {}  # A and B do not run in Proceeding
    ack = b"ACK for " + response(486)
    assert tx.on_response(486, response(486), 11.0) == [
        Transmit(ack),
        Deliver(response(486), 486),
    ]
    assert tx.state is State.COMPLETED
    assert tx.armed == {"D": 43.0}  # max(64*T1, 32 s) over UDP
    # Each retransmission of the final response is ACKed again, never delivered again.
    assert tx.on_response(486, response(486), 12.0) == [Transmit(ack)]
    assert tx.on_response(486, response(486), 13.0) == [Transmit(ack)]
    assert tx.on_response(180, response(180), 13.5) == []
    assert tx.on_response(200, response(200), 13.6) == []
    maker = tx._make_ack
    assert isinstance(maker, AckMaker)
    assert maker.calls == [response(486)]  # the ACK is built once
    assert tx.expire(42.9) == []
    assert tx.expire(43.0) == [Terminated()]
    assert tx.on_response(486, response(486), 44.0) == []


def test_invite_client_non_2xx_over_reliable_transport_terminates_at_once() -> None:
    tx = client(invite=True, reliable=True)
    tx.start()
    actions = tx.on_response(603, response(603), 1.0)
    assert actions == [
        Transmit(b"ACK for " + response(603)),
        Deliver(response(603), 603),
        Terminated(),
    ]
    assert tx.state is State.TERMINATED
    assert tx.deadline is None


def test_invite_client_d_is_at_least_32_seconds() -> None:
    tx = client(invite=True, timers=Timers(t1=0.1, t2=0.4))
    tx.start()
    tx.on_response(404, response(404), 1.0)
    assert tx.armed == {"D": 33.0}


@pytest.mark.parametrize("provisional_first", [False, True])
def test_invite_client_2xx_enters_accepted_and_delivers_retransmissions(
    provisional_first: bool,
) -> None:
    tx = client(invite=True)
    tx.start()
    if provisional_first:
        tx.on_response(183, response(183), 0.1)
    ok = response(200)
    assert tx.on_response(200, ok, 1.0) == [Deliver(ok, 200)]
    assert tx.state is State.ACCEPTED
    assert tx.armed == {"M": 33.0}
    # RFC 6026 §8.4: further 2xx (retransmissions, other forks) still go to the TU,
    # and the transaction never ACKs a 2xx itself.
    assert tx.on_response(200, ok, 2.0) == [Deliver(ok, 200)]
    assert tx.on_response(202, response(202), 3.0) == [Deliver(response(202), 202)]
    assert tx.on_response(180, response(180), 3.5) == []
    assert tx.on_response(486, response(486), 4.0) == []
    maker = tx._make_ack
    assert isinstance(maker, AckMaker)
    assert maker.calls == []
    assert run_timers(tx) == [(33.0, [Terminated()])]


def test_invite_client_needs_make_ack() -> None:
    with pytest.raises(TransactionError):
        ClientTransaction(INVITE, invite=True, reliable=False, timers=T, now=0.0)


# --------------------------------------------------------------- non-INVITE client


def test_non_invite_client_timer_e_is_capped_at_t2() -> None:
    tx = client(invite=False)
    assert tx.start() == [Transmit(OPTIONS)]
    assert tx.armed == {"E": 0.5, "F": 32.0}
    fired = run_timers(tx)
    sends = [at for at, actions in fired if actions == [Transmit(OPTIONS)]]
    # RFC 3261 §17.1.2.2: 0.5, 1, 2, 4, then T2 = 4 s every time, until F.
    assert sends == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert fired[-1] == (32.0, [TimedOut(), Terminated()])


def test_non_invite_client_timer_e_uses_t2_once_proceeding() -> None:
    tx = client(invite=False)
    tx.start()
    assert tx.on_response(100, response(100), 0.2) == [Deliver(response(100), 100)]
    assert tx.state is State.PROCEEDING
    assert tx.expire(0.5) == [Transmit(OPTIONS)]
    assert tx.armed == {"E": 4.5, "F": 32.0}
    assert tx.expire(4.5) == [Transmit(OPTIONS)]
    assert tx.armed["E"] == 8.5
    fired = run_timers(tx)
    assert fired[-1] == (32.0, [TimedOut(), Terminated()])


def test_non_invite_client_final_then_timer_k() -> None:
    tx = client(invite=False)
    tx.start()
    assert tx.on_response(200, response(200), 1.0) == [Deliver(response(200), 200)]
    assert tx.state is State.COMPLETED
    assert tx.armed == {"K": 6.0}  # T4
    assert tx.on_response(200, response(200), 2.0) == []  # retransmission absorbed
    assert run_timers(tx) == [(6.0, [Terminated()])]


def test_non_invite_client_over_reliable_transport() -> None:
    tx = client(invite=False, reliable=True)
    tx.start()
    assert tx.armed == {"F": 32.0}
    assert tx.on_response(404, response(404), 1.0) == [Deliver(response(404), 404), Terminated()]
    assert tx.state is State.TERMINATED


def test_late_expire_does_not_burst_retransmissions() -> None:
    tx = client(invite=False)
    tx.start()
    # The loop woke up far too late: one retransmission (E), then F ends it.
    assert tx.expire(100.0) == [Transmit(OPTIONS), TimedOut(), Terminated()]


def test_expire_fires_due_timers_in_deadline_order() -> None:
    tx = client(invite=False)
    tx.start()
    assert tx.expire(0.4) == []
    assert tx.expire(1.5) == [Transmit(OPTIONS)]  # E at 0.5 only; re-armed from 1.5
    assert tx.armed == {"E": 2.5, "F": 32.0}
    assert tx.deadline == 2.5


@pytest.mark.parametrize("invite", [True, False])
def test_client_transport_error(invite: bool) -> None:
    tx = client(invite=invite)
    tx.start()
    assert tx.on_transport_error(0.1) == [TransportFailed(), Terminated()]
    assert tx.state is State.TERMINATED
    assert tx.deadline is None
    assert tx.on_response(200, response(200), 0.2) == []
    assert tx.expire(100.0) == []


def test_client_misuse_raises() -> None:
    tx = client(invite=False)
    with pytest.raises(TransactionError):
        tx.on_response(200, response(200), 0.0)
    with pytest.raises(TransactionError):
        tx.on_transport_error(0.0)
    tx.start()
    with pytest.raises(TransactionError):
        tx.start()
    for status in (99, 700, 0):
        with pytest.raises(TransactionError):
            tx.on_response(status, b"", 0.0)
    assert issubclass(TransactionError, ValueError)


# ------------------------------------------------------------------- INVITE server


def test_invite_server_absorbs_retransmissions_with_last_response() -> None:
    tx = server(invite=True)
    assert tx.state is State.PROCEEDING
    assert tx.on_request(0.05) == []  # nothing sent yet
    assert tx.send_response(100, response(100), 0.1) == [Transmit(response(100))]
    assert tx.on_request(0.2) == [Transmit(response(100))]
    assert tx.send_response(180, response(180), 0.3) == [Transmit(response(180))]
    assert tx.on_request(0.4) == [Transmit(response(180))]
    assert tx.deadline is None


def test_invite_server_rejection_g_h_and_ack() -> None:
    tx = server(invite=True)
    busy = response(486)
    assert tx.send_response(486, busy, 1.0) == [Transmit(busy)]
    assert tx.state is State.COMPLETED
    assert tx.armed == {"G": 1.5, "H": 33.0}
    assert tx.expire(1.5) == [Transmit(busy)]
    assert tx.expire(2.5) == [Transmit(busy)]
    assert tx.on_request(3.0) == [Transmit(busy)]  # INVITE retransmission
    assert tx.on_request(3.2, is_ack=True) == []
    assert tx.state is State.CONFIRMED
    assert tx.armed == {"I": 8.2}  # T4; G and H are dropped
    assert tx.on_request(4.0, is_ack=True) == []  # ACK retransmissions absorbed
    assert tx.on_request(4.1) == []
    assert run_timers(tx) == [(8.2, [Terminated()])]


def test_invite_server_timer_g_capped_at_t2_until_timer_h() -> None:
    tx = server(invite=True)
    tx.send_response(500, response(500), 0.0)
    fired = run_timers(tx)
    sends = [at for at, actions in fired if actions == [Transmit(response(500))]]
    assert sends == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert fired[-1] == (32.0, [TimedOut(), Terminated()])  # Timer H: no ACK came


def test_invite_server_over_reliable_transport() -> None:
    tx = server(invite=True, reliable=True)
    tx.send_response(404, response(404), 0.0)
    assert tx.armed == {"H": 32.0}  # no G over TCP
    assert tx.on_request(1.0, is_ack=True) == [Terminated()]  # Timer I = 0


def test_invite_server_accepted_state() -> None:
    tx = server(invite=True)
    ok = response(200)
    assert tx.send_response(200, ok, 1.0) == [Transmit(ok)]
    assert tx.state is State.ACCEPTED
    assert tx.armed == {"L": 33.0}
    # RFC 6026: INVITE retransmissions and ACKs are absorbed; the TU retransmits 2xx.
    assert tx.on_request(1.5) == []
    assert tx.on_request(1.6, is_ack=True) == []
    assert tx.send_response(200, ok, 2.0) == [Transmit(ok)]
    with pytest.raises(TransactionError):
        tx.send_response(486, response(486), 2.5)
    with pytest.raises(TransactionError):
        tx.send_response(180, response(180), 2.5)
    assert tx.state is State.ACCEPTED
    assert run_timers(tx) == [(33.0, [Terminated()])]


def test_invite_server_transport_error_informs_tu_and_stays() -> None:
    # RFC 6026 §8.7 draws "Transport Err. / Inform TU" as self-loops: the transaction
    # keeps absorbing retransmissions; Timer H (or L) still ends it.
    tx = server(invite=True)
    assert tx.on_transport_error(0.1) == [TransportFailed()]
    assert tx.state is State.PROCEEDING
    tx.send_response(480, response(480), 1.0)
    assert tx.on_transport_error(1.1) == [TransportFailed()]
    assert tx.state is State.COMPLETED
    assert run_timers(tx)[-1] == (33.0, [TimedOut(), Terminated()])


@pytest.mark.parametrize("status", [100, 180, 200, 404])
def test_invite_server_no_response_after_a_rejection(status: int) -> None:
    tx = server(invite=True)
    tx.send_response(486, response(486), 0.0)
    with pytest.raises(TransactionError):
        tx.send_response(status, response(status), 0.1)
    tx.on_request(0.2, is_ack=True)
    with pytest.raises(TransactionError):
        tx.send_response(status, response(status), 0.3)


# --------------------------------------------------------------- non-INVITE server


def test_non_invite_server_lifecycle() -> None:
    tx = server(invite=False)
    assert tx.state is State.TRYING
    assert tx.on_request(0.1) == []  # Trying: discarded (§17.2.2)
    assert tx.send_response(100, response(100), 0.2) == [Transmit(response(100))]
    assert tx.state is State.PROCEEDING
    assert tx.on_request(0.3) == [Transmit(response(100))]
    assert tx.send_response(200, response(200), 1.0) == [Transmit(response(200))]
    assert tx.state is State.COMPLETED
    assert tx.armed == {"J": 33.0}
    assert tx.on_request(2.0) == [Transmit(response(200))]
    assert tx.on_request(2.1, is_ack=True) == []  # an ACK never matches non-INVITE
    with pytest.raises(TransactionError):
        tx.send_response(200, response(200), 2.2)
    assert run_timers(tx) == [(33.0, [Terminated()])]


def test_non_invite_server_over_reliable_transport_terminates_at_once() -> None:
    tx = server(invite=False, reliable=True)
    assert tx.send_response(200, response(200), 0.0) == [Transmit(response(200)), Terminated()]


@pytest.mark.parametrize("provisional", [False, True])
def test_non_invite_server_transport_error(provisional: bool) -> None:
    tx = server(invite=False)
    if provisional:
        tx.send_response(100, response(100), 0.0)
    else:
        tx.send_response(200, response(200), 0.0)
    assert tx.on_transport_error(0.1) == [TransportFailed(), Terminated()]


def test_server_after_terminated_everything_is_absorbed() -> None:
    tx = server(invite=False, reliable=True)
    tx.send_response(200, response(200), 0.0)
    assert tx.send_response(200, response(200), 1.0) == []
    assert tx.on_request(1.0) == []
    assert tx.on_transport_error(1.0) == []
    with pytest.raises(TransactionError):  # arguments are still validated
        tx.send_response(42, b"", 1.0)


# ------------------------------------------------------------ table-driven transitions

RAISES = "raises"
S = State

# (machine, state, event) → (next state, action kinds). Written from the RFC figures,
# independently of the module's tables.
TRANSITIONS: list[tuple[str, State, str, State | str, tuple[str, ...]]] = [
    # INVITE client: RFC 3261 Figure 5 + RFC 6026 §8.4
    ("ict", S.CALLING, "1xx", S.PROCEEDING, ("Deliver",)),
    ("ict", S.CALLING, "2xx", S.ACCEPTED, ("Deliver",)),
    ("ict", S.CALLING, "3xx-6xx", S.COMPLETED, ("Transmit", "Deliver")),
    ("ict", S.CALLING, "timer A", S.CALLING, ("Transmit",)),
    ("ict", S.CALLING, "timer B", S.TERMINATED, ("TimedOut", "Terminated")),
    ("ict", S.CALLING, "transport", S.TERMINATED, ("TransportFailed", "Terminated")),
    ("ict", S.PROCEEDING, "1xx", S.PROCEEDING, ("Deliver",)),
    ("ict", S.PROCEEDING, "2xx", S.ACCEPTED, ("Deliver",)),
    ("ict", S.PROCEEDING, "3xx-6xx", S.COMPLETED, ("Transmit", "Deliver")),
    ("ict", S.PROCEEDING, "transport", S.PROCEEDING, ()),
    ("ict", S.COMPLETED, "1xx", S.COMPLETED, ()),
    ("ict", S.COMPLETED, "2xx", S.COMPLETED, ()),
    ("ict", S.COMPLETED, "3xx-6xx", S.COMPLETED, ("Transmit",)),
    ("ict", S.COMPLETED, "timer D", S.TERMINATED, ("Terminated",)),
    ("ict", S.COMPLETED, "transport", S.TERMINATED, ("TransportFailed", "Terminated")),
    ("ict", S.ACCEPTED, "1xx", S.ACCEPTED, ()),
    ("ict", S.ACCEPTED, "2xx", S.ACCEPTED, ("Deliver",)),
    ("ict", S.ACCEPTED, "3xx-6xx", S.ACCEPTED, ()),
    ("ict", S.ACCEPTED, "timer M", S.TERMINATED, ("Terminated",)),
    ("ict", S.ACCEPTED, "transport", S.ACCEPTED, ()),
    # non-INVITE client: RFC 3261 Figure 6
    ("nict", S.TRYING, "1xx", S.PROCEEDING, ("Deliver",)),
    ("nict", S.TRYING, "2xx", S.COMPLETED, ("Deliver",)),
    ("nict", S.TRYING, "3xx-6xx", S.COMPLETED, ("Deliver",)),
    ("nict", S.TRYING, "timer E", S.TRYING, ("Transmit",)),
    ("nict", S.TRYING, "timer F", S.TERMINATED, ("TimedOut", "Terminated")),
    ("nict", S.TRYING, "transport", S.TERMINATED, ("TransportFailed", "Terminated")),
    ("nict", S.PROCEEDING, "1xx", S.PROCEEDING, ("Deliver",)),
    ("nict", S.PROCEEDING, "2xx", S.COMPLETED, ("Deliver",)),
    ("nict", S.PROCEEDING, "3xx-6xx", S.COMPLETED, ("Deliver",)),
    ("nict", S.PROCEEDING, "timer E", S.PROCEEDING, ("Transmit",)),
    ("nict", S.PROCEEDING, "timer F", S.TERMINATED, ("TimedOut", "Terminated")),
    ("nict", S.PROCEEDING, "transport", S.TERMINATED, ("TransportFailed", "Terminated")),
    ("nict", S.COMPLETED, "1xx", S.COMPLETED, ()),
    ("nict", S.COMPLETED, "2xx", S.COMPLETED, ()),
    ("nict", S.COMPLETED, "3xx-6xx", S.COMPLETED, ()),
    ("nict", S.COMPLETED, "timer K", S.TERMINATED, ("Terminated",)),
    ("nict", S.COMPLETED, "transport", S.COMPLETED, ()),
    # INVITE server: RFC 3261 Figure 7 as replaced by RFC 6026 §8.7
    ("ist", S.PROCEEDING, "request", S.PROCEEDING, ()),
    ("ist", S.PROCEEDING, "ack", S.PROCEEDING, ()),
    ("ist", S.PROCEEDING, "tu 1xx", S.PROCEEDING, ("Transmit",)),
    ("ist", S.PROCEEDING, "tu 2xx", S.ACCEPTED, ("Transmit",)),
    ("ist", S.PROCEEDING, "tu 3xx-6xx", S.COMPLETED, ("Transmit",)),
    ("ist", S.PROCEEDING, "transport", S.PROCEEDING, ("TransportFailed",)),
    ("ist", S.COMPLETED, "request", S.COMPLETED, ("Transmit",)),
    ("ist", S.COMPLETED, "ack", S.CONFIRMED, ()),
    ("ist", S.COMPLETED, "tu 1xx", RAISES, ()),
    ("ist", S.COMPLETED, "tu 2xx", RAISES, ()),
    ("ist", S.COMPLETED, "tu 3xx-6xx", RAISES, ()),
    ("ist", S.COMPLETED, "timer G", S.COMPLETED, ("Transmit",)),
    ("ist", S.COMPLETED, "timer H", S.TERMINATED, ("TimedOut", "Terminated")),
    ("ist", S.COMPLETED, "transport", S.COMPLETED, ("TransportFailed",)),
    ("ist", S.CONFIRMED, "request", S.CONFIRMED, ()),
    ("ist", S.CONFIRMED, "ack", S.CONFIRMED, ()),
    ("ist", S.CONFIRMED, "tu 1xx", RAISES, ()),
    ("ist", S.CONFIRMED, "tu 2xx", RAISES, ()),
    ("ist", S.CONFIRMED, "tu 3xx-6xx", RAISES, ()),
    ("ist", S.CONFIRMED, "timer I", S.TERMINATED, ("Terminated",)),
    ("ist", S.CONFIRMED, "transport", S.CONFIRMED, ()),
    ("ist", S.ACCEPTED, "request", S.ACCEPTED, ()),
    ("ist", S.ACCEPTED, "ack", S.ACCEPTED, ()),
    ("ist", S.ACCEPTED, "tu 1xx", RAISES, ()),
    ("ist", S.ACCEPTED, "tu 2xx", S.ACCEPTED, ("Transmit",)),
    ("ist", S.ACCEPTED, "tu 3xx-6xx", RAISES, ()),
    ("ist", S.ACCEPTED, "timer L", S.TERMINATED, ("Terminated",)),
    ("ist", S.ACCEPTED, "transport", S.ACCEPTED, ("TransportFailed",)),
    # non-INVITE server: RFC 3261 Figure 8
    ("nist", S.TRYING, "request", S.TRYING, ()),
    ("nist", S.TRYING, "ack", S.TRYING, ()),
    ("nist", S.TRYING, "tu 1xx", S.PROCEEDING, ("Transmit",)),
    ("nist", S.TRYING, "tu 2xx", S.COMPLETED, ("Transmit",)),
    ("nist", S.TRYING, "tu 3xx-6xx", S.COMPLETED, ("Transmit",)),
    ("nist", S.TRYING, "transport", S.TRYING, ()),
    ("nist", S.PROCEEDING, "request", S.PROCEEDING, ("Transmit",)),
    ("nist", S.PROCEEDING, "ack", S.PROCEEDING, ()),
    ("nist", S.PROCEEDING, "tu 1xx", S.PROCEEDING, ("Transmit",)),
    ("nist", S.PROCEEDING, "tu 2xx", S.COMPLETED, ("Transmit",)),
    ("nist", S.PROCEEDING, "tu 3xx-6xx", S.COMPLETED, ("Transmit",)),
    ("nist", S.PROCEEDING, "transport", S.TERMINATED, ("TransportFailed", "Terminated")),
    ("nist", S.COMPLETED, "request", S.COMPLETED, ("Transmit",)),
    ("nist", S.COMPLETED, "ack", S.COMPLETED, ()),
    ("nist", S.COMPLETED, "tu 1xx", RAISES, ()),
    ("nist", S.COMPLETED, "tu 2xx", RAISES, ()),
    ("nist", S.COMPLETED, "tu 3xx-6xx", RAISES, ()),
    ("nist", S.COMPLETED, "timer J", S.TERMINATED, ("Terminated",)),
    ("nist", S.COMPLETED, "transport", S.TERMINATED, ("TransportFailed", "Terminated")),
]

STATUS_OF = {"1xx": 180, "2xx": 200, "3xx-6xx": 486}


def in_state(machine: str, state: State) -> Transaction:
    """A transaction (unreliable transport) driven into ``state`` through legal inputs."""
    tx: Transaction
    if machine in ("ict", "nict"):
        tx = client(invite=machine == "ict")
        tx.start()
        path = {
            S.CALLING: [],
            S.TRYING: [],
            S.PROCEEDING: [180],
            S.COMPLETED: [486],
            S.ACCEPTED: [200],
        }[state]
        for status in path:
            tx.on_response(status, response(status), 0.01)
    else:
        tx = server(invite=machine == "ist")
        steps: dict[State, list[Callable[[ServerTransaction], object]]] = {
            S.PROCEEDING: [] if machine == "ist" else [lambda t: t.send_response(100, b"1", 0)],
            S.TRYING: [],
            S.COMPLETED: [lambda t: t.send_response(486, response(486), 0.01)],
            S.CONFIRMED: [
                lambda t: t.send_response(486, response(486), 0.01),
                lambda t: t.on_request(0.02, is_ack=True),
            ],
            S.ACCEPTED: [lambda t: t.send_response(200, response(200), 0.01)],
        }
        for step in steps[state]:
            step(tx)
    assert tx.state is state
    return tx


def apply(tx: Transaction, event: str, now: float = 0.03) -> list[Action]:
    if event.startswith("timer "):
        letter = event.removeprefix("timer ")
        assert letter in tx.armed, f"timer {letter} not armed in {tx.state}"
        # Let earlier timers (retransmissions before a timeout) fire first.
        while tx.deadline is not None and tx.deadline < tx.armed[letter]:
            tx.expire(tx.deadline)
        assert tx.state is not S.TERMINATED
        return tx.expire(tx.armed[letter])
    if event == "transport":
        return tx.on_transport_error(now)
    if isinstance(tx, ClientTransaction):
        status = STATUS_OF[event]
        return tx.on_response(status, response(status), now)
    if event in ("request", "ack"):
        return tx.on_request(now, is_ack=event == "ack")
    status = STATUS_OF[event.removeprefix("tu ")]
    return tx.send_response(status, response(status), now)


@pytest.mark.parametrize(
    ("machine", "state", "event", "expected", "action_kinds"),
    TRANSITIONS,
    ids=[f"{m}-{s.value}-{e}" for m, s, e, _, _ in TRANSITIONS],
)
def test_transition_table(
    machine: str,
    state: State,
    event: str,
    expected: State | str,
    action_kinds: tuple[str, ...],
) -> None:
    tx = in_state(machine, state)
    if expected == RAISES:
        with pytest.raises(TransactionError):
            apply(tx, event)
        assert tx.state is state  # a refused send changes nothing
        return
    assert kinds(apply(tx, event)) == action_kinds
    assert tx.state is expected


MACHINE_EVENTS = {
    "ict": ["1xx", "2xx", "3xx-6xx", "transport"],
    "nict": ["1xx", "2xx", "3xx-6xx", "transport"],
    "ist": ["request", "ack", "tu 1xx", "tu 2xx", "tu 3xx-6xx", "transport"],
    "nist": ["request", "ack", "tu 1xx", "tu 2xx", "tu 3xx-6xx", "transport"],
}


@pytest.mark.parametrize("machine", sorted(MACHINE_EVENTS))
def test_transition_table_covers_every_non_timer_event(machine: str) -> None:
    states = {s for m, s, _, _, _ in TRANSITIONS if m == machine}
    covered = {(s, e) for m, s, e, _, _ in TRANSITIONS if m == machine}
    assert {(s, e) for s in states for e in MACHINE_EVENTS[machine]} <= covered


@pytest.mark.parametrize("machine", sorted(MACHINE_EVENTS))
def test_terminated_absorbs_everything(machine: str) -> None:
    tx = in_state(machine, S.COMPLETED)
    run_timers(tx)
    assert tx.state is S.TERMINATED
    for event in MACHINE_EVENTS[machine]:
        assert apply(tx, event, now=100.0) == []
    assert tx.expire(1e9) == []


# --------------------------------------------------------------- property-based tests

RANK = {
    "ict": {S.CALLING: 0, S.PROCEEDING: 1, S.COMPLETED: 2, S.ACCEPTED: 2, S.TERMINATED: 3},
    "nict": {S.TRYING: 0, S.PROCEEDING: 1, S.COMPLETED: 2, S.TERMINATED: 3},
    "ist": {S.PROCEEDING: 0, S.COMPLETED: 1, S.ACCEPTED: 1, S.CONFIRMED: 2, S.TERMINATED: 3},
    "nist": {S.TRYING: 0, S.PROCEEDING: 1, S.COMPLETED: 2, S.TERMINATED: 3},
}
STATUSES = [100, 180, 183, 199, 200, 202, 299, 300, 404, 486, 500, 603, 699]

delays = st.sampled_from([0.0, 0.001, 0.3, 0.5, 1.0, 4.0, 5.0, 16.0, 33.0])
client_inputs = st.one_of(
    st.tuples(st.just("response"), st.sampled_from(STATUSES), delays),
    st.tuples(st.just("expire"), st.just(0), delays),
    st.tuples(st.just("deadline"), st.just(0), st.just(0.0)),
    st.tuples(st.just("transport"), st.just(0), delays),
)
server_inputs = st.one_of(
    st.tuples(st.just("request"), st.just(0), delays),
    st.tuples(st.just("ack"), st.just(0), delays),
    st.tuples(st.just("send"), st.sampled_from(STATUSES), delays),
    st.tuples(st.just("expire"), st.just(0), delays),
    st.tuples(st.just("deadline"), st.just(0), st.just(0.0)),
    st.tuples(st.just("transport"), st.just(0), delays),
)


def step(tx: Transaction, kind: str, status: int, now: float) -> list[Action]:
    if kind in ("expire", "deadline"):
        return tx.expire(now)
    if kind == "transport":
        return tx.on_transport_error(now)
    if isinstance(tx, ClientTransaction):
        return tx.on_response(status, response(status), now)
    if kind in ("request", "ack"):
        return tx.on_request(now, is_ack=kind == "ack")
    return tx.send_response(status, response(status), now)


def check_run(machine: str, tx: Transaction, inputs: list[tuple[str, int, float]]) -> list[Action]:
    """Apply ``inputs`` and check the invariants after each; return every action."""
    rank = RANK[machine]
    now = 0.0
    seen: list[Action] = []
    for kind, status, delay in inputs:
        now += delay
        if kind == "deadline" and tx.deadline is not None:
            now = max(now, tx.deadline)
        before = tx.state
        try:
            actions = step(tx, kind, status, now)
        except TransactionError:
            # Only an illegal TU send may raise, and it changes nothing.
            assert kind == "send"
            assert tx.state is before
            assert before is not S.TERMINATED
            continue
        after = tx.state
        assert after in rank
        assert rank[after] > rank[before] or after is before  # states only move forward
        if before is S.TERMINATED:
            assert actions == []
        entered_terminated = before is not S.TERMINATED and after is S.TERMINATED
        assert (Terminated() in actions) == entered_terminated
        if entered_terminated:
            assert actions.count(Terminated()) == 1
            assert actions[-1] == Terminated()
            assert tx.deadline is None
        if kind in ("expire", "deadline"):
            assert all(at > now for at in tx.armed.values())  # nothing due is left
        seen += actions
    return seen


@settings(max_examples=400, deadline=None)
@given(
    invite=st.booleans(),
    reliable=st.booleans(),
    inputs=st.lists(client_inputs, max_size=25),
)
def test_client_random_inputs(
    invite: bool, reliable: bool, inputs: list[tuple[str, int, float]]
) -> None:
    tx = client(invite=invite, reliable=reliable)
    tx.start()
    seen = check_run("ict" if invite else "nict", tx, inputs)
    finals = [a for a in seen if isinstance(a, Deliver) and a.status >= (300 if invite else 200)]
    assert len(finals) <= 1  # a final response (non-2xx for INVITE) reaches the TU once
    if invite:
        acks = [a for a in seen if isinstance(a, Transmit) and a.data.startswith(b"ACK")]
        assert bool(acks) == bool(finals)


@settings(max_examples=400, deadline=None)
@given(
    invite=st.booleans(),
    reliable=st.booleans(),
    inputs=st.lists(server_inputs, max_size=25),
)
def test_server_random_inputs(
    invite: bool, reliable: bool, inputs: list[tuple[str, int, float]]
) -> None:
    check_run("ist" if invite else "nist", server(invite=invite, reliable=reliable), inputs)
