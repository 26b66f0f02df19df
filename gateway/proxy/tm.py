"""The one transaction layer, like Kamailio's tm: every transaction of the gateway is
kept in its tables and run by its action loops.

- Client transactions (RFC 3261 §17.1): the proxy's branches and their CANCELs, the
  click-to-dial user agent's INVITEs and in-dialog requests, the prober's OPTIONS.
  Responses are matched here (§17.1.3: the top Via's branch and the CSeq method).
- Server transactions (§17.2): the requests the proxy handles, and the requests inside
  the user agent's own dialogs, by the key their user computes (§17.2.3).

A transaction's owner is any object; its *user* (the proxy, the user agent, the prober)
gets the owner back with each outcome:

- ``txn_response(owner, status, data, resp)``: a response for the transaction user
  (§17.1: provisional ones, the final one, RFC 6026's later 2xx);
- ``txn_failed(owner, status)``: 408 when the transaction timed out (Timer B/F, or a
  server transaction's final response never acknowledged), 503 when the transport
  failed (§17.1.4);
- ``txn_ended(owner)``: the transaction is over and gone from the table.

Sans-I/O like the machines it drives (`sip/transaction.py`): it sends through the
callable each transaction is started with and keeps its deadlines in the proxy's
`TimerQueue`. An owner that keeps its entry drops it in ``txn_ended`` (the entry
points back at the owner: no cycle may outlive the transaction).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from gateway.proxy.timers import TimerQueue
from gateway.sip.message import Response
from gateway.sip.transaction import (
    Action,
    ClientTransaction,
    Deliver,
    ServerTransaction,
    Terminated,
    TimedOut,
    Timers,
    Transmit,
    TransportFailed,
)
from gateway.transport.addresses import Target

_Txn = TypeVar("_Txn", ClientTransaction, ServerTransaction)
OnError = Callable[[], None]
Send = Callable[[bytes, Target, OnError | None], object]


class TransactionUser(Protocol):
    def txn_response(self, owner: Any, status: int, data: bytes, resp: Response | None) -> None: ...

    def txn_failed(self, owner: Any, status: int) -> None: ...

    def txn_ended(self, owner: Any) -> None: ...


class Entry(Generic[_Txn]):
    """One transaction in a table: its machine, where it sends, for whom."""

    __slots__ = ("key", "owner", "send", "table", "target", "timer_at", "txn", "user")

    def __init__(
        self,
        table: dict[Any, Entry[_Txn]],
        key: tuple[str, ...],
        txn: _Txn,
        target: Target,
        send: Send,
        user: TransactionUser,
        owner: object,
    ) -> None:
        self.table: dict[Any, Entry[_Txn]] = table  # the layer's client or server table
        self.key = key
        self.txn: _Txn = txn
        self.target = target
        self.send = send
        self.user = user
        self.owner = owner
        self.timer_at: float | None = None


ClientEntry = Entry[ClientTransaction]
ServerEntry = Entry[ServerTransaction]


class TransactionLayer:
    def __init__(self, *, queue: TimerQueue, timers: Timers, clock: Callable[[], float]) -> None:
        self.queue = queue
        self.timers = timers
        self.clock = clock
        self.client: dict[tuple[str, ...], ClientEntry] = {}
        self._on_timer = self._expire  # one bound method for every entry's timers
        # Server transactions by their §17.2.3 key (the user computes it: branch,
        # sent-by and method, or RFC 2543's fallback), with the same action loop.
        self.server: dict[tuple[str, ...], ServerEntry] = {}

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
        entry: ClientEntry = Entry(self.client, (branch, method), txn, target, send, user, owner)
        self.client[entry.key] = entry
        self._run(entry, txn.start())
        return entry

    def receive(self, entry: ClientEntry, resp: Response) -> None:
        """A response matched to ``entry``."""
        actions = entry.txn.on_response(resp.status, resp.to_bytes(), self.clock())
        self._run(entry, actions, resp)

    def forget(self, entry: ClientEntry | ServerEntry) -> None:
        """Drop a transaction whose outcome nobody waits for any more (its timers then
        find it gone)."""
        if entry.table.get(entry.key) is entry:
            del entry.table[entry.key]

    def __len__(self) -> int:
        return len(self.client)  # client transactions (server ones: len(self.server))

    # -- server transactions ----------------------------------------------------------------
    def start_server(
        self,
        key: tuple[str, ...],
        *,
        invite: bool,
        reliable: bool,
        target: Target,
        send: Send,
        user: TransactionUser,
        owner: object,
    ) -> ServerEntry:
        txn = ServerTransaction(
            invite=invite, reliable=reliable, timers=self.timers, now=self.clock()
        )
        entry: ServerEntry = Entry(self.server, key, txn, target, send, user, owner)
        self.server[key] = entry
        return entry

    def request_again(self, entry: ServerEntry, *, is_ack: bool = False) -> None:
        """A retransmission of the request (or the ACK of a non-2xx final response)."""
        self._run(entry, entry.txn.on_request(self.clock(), is_ack=is_ack))

    def respond(self, entry: ServerEntry, status: int, data: bytes) -> None:
        """Send a response through the transaction (TransactionError if its state does
        not allow one: a further 2xx goes outside it, RFC 6026)."""
        self._run(entry, entry.txn.send_response(status, data, self.clock()))

    # -- the action loop ------------------------------------------------------------------
    def _run(
        self,
        entry: ClientEntry | ServerEntry,
        actions: list[Action],
        resp: Response | None = None,
    ) -> None:
        user, owner = entry.user, entry.owner
        for action in actions:
            if isinstance(action, Transmit):
                # A request's transport failure is the transaction's input (§17.1.4); a
                # response that cannot be sent has nobody to tell.
                on_error = (
                    (lambda: self._transport_error(entry)) if entry.table is self.client else None
                )
                entry.send(action.data, entry.target, on_error)
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
        queued = entry.timer_at
        if deadline is not None and (queued is None or deadline < queued):
            # A queue entry only for an earlier deadline. One that moved later is left
            # to the entry already queued, which fires early, finds nothing due and
            # queues the new one then: a transaction holds one live entry, not one per
            # change of its timers (each a handle kept for up to 32 s).
            entry.timer_at = deadline
            self.queue.schedule_call(deadline, self._on_timer, entry)

    def _transport_error(self, entry: ClientEntry | ServerEntry) -> None:
        if entry.table.get(entry.key) is entry:
            self._run(entry, entry.txn.on_transport_error(self.clock()))

    def _expire(self, entry: ClientEntry | ServerEntry) -> None:
        at, now = entry.timer_at, self.clock()
        if at is None or at > now:
            # Superseded: queued for a deadline that moved earlier, and another queue
            # entry has handled that one (queueing the next deadline, if any, itself).
            return
        entry.timer_at = None
        if entry.table.get(entry.key) is entry:
            self._run(entry, entry.txn.expire(now))
