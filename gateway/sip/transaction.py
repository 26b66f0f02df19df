"""SIP transactions: RFC 3261 §17 with the RFC 6026 amendments, sans I/O.

Four state machines, each an explicit transition table written next to the RFC figure
it implements (bottom of this module):

* INVITE client      RFC 3261 Figure 5, amended by RFC 6026 §8.4 (Accepted, Timer M)
* non-INVITE client  RFC 3261 Figure 6
* INVITE server      RFC 3261 Figure 7, replaced by RFC 6026 §8.7 (Accepted, Timer L)
* non-INVITE server  RFC 3261 Figure 8

No sockets and no clock: every input carries ``now`` (seconds, any monotonic origin) and
returns a list of actions (``Transmit``, ``Deliver``, ``TimedOut``, ``TransportFailed``,
``Terminated``). Timers are deadlines: ``.deadline`` is the earliest armed one and the
caller calls ``expire(now)`` when it is due; ``expire`` fires every due timer in deadline
order.

A timer whose duration is 0 (Timers D, I, J, K on a reliable transport, RFC 3261 §17.1.1.2,
§17.1.2.2, §17.2.1, §17.2.2) fires *immediately*, inside the call that armed it: the
transaction reaches Terminated in that same call and its actions end with ``Terminated()``,
so nothing waits for an ``expire`` that the caller might schedule late.

Retransmission timers (A, E, G) restart from the ``now`` at which they were serviced, not
from their nominal deadline: an event loop that was late never produces a burst of
catch-up retransmissions.

Requests are not "delivered" by server transactions: the caller hands the request to its
TU itself when it creates the transaction; ``on_request`` only handles what arrives later
(retransmissions and the ACK).
"""

from __future__ import annotations

import enum
import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Generic, NamedTuple, TypeAlias, TypeVar

__all__ = [
    "MAGIC_COOKIE",
    "Action",
    "ClientTransaction",
    "Deliver",
    "Event",
    "ServerTransaction",
    "State",
    "Terminated",
    "TimedOut",
    "Timers",
    "TransactionError",
    "Transmit",
    "TransportFailed",
    "branch",
    "is_rfc3261_branch",
]

# RFC 3261 §8.1.1.7: a branch starting with this cookie was built by an RFC 3261
# element and is unique per transaction, so §17.1.3/§17.2.3 matching may rely on it.
MAGIC_COOKIE: Final = "z9hG4bK"


def branch() -> str:
    """A fresh RFC 3261 branch: the magic cookie plus 96 random bits.

    ``token_urlsafe`` only yields ``A-Z a-z 0-9 - _``, all of them RFC 3261 token
    characters (§25.1), so the value can go into a Via header unquoted.
    """
    return MAGIC_COOKIE + secrets.token_urlsafe(12)


def is_rfc3261_branch(value: str) -> bool:
    """True when ``value`` carries the magic cookie (and something after it).

    A bare cookie identifies nothing, so it does not count.
    """
    return value.startswith(MAGIC_COOKIE) and len(value) > len(MAGIC_COOKIE)


class TransactionError(ValueError):
    """A caller bug: an input the state machine cannot accept (e.g. a final response
    after a final response, or a status code outside 100-699)."""


@dataclass(frozen=True, slots=True)
class Timers:
    """RFC 3261 §17.1.1.1 / Table 4 base values, in seconds."""

    t1: float = 0.5  # RTT estimate
    t2: float = 4.0  # cap on non-INVITE request and INVITE response retransmit interval
    t4: float = 5.0  # maximum time a message stays in the network

    def __post_init__(self) -> None:
        for name in ("t1", "t2", "t4"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.t1 <= 0:
            raise ValueError("t1 must be > 0")
        if self.t2 < self.t1:
            raise ValueError("t2 must be >= t1")
        if self.t4 <= 0:
            raise ValueError("t4 must be > 0")

    @property
    def timeout(self) -> float:
        """64*T1: Timers B, F, H, L, M (and J on unreliable transports)."""
        return 64 * self.t1


# --------------------------------------------------------------------------- actions


@dataclass(slots=True, unsafe_hash=True)
class Transmit:
    """Pass ``data`` to the transport (a request, a response or an ACK)."""

    data: bytes


@dataclass(slots=True, unsafe_hash=True)
class Deliver:
    """Pass a response up to the TU (client transactions only)."""

    data: bytes
    status: int


@dataclass(slots=True, unsafe_hash=True)
class TimedOut:
    """Timer B, F or H fired: tell the TU the transaction failed (RFC 3261 §17.1.1.2,
    §17.1.2.2, §17.2.1). For B/F the TU acts as if it got a 408 (§8.1.3.1)."""


@dataclass(slots=True, unsafe_hash=True)
class TransportFailed:
    """The transport could not send what this transaction sent (RFC 3261 §17.1.4,
    §17.2.4). On a client transaction the TU acts as if it got a 503 (§8.1.3.1, §16.9)."""


@dataclass(slots=True, unsafe_hash=True)
class Terminated:
    """The transaction is over: forget it. Emitted exactly once."""


Action: TypeAlias = Transmit | Deliver | TimedOut | TransportFailed | Terminated


# ------------------------------------------------------------------ states and events


class State(enum.Enum):
    """States of all four machines (each machine uses a subset)."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"

    # Members are singletons: identity hashing, in C (Enum's own hashes the name in
    # Python, and the state tables are looked up on every message).
    __hash__ = object.__hash__


class Event(enum.Enum):
    """Inputs of the machines, named as on the RFC figures."""

    START = "request from TU"
    RECV_1XX = "1xx"
    RECV_2XX = "2xx"
    RECV_3XX_6XX = "300-699"
    REQUEST = "request retransmission"
    ACK = "ACK"
    SEND_1XX = "1xx from TU"
    SEND_2XX = "2xx from TU"
    SEND_3XX_6XX = "300-699 from TU"
    TIMER_A = "Timer A"
    TIMER_B = "Timer B"
    TIMER_D = "Timer D"
    TIMER_E = "Timer E"
    TIMER_F = "Timer F"
    TIMER_G = "Timer G"
    TIMER_H = "Timer H"
    TIMER_I = "Timer I"
    TIMER_J = "Timer J"
    TIMER_K = "Timer K"
    TIMER_L = "Timer L"
    TIMER_M = "Timer M"
    TRANSPORT_ERROR = "transport error"

    __hash__ = object.__hash__


# TU sends that a machine has no arc for are caller bugs; every other input without an
# arc is absorbed, as the RFC requires for stray network input.
_TU_SENDS: Final = frozenset({Event.SEND_1XX, Event.SEND_2XX, Event.SEND_3XX_6XX})


def _response_event(status: int, *, sent_by_tu: bool) -> Event:
    if not isinstance(status, int) or not 100 <= status <= 699:
        raise TransactionError(f"status code must be within 100-699, got {status!r}")
    if status < 200:
        return Event.SEND_1XX if sent_by_tu else Event.RECV_1XX
    if status < 300:
        return Event.SEND_2XX if sent_by_tu else Event.RECV_2XX
    return Event.SEND_3XX_6XX if sent_by_tu else Event.RECV_3XX_6XX


# ------------------------------------------------------------------- shared machinery


class _Input(NamedTuple):
    now: float
    status: int = 0
    data: bytes = b""


class _Transaction:
    """Timer bookkeeping shared by client and server transactions."""

    _state: State

    def __init__(self, *, invite: bool, reliable: bool, timers: Timers) -> None:
        self.invite: Final = invite
        self.reliable: Final = reliable
        self.timers: Final = timers
        self._deadlines: dict[Event, float] = {}
        self._intervals: dict[Event, float] = {}  # current interval of A, E, G

    @property
    def state(self) -> State:
        """The current state; only inputs move it."""
        return self._state

    @property
    def deadline(self) -> float | None:
        """The earliest armed timer, or None: call ``expire`` then."""
        return min(self._deadlines.values(), default=None)

    @property
    def armed(self) -> dict[str, float]:
        """Armed timers by letter ("A", "B", …) → deadline. A copy, for inspection."""
        return {timer.value.removeprefix("Timer "): at for timer, at in self._deadlines.items()}

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def expire(self, now: float) -> list[Action]:
        """Fire every timer whose deadline is <= now, earliest first.

        Ties are broken by timer letter, so the outcome never depends on dict order.
        A timer re-armed while firing is considered again, so a single call catches up.
        """
        actions: list[Action] = []
        while self.state is not State.TERMINATED:
            due = [(at, timer.value, timer) for timer, at in self._deadlines.items() if at <= now]
            if not due:
                break
            _, _, timer = min(due)
            del self._deadlines[timer]
            actions.extend(self._handle(timer, _Input(now)))
        return actions

    # Subclasses route an event through their machine's table.
    def _handle(self, event: Event, inp: _Input) -> list[Action]:
        raise NotImplementedError

    def _arm(self, timer: Event, duration: float, now: float) -> list[Action]:
        """Arm ``timer``; a zero duration fires it at once (see the module docstring)."""
        if duration <= 0:
            self._deadlines.pop(timer, None)
            return self._handle(timer, _Input(now))
        self._deadlines[timer] = now + duration
        return []

    def _arm_retransmit(self, timer: Event, interval: float, now: float) -> None:
        # A, E and G exist only on unreliable transports (RFC 3261 §17.1.1.2, §17.1.2.2,
        # §17.2.1): a reliable transport retransmits by itself.
        if not self.reliable:
            self._intervals[timer] = interval
            self._deadlines[timer] = now + interval

    def _rearm_doubling(self, timer: Event, now: float, *, cap: float | None) -> None:
        interval = 2 * self._intervals[timer]
        if cap is not None:
            interval = min(interval, cap)
        self._intervals[timer] = interval
        self._deadlines[timer] = now + interval

    def _keep_only(self, live: frozenset[Event]) -> None:
        for timer in [t for t in self._deadlines if t not in live]:
            del self._deadlines[timer]


_T = TypeVar("_T", bound=_Transaction)
_Handler: TypeAlias = Callable[[_T, _Input], list[Action]]


class _Machine(Generic[_T]):
    """One RFC figure: (state, event) → (next state, what to do on that arc).

    ``live_timers`` says which timers may stay armed in a state; leaving a state cancels
    the others, which is how the figures' "timer X is ignored in this state" reads.
    (A plain class: mypyc cannot build a generic frozen dataclass.)
    """

    __slots__ = ("live_timers", "name", "transitions")

    def __init__(
        self,
        name: str,
        transitions: Mapping[tuple[State, Event], tuple[State, _Handler[_T]]],
        live_timers: Mapping[State, frozenset[Event]],
    ) -> None:
        self.name: Final = name
        self.transitions: Final = transitions
        self.live_timers: Final = live_timers


def _dispatch(tx: _T, machine: _Machine[_T], event: Event, inp: _Input) -> list[Action]:
    if tx.state is State.TERMINATED:
        return []  # a terminated transaction no longer exists for the network or the TU
    step = machine.transitions.get((tx.state, event))
    if step is None:
        if event in _TU_SENDS:
            raise TransactionError(
                f"{machine.name}: cannot send a {inp.status} response in state {tx.state.value}"
            )
        return []  # no arc on the figure: absorbed
    target, handler = step
    entering = target is not tx.state
    if entering:
        tx._state = target
        tx._keep_only(machine.live_timers.get(target, frozenset()))
    # The handler runs in the target state so that a zero-duration timer it arms can
    # take the next arc (to Terminated) straight away.
    actions = handler(tx, inp)
    if entering and target is State.TERMINATED:
        tx._deadlines.clear()
        actions.append(Terminated())
    return actions


def _nothing(tx: _Transaction, inp: _Input) -> list[Action]:
    return []


def _time_out(tx: _Transaction, inp: _Input) -> list[Action]:
    return [TimedOut()]


def _transport_failed(tx: _Transaction, inp: _Input) -> list[Action]:
    return [TransportFailed()]


# ------------------------------------------------------------------ client transaction


class ClientTransaction(_Transaction):
    """RFC 3261 §17.1: sends a request and follows its responses.

    ``make_ack(final_response_bytes) -> ack_bytes`` builds the ACK for a non-2xx final
    response (RFC 3261 §17.1.1.3); it is required for INVITE. The ACK is built once, from
    the first final response, and re-sent for every retransmission of that response.
    """

    def __init__(
        self,
        request: bytes,
        *,
        invite: bool,
        reliable: bool,
        timers: Timers,
        now: float,
        make_ack: Callable[[bytes], bytes] | None = None,
    ) -> None:
        super().__init__(invite=invite, reliable=reliable, timers=timers)
        if invite and make_ack is None:
            raise TransactionError("an INVITE client transaction needs make_ack")
        self.request: Final = request
        self.created_at: Final = now
        self._make_ack = make_ack
        self._ack: bytes | None = None
        self._started = False
        self._machine: _Machine[ClientTransaction] = (
            _INVITE_CLIENT if invite else _NON_INVITE_CLIENT
        )
        self._state = State.CALLING if invite else State.TRYING

    # -- inputs

    def start(self) -> list[Action]:
        """Send the request and arm A/B (INVITE) or E/F (non-INVITE), at ``created_at``."""
        if self._started:
            raise TransactionError("start() called twice")
        self._started = True
        return self._handle(Event.START, _Input(self.created_at))

    def on_response(self, status: int, data: bytes, now: float) -> list[Action]:
        """A response matched to this transaction (RFC 3261 §17.1.3) arrived."""
        self._require_started()
        event = _response_event(status, sent_by_tu=False)
        return self._handle(event, _Input(now, status, data))

    def on_transport_error(self, now: float) -> list[Action]:
        """The transport failed to send the request or the ACK (RFC 3261 §17.1.4)."""
        self._require_started()
        return self._handle(Event.TRANSPORT_ERROR, _Input(now))

    # -- machinery

    def _require_started(self) -> None:
        if not self._started:
            raise TransactionError("the client transaction has not been started")

    def _handle(self, event: Event, inp: _Input) -> list[Action]:
        return _dispatch(self, self._machine, event, inp)

    # -- arc actions (named after the figures' labels)

    def _send_request(self, inp: _Input) -> list[Action]:
        first, timeout = (
            (Event.TIMER_A, Event.TIMER_B) if self.invite else (Event.TIMER_E, Event.TIMER_F)
        )
        self._arm_retransmit(first, self.timers.t1, inp.now)
        return [Transmit(self.request), *self._arm(timeout, self.timers.timeout, inp.now)]

    def _retransmit_invite(self, inp: _Input) -> list[Action]:
        # RFC 3261 §17.1.1.2: A doubles each time, with no cap; B bounds it.
        self._rearm_doubling(Event.TIMER_A, inp.now, cap=None)
        return [Transmit(self.request)]

    def _retransmit_request(self, inp: _Input) -> list[Action]:
        # RFC 3261 §17.1.2.2: E doubles up to T2 while Trying; once a provisional
        # response arrived (Proceeding) it is reset to T2 every time.
        if self.state is State.PROCEEDING:
            self._intervals[Event.TIMER_E] = self.timers.t2
            self._deadlines[Event.TIMER_E] = inp.now + self.timers.t2
        else:
            self._rearm_doubling(Event.TIMER_E, inp.now, cap=self.timers.t2)
        return [Transmit(self.request)]

    def _deliver(self, inp: _Input) -> list[Action]:
        return [Deliver(inp.data, inp.status)]

    def _accept(self, inp: _Input) -> list[Action]:
        # RFC 6026 §8.4: stay Accepted for 64*T1 so 2xx retransmissions (and 2xx from
        # other forks) still match this transaction and reach the TU.
        return [
            Deliver(inp.data, inp.status),
            *self._arm(Event.TIMER_M, self.timers.timeout, inp.now),
        ]

    def _ack_and_deliver(self, inp: _Input) -> list[Action]:
        # RFC 3261 §17.1.1.3: the transaction itself ACKs a non-2xx final response;
        # Timer D then absorbs its retransmissions (>= 32 s over UDP, 0 over TCP).
        assert self._make_ack is not None  # enforced by __init__ for INVITE
        self._ack = self._make_ack(inp.data)
        wait = 0.0 if self.reliable else max(self.timers.timeout, 32.0)
        return [
            Transmit(self._ack),
            Deliver(inp.data, inp.status),
            *self._arm(Event.TIMER_D, wait, inp.now),
        ]

    def _resend_ack(self, inp: _Input) -> list[Action]:
        # A retransmitted final response means our ACK was lost: send it again, but the
        # TU already has the response.
        assert self._ack is not None  # Completed is only entered through _ack_and_deliver
        return [Transmit(self._ack)]

    def _deliver_final(self, inp: _Input) -> list[Action]:
        # RFC 3261 §17.1.2.2: Timer K (T4 over UDP, 0 over TCP) absorbs retransmissions.
        wait = 0.0 if self.reliable else self.timers.t4
        return [Deliver(inp.data, inp.status), *self._arm(Event.TIMER_K, wait, inp.now)]


# ------------------------------------------------------------------ server transaction


class ServerTransaction(_Transaction):
    """RFC 3261 §17.2: sends the TU's responses for a received request.

    Created by the caller when a new request arrives (the caller passes that request to
    its TU itself). Starts in Proceeding (INVITE) or Trying (non-INVITE). Sending 100
    Trying for an INVITE (§17.2.1, §16.2) is the TU's job: ``send_response(100, …)``.
    """

    def __init__(self, *, invite: bool, reliable: bool, timers: Timers, now: float) -> None:
        super().__init__(invite=invite, reliable=reliable, timers=timers)
        self.created_at: Final = now
        self._last_response: bytes | None = None
        self._machine: _Machine[ServerTransaction] = (
            _INVITE_SERVER if invite else _NON_INVITE_SERVER
        )
        self._state = State.PROCEEDING if invite else State.TRYING

    # -- inputs

    def on_request(self, now: float, *, is_ack: bool = False) -> list[Action]:
        """A retransmission of the request, or (INVITE) the ACK for a non-2xx final.

        An ACK never matches a non-INVITE transaction (§17.2.3); it is absorbed.
        """
        return self._handle(Event.ACK if is_ack else Event.REQUEST, _Input(now))

    def send_response(self, status: int, data: bytes, now: float) -> list[Action]:
        """The TU sends a response. Illegal in the current state → TransactionError.

        After Terminated it returns [] instead: the transaction is gone, and a late
        response from a downstream branch is not a bug of the caller.
        """
        event = _response_event(status, sent_by_tu=True)
        return self._handle(event, _Input(now, status, data))

    def on_transport_error(self, now: float) -> list[Action]:
        """The transport failed to send a response (RFC 3261 §17.2.4)."""
        return self._handle(Event.TRANSPORT_ERROR, _Input(now))

    # -- machinery

    def _handle(self, event: Event, inp: _Input) -> list[Action]:
        return _dispatch(self, self._machine, event, inp)

    # -- arc actions

    def _send(self, inp: _Input) -> list[Action]:
        self._last_response = inp.data
        return [Transmit(inp.data)]

    def _resend_last(self, inp: _Input) -> list[Action]:
        # §17.2.1/§17.2.2: a request retransmission is answered with the most recent
        # response; before any response there is nothing to send.
        return [] if self._last_response is None else [Transmit(self._last_response)]

    def _send_rejection(self, inp: _Input) -> list[Action]:
        # §17.2.1: G retransmits the final response over UDP; H bounds the wait for ACK.
        actions = self._send(inp)
        self._arm_retransmit(Event.TIMER_G, self.timers.t1, inp.now)
        return actions + self._arm(Event.TIMER_H, self.timers.timeout, inp.now)

    def _send_acceptance(self, inp: _Input) -> list[Action]:
        # RFC 6026 §8.7: Accepted absorbs INVITE retransmissions for 64*T1 (Timer L)
        # instead of letting them look like new requests.
        return self._send(inp) + self._arm(Event.TIMER_L, self.timers.timeout, inp.now)

    def _retransmit_response(self, inp: _Input) -> list[Action]:
        self._rearm_doubling(Event.TIMER_G, inp.now, cap=self.timers.t2)
        return self._resend_last(inp)

    def _confirm(self, inp: _Input) -> list[Action]:
        # §17.2.1: Timer I absorbs ACK retransmissions (T4 over UDP, 0 over TCP).
        wait = 0.0 if self.reliable else self.timers.t4
        return self._arm(Event.TIMER_I, wait, inp.now)

    def _send_final(self, inp: _Input) -> list[Action]:
        # §17.2.2: Timer J absorbs request retransmissions (64*T1 over UDP, 0 over TCP).
        wait = 0.0 if self.reliable else self.timers.timeout
        return self._send(inp) + self._arm(Event.TIMER_J, wait, inp.now)


# =========================================================================== tables
#
# Each table is keyed by (state, event) and gives (next state, arc action). A (state,
# event) pair that is not in a table is absorbed ([]), except a TU send, which raises
# TransactionError. Terminated has no arcs: every input returns [].

_S = State
_E = Event

# RFC 3261 Figure 5 (INVITE client transaction) as amended by RFC 6026 §8.4:
#
#                                |INVITE from TU
#              Timer A fires     |INVITE sent
#              Reset A,          V                      Timer B fires
#              INVITE sent +-----------+                or Transport Err.
#                +---------|           |---------------+inform TU
#                |         |  Calling  |               |
#                +-------->|           |-------------->|
#                          +-----------+ 2xx           |
#                             |  |       2xx to TU     |
#                             |  |1xx                  |
#     300-699 +---------------+  |1xx to TU            |
#    ACK sent |                  |                     |
# resp. to TU |  1xx             V                     |
#             |  1xx to TU  -----------+               |
#             |  +---------|           |               |
#             |  |         |Proceeding |-------------->|
#             |  +-------->|           | 2xx           |
#             |            +-----------+ 2xx to TU     |
#             |       300-699    |                     |
#             |       ACK sent,  |                     |
#             |       resp. to TU|                     |
#             |                  |                     |
#             |  300-699         V                     |
#             |  ACK sent  +-----------+Transport Err. |
#             |  +---------|           |Inform TU      |
#             |  |         | Completed |-------------->|
#             |  +-------->|           |               |
#             |            +-----------+               |
#             |              ^   |                     |
#             |              |   | Timer D fires       |
#             +--------------+   | -                   |
#                                |                     |
#                                V                     |
#                          +-----------+               |
#                          |           |               |
#                          | Terminated|<--------------+
#                          |           |
#                          +-----------+
#
# RFC 6026 replaces both "2xx / 2xx to TU" arcs into Terminated with arcs into a new
# Accepted state:
#
#        2xx (from Calling or Proceeding)
#        2xx to TU        +-----------+  2xx
#       ----------------->|           |  2xx to TU
#                         | Accepted  |------+
#                         |           |<-----+
#                         +-----------+
#                               | Timer M fires
#                               | -
#                               V
#                          Terminated

_INVITE_CLIENT: _Machine[ClientTransaction] = _Machine(
    name="INVITE client",
    transitions={
        (_S.CALLING, _E.START): (_S.CALLING, ClientTransaction._send_request),
        (_S.CALLING, _E.TIMER_A): (_S.CALLING, ClientTransaction._retransmit_invite),
        (_S.CALLING, _E.TIMER_B): (_S.TERMINATED, _time_out),
        (_S.CALLING, _E.TRANSPORT_ERROR): (_S.TERMINATED, _transport_failed),
        (_S.CALLING, _E.RECV_1XX): (_S.PROCEEDING, ClientTransaction._deliver),
        (_S.CALLING, _E.RECV_2XX): (_S.ACCEPTED, ClientTransaction._accept),
        (_S.CALLING, _E.RECV_3XX_6XX): (_S.COMPLETED, ClientTransaction._ack_and_deliver),
        (_S.PROCEEDING, _E.RECV_1XX): (_S.PROCEEDING, ClientTransaction._deliver),
        (_S.PROCEEDING, _E.RECV_2XX): (_S.ACCEPTED, ClientTransaction._accept),
        (_S.PROCEEDING, _E.RECV_3XX_6XX): (_S.COMPLETED, ClientTransaction._ack_and_deliver),
        (_S.COMPLETED, _E.RECV_3XX_6XX): (_S.COMPLETED, ClientTransaction._resend_ack),
        (_S.COMPLETED, _E.TRANSPORT_ERROR): (_S.TERMINATED, _transport_failed),
        (_S.COMPLETED, _E.TIMER_D): (_S.TERMINATED, _nothing),
        (_S.ACCEPTED, _E.RECV_2XX): (_S.ACCEPTED, ClientTransaction._deliver),
        (_S.ACCEPTED, _E.TIMER_M): (_S.TERMINATED, _nothing),
    },
    live_timers={
        _S.CALLING: frozenset({_E.TIMER_A, _E.TIMER_B}),
        _S.COMPLETED: frozenset({_E.TIMER_D}),
        _S.ACCEPTED: frozenset({_E.TIMER_M}),
    },
)

# RFC 3261 Figure 6 (non-INVITE client transaction):
#
#                                    |Request from TU
#                                    |send request
#                Timer E             V
#                send request  +-----------+
#                    +---------|           |-------------------+
#                    |         |  Trying   |  Timer F          |
#                    +-------->|           |  or Transport Err.|
#                              +-----------+  inform TU        |
#                 200-699         |  |                         |
#                 resp. to TU     |  |1xx                      |
#                 +---------------+  |resp. to TU              |
#                 |                  |                         |
#                 |   Timer E        V       Timer F           |
#                 |   send req +-----------+ or Transport Err. |
#                 |  +---------|           | inform TU         |
#                 |  |         |Proceeding |------------------>|
#                 |  +-------->|           |-----+             |
#                 |            +-----------+     |1xx          |
#                 |              |      ^        |resp to TU   |
#                 | 200-699      |      +--------+             |
#                 | resp. to TU  |                             |
#                 |              |                             |
#                 |              V                             |
#                 |            +-----------+                   |
#                 |            |           |                   |
#                 |            | Completed |                   |
#                 |            |           |                   |
#                 |            +-----------+                   |
#                 |              ^   |                         |
#                 |              |   | Timer K                 |
#                 +--------------+   | -                       |
#                                    |                         |
#                                    V                         |
#              NOTE:           +-----------+                   |
#                              |           |                   |
#          transitions         | Terminated|<------------------+
#          labeled with        |           |
#          the event           +-----------+
#          over the action
#          to take

_NON_INVITE_CLIENT: _Machine[ClientTransaction] = _Machine(
    name="non-INVITE client",
    transitions={
        (_S.TRYING, _E.START): (_S.TRYING, ClientTransaction._send_request),
        (_S.TRYING, _E.TIMER_E): (_S.TRYING, ClientTransaction._retransmit_request),
        (_S.TRYING, _E.TIMER_F): (_S.TERMINATED, _time_out),
        (_S.TRYING, _E.TRANSPORT_ERROR): (_S.TERMINATED, _transport_failed),
        (_S.TRYING, _E.RECV_1XX): (_S.PROCEEDING, ClientTransaction._deliver),
        (_S.TRYING, _E.RECV_2XX): (_S.COMPLETED, ClientTransaction._deliver_final),
        (_S.TRYING, _E.RECV_3XX_6XX): (_S.COMPLETED, ClientTransaction._deliver_final),
        (_S.PROCEEDING, _E.TIMER_E): (_S.PROCEEDING, ClientTransaction._retransmit_request),
        (_S.PROCEEDING, _E.TIMER_F): (_S.TERMINATED, _time_out),
        (_S.PROCEEDING, _E.TRANSPORT_ERROR): (_S.TERMINATED, _transport_failed),
        (_S.PROCEEDING, _E.RECV_1XX): (_S.PROCEEDING, ClientTransaction._deliver),
        (_S.PROCEEDING, _E.RECV_2XX): (_S.COMPLETED, ClientTransaction._deliver_final),
        (_S.PROCEEDING, _E.RECV_3XX_6XX): (_S.COMPLETED, ClientTransaction._deliver_final),
        (_S.COMPLETED, _E.TIMER_K): (_S.TERMINATED, _nothing),
    },
    live_timers={
        _S.TRYING: frozenset({_E.TIMER_E, _E.TIMER_F}),
        _S.PROCEEDING: frozenset({_E.TIMER_E, _E.TIMER_F}),
        _S.COMPLETED: frozenset({_E.TIMER_K}),
    },
)

# RFC 3261 Figure 7 (INVITE server transaction) as replaced by RFC 6026 §8.7:
#
#                                   |INVITE
#                                   |pass INV to TU
#                INVITE             V send 100 if TU won't in 200 ms
#                send response+------------+
#                    +--------|            |--------+ 101-199 from TU
#                    |        |            |        | send response
#                    +------->|            |<-------+
#                             | Proceeding |
#                             |            |--------+ Transport Err.
#                             |            |        | Inform TU
#                             |            |<-------+
#                             +------------+
#                300-699 from TU |    |2xx from TU
#                send response   |    |send response
#                 +--------------+    +------------+
#                 |                                |
# INVITE          V          Timer G fires         |
# send response +-----------+ send response        |
#      +--------|           |--------+             |
#      |        |           |        |             |
#      +------->| Completed |<-------+      INVITE |  Transport Err.
#               |           |               -      |  Inform TU
#      +--------|           |----+          +-----+|  +---+
#      |        +-----------+    | ACK      |     |v  |   v
#      |          ^   |          | -        |  +------------+
#      |          |   |          |          |  |            |---+ ACK
#      +----------+   |          |          +->|  Accepted  |   | to TU
#      Transport Err. |          |             |            |<--+
#      Inform TU      |          V             +------------+
#                     |      +-----------+        |  ^     |
#                     |      |           |        |  |     |
#                     |      | Confirmed |        |  +-----+
#                     |      |           |        |  2xx from TU
#       Timer H fires |      +-----------+        |  send response
#       -             |          |                |
#                     |          | Timer I fires  |
#                     |          | -              | Timer L fires
#                     |          V                | -
#                     |        +------------+     |
#                     |        |            |<----+
#                     +------->| Terminated |
#                              |            |
#                              +------------+
#
# Notes: RFC 6026 turns "Transport Err." into self-loops (inform the TU, stay) so the
# transaction keeps absorbing retransmissions; Timer H still ends it. Timer H also
# informs the TU (RFC 3261 §17.2.1: "MUST indicate to the TU that a transaction failure
# has occurred"), hence TimedOut. "ACK / to TU" in Accepted produces no action here: the
# caller passes 2xx ACKs on end to end itself; the transaction only absorbs them.

_INVITE_SERVER: _Machine[ServerTransaction] = _Machine(
    name="INVITE server",
    transitions={
        (_S.PROCEEDING, _E.REQUEST): (_S.PROCEEDING, ServerTransaction._resend_last),
        (_S.PROCEEDING, _E.SEND_1XX): (_S.PROCEEDING, ServerTransaction._send),
        (_S.PROCEEDING, _E.SEND_2XX): (_S.ACCEPTED, ServerTransaction._send_acceptance),
        (_S.PROCEEDING, _E.SEND_3XX_6XX): (_S.COMPLETED, ServerTransaction._send_rejection),
        (_S.PROCEEDING, _E.TRANSPORT_ERROR): (_S.PROCEEDING, _transport_failed),
        (_S.COMPLETED, _E.REQUEST): (_S.COMPLETED, ServerTransaction._resend_last),
        (_S.COMPLETED, _E.TIMER_G): (_S.COMPLETED, ServerTransaction._retransmit_response),
        (_S.COMPLETED, _E.TIMER_H): (_S.TERMINATED, _time_out),
        (_S.COMPLETED, _E.ACK): (_S.CONFIRMED, ServerTransaction._confirm),
        (_S.COMPLETED, _E.TRANSPORT_ERROR): (_S.COMPLETED, _transport_failed),
        (_S.CONFIRMED, _E.TIMER_I): (_S.TERMINATED, _nothing),
        (_S.ACCEPTED, _E.SEND_2XX): (_S.ACCEPTED, ServerTransaction._send),
        (_S.ACCEPTED, _E.TIMER_L): (_S.TERMINATED, _nothing),
        (_S.ACCEPTED, _E.TRANSPORT_ERROR): (_S.ACCEPTED, _transport_failed),
    },
    live_timers={
        _S.COMPLETED: frozenset({_E.TIMER_G, _E.TIMER_H}),
        _S.CONFIRMED: frozenset({_E.TIMER_I}),
        _S.ACCEPTED: frozenset({_E.TIMER_L}),
    },
)

# RFC 3261 Figure 8 (non-INVITE server transaction):
#
#                                   |Request received
#                                   |pass to TU
#                                   V
#                             +-----------+
#                             |           |
#                             | Trying    |-------------+
#                             |           |             |
#                             +-----------+             |200-699 from TU
#                                   |                   |send response
#                                   |1xx from TU        |
#                                   |send response      |
#                                   |                   |
#                Request            V      1xx from TU  |
#                send response+-----------+send response|
#                    +--------|           |--------+    |
#                    |        | Proceeding|        |    |
#                    +------->|           |<-------+    |
#             +<--------------|           |             |
#             |Trnsprt Err    +-----------+             |
#             |Inform TU            |                   |
#             |                     |                   |
#             |                     |200-699 from TU    |
#             |                     |send response      |
#             |  Request            V                   |
#             |  send response+-----------+             |
#             |      +--------|           |             |
#             |      |        | Completed |<------------+
#             |      +------->|           |
#             +<--------------|           |
#             |Trnsprt Err    +-----------+
#             |Inform TU            |
#             |                     |Timer J fires
#             |                     |-
#             |                     |
#             |                     V
#             |               +-----------+
#             |               |           |
#             +-------------->| Terminated|
#                             |           |
#                             +-----------+
#
# In Trying, request retransmissions are discarded (§17.2.2): nothing was sent yet.

_NON_INVITE_SERVER: _Machine[ServerTransaction] = _Machine(
    name="non-INVITE server",
    transitions={
        (_S.TRYING, _E.SEND_1XX): (_S.PROCEEDING, ServerTransaction._send),
        (_S.TRYING, _E.SEND_2XX): (_S.COMPLETED, ServerTransaction._send_final),
        (_S.TRYING, _E.SEND_3XX_6XX): (_S.COMPLETED, ServerTransaction._send_final),
        (_S.PROCEEDING, _E.REQUEST): (_S.PROCEEDING, ServerTransaction._resend_last),
        (_S.PROCEEDING, _E.SEND_1XX): (_S.PROCEEDING, ServerTransaction._send),
        (_S.PROCEEDING, _E.SEND_2XX): (_S.COMPLETED, ServerTransaction._send_final),
        (_S.PROCEEDING, _E.SEND_3XX_6XX): (_S.COMPLETED, ServerTransaction._send_final),
        (_S.PROCEEDING, _E.TRANSPORT_ERROR): (_S.TERMINATED, _transport_failed),
        (_S.COMPLETED, _E.REQUEST): (_S.COMPLETED, ServerTransaction._resend_last),
        (_S.COMPLETED, _E.TIMER_J): (_S.TERMINATED, _nothing),
        (_S.COMPLETED, _E.TRANSPORT_ERROR): (_S.TERMINATED, _transport_failed),
    },
    live_timers={
        _S.COMPLETED: frozenset({_E.TIMER_J}),
    },
)
