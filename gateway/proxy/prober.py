"""OPTIONS health probes of the configured trunks, sans I/O.

Every trunk with ``options_interval > 0`` gets an out-of-dialog OPTIONS (RFC 3261 §11)
every ``options_interval`` seconds, over its own transport to its ``host:port``, through
a non-INVITE ``ClientTransaction``: retransmissions (Timer E) and the timeout (Timer F,
64*T1) are the transaction's, a timeout or a transport error is a failed probe.

Which answers count as alive: RFC 3261 §11.2 has the far end answer OPTIONS as it
would an INVITE, so *any* final response proves it is there and processing SIP (a 404
for our user-less Request-URI, a 405 from a carrier that refuses OPTIONS, a 483, …).
The exceptions are the trunk's ``options_failure_codes``, ``[503]`` by default: a 503
says the server cannot take requests now (§21.5.4: overload, maintenance), which is
what an operator means by "down". Provisional responses change nothing; the probe waits
for the final one.

State per trunk (``Health``): it starts **up** (not known yet) so calls flow at start;
``options_down_after`` failed probes in a row mark it down, ``options_up_after``
answered probes in a row mark it up again; a probe that goes the other way resets the
count. Only a change is reported (``on_change``: the app publishes ``peer.down`` /
``peer.up`` to the trunk's tenant and logs it), never the steady state.

The prober runs on one worker per node. What it finds down (`down_trunks`) is this
node's report in the merged view of every node (trunk_health.py), which routing reads
in every worker: the prober is ``directory.health`` itself only where no merged view is
installed (unit tests, a proxy used alone).

At most one probe per trunk is in flight: the next one starts ``options_interval``
after the previous one started, or when it ends if it took longer (a dead UDP trunk is
probed every Timer F, never with a pile of overlapping transactions).

The prober is driven like the proxy it lives beside: its OPTIONS are client
transactions of the proxy's one transaction layer (``Proxy.tm``, tm.py), which matches
their responses and reports to the prober (``txn_response``, ``txn_failed``), and
deadlines go into the proxy's ``TimerQueue``, so unit tests run it with a hand-moved
clock and no sockets.
Work that starts outside a received message or a timer (a transport error reported
later by a failed TCP connect) goes through ``run``, which the asyncio layer sets to
``ProxyServer.run`` so the proxy's timer is re-armed afterwards.

Statistics are plain numbers (``Peer.sent``, ``failed``, ``rtt``), folded into
Prometheus at scrape time by ``gateway/api/metrics.py``.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.config import Tenant, Trunk
from gateway.proxy.timers import TimerHandle
from gateway.proxy.trunk_health import DownTrunk
from gateway.sip.message import Response
from gateway.stats import Histogram
from gateway.transport.addresses import Target, host_for_uri

if TYPE_CHECKING:
    from gateway.proxy.core import Proxy

log = logging.getLogger("sipgw.prober")

# "z9hG4bK" + 2 characters, like the proxy's own "z9hG4bKsg": a probe's branch says
# whose it is in a capture.
BRANCH_PREFIX = "z9hG4bKop"
# Round trips from a LAN SBC (ms) to a distant carrier with retransmissions (s); the
# last bound is Timer F with the default T1.
RTT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 32.0)
# A node's report of the trunks it finds down is published again this often (see
# refresh_period), and lapses after REPORT_LIFE periods without a refresh.
REFRESH_MIN, REFRESH_MAX = 1.0, 5.0
REPORT_LIFE = 3
# Reason phrases come from the far end: they go into events and logs, so bounded.
_MAX_PHRASE = 64

Run = Callable[[Callable[[], None]], None]


@dataclass(frozen=True, slots=True)
class PeerChange:
    """A trunk went down or came back (what becomes a ``peer.down``/``peer.up`` event)."""

    tenant: str
    peer: str  # the trunk's configured name
    address: str  # "udp:198.51.100.7:5060"
    up: bool
    reason: str


class Health:
    """Hysteresis over probe outcomes: ``down_after`` failures in a row → down,
    ``up_after`` successes in a row → up. Starts up. Pure, no clock."""

    __slots__ = ("down_after", "failures", "successes", "up", "up_after")

    def __init__(self, down_after: int, up_after: int) -> None:
        self.down_after = down_after
        self.up_after = up_after
        self.up = True
        self.failures = 0  # consecutive, counted while up
        self.successes = 0  # consecutive, counted while down

    def record(self, alive: bool) -> bool:
        """Count one probe outcome; True when it changed the state."""
        if alive:
            self.failures = 0
            if self.up:
                return False
            self.successes += 1
            if self.successes < self.up_after:
                return False
            self.up, self.successes = True, 0
            return True
        self.successes = 0
        if not self.up:
            return False
        self.failures += 1
        if self.failures < self.down_after:
            return False
        self.up, self.failures = False, 0
        return True


@dataclass(eq=False)
class _Probe:
    """One OPTIONS in flight (until its transaction terminates)."""

    peer: Peer
    branch: str
    started: float
    done: bool = False  # the outcome is counted; the transaction may still absorb


@dataclass(eq=False)
class Peer:
    """One probed trunk: its health and its statistics (read by /metrics)."""

    tenant: str
    trunk: Trunk
    target: Target
    health: Health
    sent: int = 0  # probes started (not retransmissions)
    failed: int = 0  # probes that timed out, hit a transport error or got a failure code
    rtt: Histogram = field(default_factory=lambda: Histogram(RTT_BUCKETS))
    last_reason: str = ""
    probe: _Probe | None = None  # the probe whose outcome is awaited
    next_timer: TimerHandle | None = None
    change: PeerChange | None = None  # the latest change of state
    changed_at: float = 0.0  # when it happened (the proxy's clock)

    @property
    def name(self) -> str:
        return self.trunk.name

    @property
    def up(self) -> bool:
        return self.health.up

    @property
    def address(self) -> str:
        return f"{self.target.transport}:{host_for_uri(self.target.host)}:{self.target.port}"


def probed_trunks(tenants: tuple[Tenant, ...]) -> Iterator[tuple[Tenant, Trunk]]:
    """The trunks that are probed (``options_interval`` > 0), in configuration order."""
    for tenant in tenants:
        for trunk in tenant.trunks:
            if trunk.options_interval > 0:
                yield tenant, trunk


class OptionsProber:
    def __init__(
        self,
        proxy: Proxy,
        *,
        on_change: Callable[[PeerChange], None] | None = None,
        run: Run | None = None,
    ) -> None:
        self.proxy = proxy
        self.on_change = on_change
        self.run: Run = run or (lambda fn: fn())
        self.peers: list[Peer] = [
            Peer(
                tenant.id,
                trunk,
                Target(trunk.transport, trunk.host, trunk.port),
                Health(trunk.options_down_after, trunk.options_up_after),
            )
            for tenant, trunk in probed_trunks(proxy.settings.tenants)
        ]
        self._by_name = {(p.tenant, p.name): p for p in self.peers}
        self._probes: dict[str, _Probe] = {}  # branch -> probe, until Terminated
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Tell routing about health (unless a merged view of every node's probes,
        trunk_health.py, is there already: this prober feeds it), schedule the first
        probes.

        The first probes are spread over the first second (or interval, if shorter) so a
        gateway with many trunks does not send them in one burst."""
        if self._started:
            return
        self._started = True
        if self.proxy.directory.health is None:
            self.proxy.directory.health = self
        now = self.proxy.clock()
        count = len(self.peers)
        for index, peer in enumerate(self.peers):
            spread = min(1.0, peer.trunk.options_interval) * index / count
            self._schedule_next(peer, now + spread)

    def stop(self) -> None:
        """Stop probing; transactions in flight are forgotten (nobody waits for them)."""
        self._started = False
        if self.proxy.directory.health is self:
            self.proxy.directory.health = None
        queue = self.proxy.queue
        for peer in self.peers:
            queue.cancel(peer.next_timer)
            peer.next_timer, peer.probe = None, None
        for branch in self._probes:
            entry = self.proxy.tm.client.get((branch, "OPTIONS"))
            if entry is not None:
                self.proxy.tm.forget(entry)
        self._probes.clear()

    # -- what routing asks (directory.TrunkHealth) -------------------------------------------
    def is_down(self, tenant: str, trunk: str) -> bool:
        peer = self._by_name.get((tenant, trunk))
        return peer is not None and not peer.health.up

    def peer(self, tenant: str, trunk: str) -> Peer | None:
        return self._by_name.get((tenant, trunk))

    # -- what other processes are told (trunk_health.NodeReport) ------------------------------
    def down_trunks(self, wall: float) -> tuple[DownTrunk, ...]:
        """The trunks this prober finds down. `wall` is ``time.time()`` now: the
        prober's clock is the proxy's monotonic one, which means nothing elsewhere."""
        now = self.proxy.clock()
        return tuple(
            DownTrunk(
                peer.tenant,
                peer.name,
                wall - (now - peer.changed_at),
                peer.change.reason if peer.change is not None else peer.last_reason,
            )
            for peer in self.peers
            if not peer.up
        )

    @property
    def refresh_period(self) -> float:
        """How often this node's report is published again (trunk_health.py: reports
        lapse after three periods): as often as the quickest trunk is probed, between
        once a second and once every 5 s."""
        fastest = min((p.trunk.options_interval for p in self.peers), default=REFRESH_MAX)
        return min(REFRESH_MAX, max(REFRESH_MIN, fastest))

    # -- sending ---------------------------------------------------------------------------
    def _schedule_next(self, peer: Peer, at: float) -> None:
        self.proxy.queue.cancel(peer.next_timer)
        peer.next_timer = self.proxy.queue.schedule(at, functools.partial(self._probe, peer))

    def _probe(self, peer: Peer) -> None:
        peer.next_timer = None
        if not self._started or peer.probe is not None:
            return
        proxy = self.proxy
        now = proxy.clock()
        branch = BRANCH_PREFIX + secrets.token_hex(8)
        data = self._request(peer, branch)
        peer.sent += 1
        if data is None:
            # No listener of the trunk's transport: calls to it could not go out either.
            reason = f"no {peer.target.transport} listener to send OPTIONS from"
            self._outcome(peer, alive=False, reason=reason, rtt=None)
            self._schedule_next(peer, now + peer.trunk.options_interval)
            return
        probe = _Probe(peer, branch, now)
        peer.probe = probe
        self._probes[branch] = probe
        proxy.counters.request_out(peer.target.transport, "OPTIONS")
        proxy.tm.start_client(
            branch, "OPTIONS", data, peer.target, send=self._send, user=self, owner=probe
        )

    def _request(self, peer: Peer, branch: str) -> bytes | None:
        """The OPTIONS for one probe; None when we have no listener to send it from."""
        proxy, target = self.proxy, peer.target
        via = proxy.via_for(target, branch)
        if via is None:
            return None
        # The trunk itself, no user: it answers for itself (as Kamailio's dispatcher
        # and Asterisk's qualify probe), it does not route the request on.
        host = host_for_uri(target.host)
        if target.transport == "tls":
            uri = f"sips:{host}:{target.port}"
        elif target.transport == "tcp":
            uri = f"sip:{host}:{target.port};transport=tcp"
        else:
            uri = f"sip:{host}:{target.port}"
        ours = host_for_uri(proxy.advertise)
        lines = (
            f"OPTIONS {uri} SIP/2.0",
            f"Via: {via}",
            f"Max-Forwards: {proxy.sip.max_forwards}",
            f"From: <sip:sipgw@{ours}>;tag={secrets.token_hex(6)}",
            f"To: <{uri}>",
            f"Call-ID: {secrets.token_hex(12)}@{ours}",
            "CSeq: 1 OPTIONS",
            f"Contact: <{proxy.contact_for(target, 'sipgw')}>",
            "Accept: application/sdp",
            f"User-Agent: {proxy.sip.user_agent}",
            "Content-Length: 0",
        )
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _send(self, data: bytes, target: Target, on_error: Callable[[], None] | None) -> None:
        # A transport error comes later, outside a message: through `run`, which
        # re-arms the timers.
        if on_error is not None:
            on_error = functools.partial(self.run, on_error)
        self.proxy.send(data, target, on_error)

    # -- the prober as the transaction user of its OPTIONS (tm.py) ---------------------------
    def txn_response(self, owner: Any, status: int, data: bytes, resp: Response | None) -> None:
        probe: _Probe = owner
        if status >= 200 and not probe.done and resp is not None:
            self._answered(probe, resp, self.proxy.clock())

    def txn_failed(self, owner: Any, status: int) -> None:
        probe: _Probe = owner
        if status == 408:
            reason = f"no answer to OPTIONS within {self.proxy.timers.timeout:g} s"
        else:
            reason = "OPTIONS could not be sent (transport error)"
        self._finish(probe, self.proxy.clock(), alive=False, reason=reason, rtt=None)

    def txn_ended(self, owner: Any) -> None:
        probe: _Probe = owner
        self._probes.pop(probe.branch, None)

    def _answered(self, probe: _Probe, resp: Response, now: float) -> None:
        peer = probe.peer
        phrase = "".join(c for c in resp.reason if c.isprintable())[:_MAX_PHRASE]
        answer = f"{resp.status} {phrase}".rstrip()
        alive = resp.status not in peer.trunk.options_failure_codes
        reason = f"OPTIONS answered {answer}"
        self._finish(probe, now, alive=alive, reason=reason, rtt=now - probe.started)

    # -- outcomes --------------------------------------------------------------------------
    def _finish(
        self, probe: _Probe, now: float, *, alive: bool, reason: str, rtt: float | None
    ) -> None:
        if probe.done:
            return
        probe.done = True
        peer = probe.peer
        if peer.probe is probe:
            peer.probe = None
        self._outcome(peer, alive=alive, reason=reason, rtt=rtt)
        if self._started:
            self._schedule_next(peer, max(probe.started + peer.trunk.options_interval, now))

    def _outcome(self, peer: Peer, *, alive: bool, reason: str, rtt: float | None) -> None:
        if rtt is not None:
            peer.rtt.observe(rtt)
        if not alive:
            peer.failed += 1
        peer.last_reason = reason
        if not peer.health.record(alive):
            return
        trunk = peer.trunk
        in_a_row = trunk.options_up_after if peer.up else trunk.options_down_after
        change = PeerChange(
            tenant=peer.tenant,
            peer=peer.name,
            address=peer.address,
            up=peer.up,
            reason=f"{reason} ({in_a_row} probe{'s' if in_a_row > 1 else ''} in a row)",
        )
        peer.change, peer.changed_at = change, self.proxy.clock()
        extra = {
            "tenant": change.tenant,
            "peer": change.peer,
            "address": change.address,
            "reason": change.reason,
        }
        if change.up:
            log.info("peer up", extra=extra)
        else:
            log.warning("peer down", extra=extra)
        if self.on_change is not None:
            try:
                self.on_change(change)
            except Exception:
                # Reporting must never stop the probing (nor the proxy's timers).
                log.exception("peer change callback failed", extra=extra)
