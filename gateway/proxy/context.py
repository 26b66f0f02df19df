"""Per-request state of the proxy: the server side and its branches (§16.7 "response context")."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config import Profile
from gateway.proxy.branch_state import BranchState
from gateway.proxy.caller_display import Shown
from gateway.proxy.timers import TimerHandle
from gateway.proxy.tm import ServerEntry
from gateway.sip.message import Request, Response
from gateway.sip.random_ids import random_hex
from gateway.transport.addresses import Source, Target


@dataclass(eq=False)
class ServerContext:
    request: Request
    source: Source
    # Its server transaction in the one layer (tm.py); None once it has ended: the
    # entry points back at this context, so the link is dropped then.
    entry: ServerEntry | None
    key: tuple[str, ...]
    response_target: Target
    branches: list[Branch] = field(default_factory=list)
    final_sent: bool = False
    final_status: int = 0
    cancelled: bool = False
    # One To tag for every response we generate ourselves, so the caller sees one UAS;
    # made when first needed (most requests are forwarded and never need one).
    _to_tag: str = ""
    tenant: str | None = None
    # Set by the router once the dial plan resolved the call: who it belongs to.
    direction: str | None = None  # "inbound" | "outbound" | "internal"
    extension: str | None = None  # callee for inbound/internal, caller for outbound
    peer: Profile | None = None  # the profile of the trunk or phone the request came from
    observed: bool = False  # the request is reported to the observer (call events)
    # ... but not yet: it is reported once it has been forwarded (the call events come
    # after the forward), or before anything about it is, whichever is first.
    report_pending: bool = False
    loop_hash: str = ""  # §16.6 item 8, computed once: loop check and branch ids
    # The sender proved who it is (a trunk's address, a digest, our signed Record-Route):
    # until then every answer is one stateless datagram no larger than MAX_REPLY_RATIO
    # times the request (``size`` bytes), so a spoofed source gets no amplification.
    trusted: bool = False
    size: int = 0
    terminated: bool = False  # the server transaction is over (see core._release)
    # The recognized caller's name the INVITE shows the callee (caller_display.py), and
    # whether the branches wait for it (at most the tenant's wait_ms).
    shown: Shown | None = None
    awaiting_name: bool = False

    @property
    def to_tag(self) -> str:
        if not self._to_tag:
            self._to_tag = random_hex(6)
        return self._to_tag


@dataclass(eq=False)
class Branch:
    ctx: ServerContext
    branch_id: str
    target: Target
    request: bytes  # exactly what was sent: ACK and CANCEL are built from it
    invite: bool
    method: str = ""
    state: BranchState = BranchState.TRYING  # answer and cancellation (branch_state.py)
    final: int = 0  # the final status, once FINAL (received, or made up locally)
    response: Response | None = None
    local_reason: str | None = None
    is_cancel: bool = False  # the CANCEL transaction of another branch
    rang_out: bool = False  # cancelled by Timer C: the callee did not answer in time
    timer_c: TimerHandle | None = None
    terminated: bool = False  # its client transaction is over (tm.py: txn_ended)

    def __post_init__(self) -> None:
        if not self.method:
            self.method = self.ctx.request.method
