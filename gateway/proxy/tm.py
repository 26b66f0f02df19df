"""The one client-transaction layer, like Kamailio's tm: every request the gateway sends
in a transaction (the proxy's branches and their CANCELs, the click-to-dial user
agent's INVITEs and in-dialog requests, the prober's OPTIONS) is kept in one table,
matched here to its responses (RFC 3261 §17.1.3: the top Via's branch and the CSeq
method), carried out by one action loop, and reported to its owner.

A transaction's owner is any object; its *user* (the proxy, the user agent, the prober)
gets the owner back with each outcome:

- ``txn_response(owner, status, data, resp)``: a response for the transaction user
  (§17.1: provisional ones, the final one, RFC 6026's later 2xx);
- ``txn_failed(owner, status)``: 408 when the transaction timed out (Timer B/F), 503
  when the transport failed (§17.1.4);
- ``txn_ended(owner)``: the transaction is over and gone from the table.

Sans-I/O like the machines it drives (`sip/transaction.py`): it sends through the
callable each transaction is started with and keeps its deadlines in the proxy's
`TimerQueue`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from gateway.proxy.timers import TimerQueue
from gateway.sip.message import Response
from gateway.sip.transaction import (
    Action,
    ClientTransaction,
    Deliver,
    Terminated,
    TimedOut,
    Timers,
    Transmit,
    TransportFailed,
)
from gateway.transport.addresses import Target

OnError = Callable[[], None]
Send = Callable[[bytes, Target, OnError | None], object]


class TransactionUser(Protocol):
    def txn_response(self, owner: Any, status: int, data: bytes, resp: Response | None) -> None: ...

    def txn_failed(self, owner: Any, status: int) -> None: ...

    def txn_ended(self, owner: Any) -> None: ...


class ClientEntry:
    """One client transaction in the table: its machine, where it sends, for whom."""

    __slots__ = ("key", "owner", "send", "target", "timer_at", "txn", "user")

    def __init__(
        self,
        key: tuple[str, str],
        txn: ClientTransaction,
        target: Target,
        send: Send,
        user: TransactionUser,
        owner: object,
    ) -> None:
        self.key = key
        self.txn = txn
        self.target = target
        self.send = send
        self.user = user
        self.owner = owner
        self.timer_at: float | None = None


class TransactionLayer:
    def __init__(self, *, queue: TimerQueue, timers: Timers, clock: Callable[[], float]) -> None:
        self.queue = queue
        self.timers = timers
        self.clock = clock
        self.client: dict[tuple[str, str], ClientEntry] = {}

    def start_client(
        self,
        branch: str,
        method: str,
        data: bytes,
        target: Target,
        *,
        send: Send,
        user: TransactionUser,
        owner: object,
        make_ack: Callable[[bytes], bytes] | None = None,
    ) -> ClientEntry:
        """Create the transaction, put it in the table and send the request."""
        txn = ClientTransaction(
            data,
            invite=method == "INVITE",
            reliable=target.reliable,
            timers=self.timers,
            now=self.clock(),
            make_ack=make_ack,
        )
        entry = ClientEntry((branch, method), txn, target, send, user, owner)
        self.client[entry.key] = entry
        self._run(entry, txn.start())
        return entry

    def match(self, resp: Response) -> ClientEntry | None:
        """The transaction a response belongs to (§17.1.3), or None."""
        return self.client.get((resp.top_via.branch or "", resp.cseq.method))

    def receive(self, entry: ClientEntry, resp: Response) -> None:
        """A response matched to ``entry``."""
        actions = entry.txn.on_response(resp.status, resp.to_bytes(), self.clock())
        self._run(entry, actions, resp)

    def forget(self, entry: ClientEntry) -> None:
        """Drop a transaction whose outcome nobody waits for any more (its timers then
        find it gone)."""
        if self.client.get(entry.key) is entry:
            del self.client[entry.key]

    def __len__(self) -> int:
        return len(self.client)

    # -- the action loop ------------------------------------------------------------------
    def _run(self, entry: ClientEntry, actions: list[Action], resp: Response | None = None) -> None:
        user, owner = entry.user, entry.owner
        for action in actions:
            if isinstance(action, Transmit):
                entry.send(action.data, entry.target, lambda: self._transport_error(entry))
            elif isinstance(action, Deliver):
                user.txn_response(owner, action.status, action.data, resp)
            elif isinstance(action, TimedOut):
                user.txn_failed(owner, 408)
            elif isinstance(action, TransportFailed):
                user.txn_failed(owner, 503)
            elif isinstance(action, Terminated):
                self.forget(entry)
                user.txn_ended(owner)
        deadline = entry.txn.deadline
        if deadline is not None and deadline != entry.timer_at:
            # One queue entry per new deadline; one whose deadline moved is harmless
            # (expire() fires nothing that is not due).
            entry.timer_at = deadline
            self.queue.schedule(deadline, lambda: self._expire(entry))

    def _transport_error(self, entry: ClientEntry) -> None:
        if self.client.get(entry.key) is entry:
            self._run(entry, entry.txn.on_transport_error(self.clock()))

    def _expire(self, entry: ClientEntry) -> None:
        entry.timer_at = None
        if self.client.get(entry.key) is entry:
            self._run(entry, entry.txn.expire(self.clock()))
