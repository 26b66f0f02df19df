"""The transaction layer's timers: one live queue entry per transaction, and a queue
entry superseded by an earlier deadline does nothing when it fires."""

from __future__ import annotations

from typing import Any

from gateway.proxy.timers import TimerQueue
from gateway.proxy.tm import ClientEntry, TransactionLayer
from gateway.sip.message import Response, parse_message
from gateway.sip.transaction import Timers
from gateway.transport.addresses import Target

OPTIONS = (
    b"OPTIONS sip:peer@127.0.0.1:5070 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-tm-1\r\n"
    b"From: <sip:gw@127.0.0.1>;tag=a\r\nTo: <sip:peer@127.0.0.1>\r\n"
    b"Call-ID: tm-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class User:
    def __init__(self) -> None:
        self.ended_at: list[float] = []
        self.clock: Clock | None = None

    def txn_response(self, owner: Any, status: int, data: bytes, resp: Response | None) -> None:
        pass

    def txn_failed(self, owner: Any, status: int) -> None:
        raise AssertionError(f"failed with {status}")

    def txn_ended(self, owner: Any) -> None:
        assert self.clock is not None
        self.ended_at.append(self.clock.now)


def answer(status: int, reason: str) -> Response:
    head = OPTIONS.split(b"\r\n", 1)[1]
    resp = parse_message(f"SIP/2.0 {status} {reason}\r\n".encode() + head)
    assert isinstance(resp, Response)
    return resp


def run_until(queue: TimerQueue, clock: Clock, end: float) -> None:
    while (deadline := queue.next_deadline()) is not None and deadline <= end:
        clock.now = max(clock.now, deadline)
        queue.fire(clock.now)
    clock.now = end


def start(
    timers: Timers,
) -> tuple[TransactionLayer, ClientEntry, TimerQueue, Clock, User, list[float]]:
    clock, queue, user, sent = Clock(), TimerQueue(), User(), []
    user.clock = clock
    layer = TransactionLayer(queue=queue, timers=timers, clock=clock)

    def send(data: bytes, target: Target, on_error: Any) -> None:
        sent.append(clock.now)

    entry = layer.start_client(
        "z9hG4bK-tm-1", "OPTIONS", OPTIONS, Target("udp", "127.0.0.1", 5070),
        send=send, user=user, owner=None,
    )  # fmt: skip
    return layer, entry, queue, clock, user, sent


def test_a_deadline_moved_earlier_is_kept_and_the_superseded_entry_does_nothing() -> None:
    # Timer E retransmits at 0.5, 1, 2, 4 s intervals; the final answer arms Timer K
    # (T4, here 1 s), sooner than the queued retransmission: a second queue entry.
    layer, entry, queue, clock, user, sent = start(Timers(t4=1.0))
    run_until(queue, clock, 104.0)
    assert sent == [100.0, 100.5, 101.5, 103.5]  # the next one is queued for 107.5
    layer.receive(entry, answer(200, "OK"))
    assert len(queue) == 2
    run_until(queue, clock, 200.0)
    assert user.ended_at == [105.0]  # Timer K, at the earlier deadline
    assert sent == [100.0, 100.5, 101.5, 103.5]  # the 107.5 entry retransmitted nothing
    assert len(queue) == 0 and not layer.client


def test_a_deadline_moved_later_is_queued_by_the_entry_already_there() -> None:
    layer, entry, queue, clock, user, sent = start(Timers(t4=5.0))
    run_until(queue, clock, 104.0)
    layer.receive(entry, answer(200, "OK"))  # Timer K at 109, after the queued 107.5
    assert len(queue) == 1
    run_until(queue, clock, 108.0)
    assert queue.next_deadline() == 109.0 and not user.ended_at
    run_until(queue, clock, 200.0)
    assert user.ended_at == [109.0]
    assert sent == [100.0, 100.5, 101.5, 103.5]
